"""The runtime: device and backend resolution, refusals, and every batch placed through one function."""

import pytest
import torch

from taalm_dist.bench.placement import PlacementRecorder
from taalm_dist.programs.ckl_run import CklRunner
from taalm_dist.config import EngineConfig, ModelSourceConfig, load_config
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.engine import runtime as R
from taalm_dist.programs.meta_train import MetaTrainer
from taalm_dist.errors import ConfigError
from toy_meta import toy_config


def test_device_and_backend_resolution(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert R.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert R.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="engine.device=cuda but this machine has no usable CUDA device"):
            R.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert R.resolve_device("auto") == torch.device("cuda", 3) == R.resolve_device("cuda")
    assert R.resolve_device("cpu") == torch.device("cpu")
    assert R.process_group_backend("auto", torch.device("cuda", 0)) == "nccl"
    assert R.process_group_backend("auto", torch.device("cpu")) == "gloo"
    assert R.process_group_backend("gloo", torch.device("cuda", 0)) == "gloo"
    with pytest.raises(ConfigError, match="engine.dist_backend=nccl needs CUDA"):
        R.process_group_backend("nccl", torch.device("cpu"))


def test_start_one_process_and_refusals(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = R.Runtime.start(EngineConfig(device="cpu"), "meta-train")
    assert (rt.distributed, rt.device, rt.world, rt.rank) == (False, torch.device("cpu"), 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="engine.backend=single but meta-train was launched with 2 processes"):
        R.Runtime.start(EngineConfig(backend="single"), "meta-train")
    four_bit = ModelSourceConfig(source="some/model", quantization="4bit")
    R.Runtime(False, torch.device("cpu")).check_models(theta=four_bit)  # one process: allowed here (CUDA checked at load)
    R.check_bitsandbytes_shards("theta.model.quantization=4bit", "0.43.0")  # shardable: QLoRA under ZeRO-3
    R.check_bitsandbytes_shards("theta.model.quantization=4bit", "0.45.5+cu124")
    with pytest.raises(ConfigError, match=r"theta.model.quantization=4bit under DeepSpeed ZeRO-3 needs bitsandbytes >= "
                                          r"0.43 .* installed: 0.42.0"):
        R.check_bitsandbytes_shards("theta.model.quantization=4bit", "0.42.0")


def test_a_config_asking_for_cuda_without_it_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    trainer = MetaTrainer(toy_config(tmp_path, "engine.device=cuda"))
    try:
        with pytest.raises(ConfigError, match="engine.device=cuda"):
            trainer.setup()
    finally:
        trainer.cleanup()


def test_to_device_moves_tensors_only():
    rt = R.Runtime(False, torch.device("cpu"))
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "name": "x"}
    out = rt.to_device(batch)
    assert out["name"] == "x" and out["input_ids"].device == rt.device and rt.to_device(None) is None
    assert rt.to_device(torch.zeros(2)).device == rt.device
    with pytest.raises(RuntimeError, match="Runtime.initialize is for DeepSpeed runs"):
        rt.initialize(torch.nn.Linear(2, 2), {})


def test_every_batch_reaches_theta_and_phi_through_the_runtime(tmp_path):
    """Meta-training (train steps, both validations, heatmap) and a `ckl run` with the trained φ: every tensor
    θ and φ are called with came out of Runtime.to_device and is on the runtime's device."""
    cfg = toy_config(tmp_path, "train.max_steps=2", "train.docs_per_step=2", "train.val_every=1", "train.val_docs=2",
                     "train.ckl_val_every=2", "train.ckl_val_docs=2", "train.ckl_val_passes=1", "meta.restrict_coef=0.5")
    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        rec = PlacementRecorder(trainer.rt, {"theta": trainer.view.model, "phi": trainer.phi.module})
        trainer.train()
    finally:
        trainer.cleanup()
    assert rec.calls["theta"] > 10 and rec.calls["phi"] > 4 and rec.unplaced == []

    data = tmp_path / "ckl"
    write_pairs(toy_rows(4, seed=0), data / "to_learn.jsonl")
    write_pairs(toy_rows(3, seed=1, entity_offset=50), data / "not_to_forget.jsonl")
    runner = CklRunner(load_config(None, [
        "theta.model.tiny.hidden_size=64", "theta.trainable=lora", f"ckl.data_dir={data}", "ckl.method=taalm",
        f"ckl.phi_path={tmp_path / 'run' / 'phi'}", f"ckl.out_dir={tmp_path / 'ckl_run'}", "ckl.epochs=1",
        "ckl.progress=false", "tracking.mlflow=false"]))
    try:
        runner.setup()
        rec = PlacementRecorder(runner.rt, {"theta": runner.theta, "phi": runner.rule.phi})
        runner.run()
    finally:
        runner.cleanup()
    assert rec.calls["theta"] >= 3 and rec.calls["phi"] >= 2 and rec.unplaced == []
