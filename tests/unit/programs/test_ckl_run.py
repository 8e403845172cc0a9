"""`ckl run` on a tiny model and the toy facts: every method runs and writes every output."""

import dataclasses
import json

import pytest

from taalm_dist.programs.ckl_run import CklRunner
from taalm_dist.config import PhiConfig, ModelSourceConfig, TinyModelConfig, load_config
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.models import build_phi, save_phi

TINY = ["theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64"]


@pytest.fixture(scope="module")
def ckl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckl")
    write_pairs(toy_rows(8, seed=0, filler_words=6), d / "to_learn.jsonl")
    write_pairs(toy_rows(6, seed=1, filler_words=6, entity_offset=50), d / "not_to_forget.jsonl")
    write_pairs(toy_rows(10, seed=2, filler_words=6, entity_offset=100), d / "meta_train.jsonl")
    phi_cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)))
    save_phi(build_phi(phi_cfg), phi_cfg, d / "phi")
    return d


def _run(ckl_dir, tmp_path, method, *extra):
    cfg = load_config(None, TINY + [f"ckl.data_dir={ckl_dir}", f"ckl.method={method}", f"ckl.out_dir={tmp_path / method}",
                                    f"ckl.phi_path={ckl_dir / 'phi'}", "ckl.epochs=2", "ckl.progress=false",
                                    "tracking.mlflow=false", *extra])
    runner = CklRunner(cfg)
    try:
        runner.setup()
        return runner.run()
    finally:
        runner.cleanup()


@pytest.mark.parametrize("method", ["finetune", "oracle", "taalm", "rho1", "mix_review", "recadam", "kadapter",
                                    "taalm+mix_review", "taalm+recadam", "taalm+kadapter"])
def test_every_method_runs_and_writes_outputs(ckl_dir, tmp_path, method):
    run = _run(ckl_dir, tmp_path, method)
    out = tmp_path / method
    for name in ("metrics.json", "epochs.csv", "curves.png", "heatmap.html", "heatmap.png", "report.md"):
        assert (out / name).is_file(), name
    assert [r["epoch"] for r in run["epochs"]] == [0, 1, 2]
    assert run["setup"]["benchmark"] == "LAMA-CKL"  # rows of LAMA-CKL's schema, not `taalm data synth`'s
    assert json.loads((out / "metrics.json").read_text())["summary"]["epoch"] in (1, 2)
    assert "PUNA" in (out / "heatmap.html").read_text() or "<span" in (out / "heatmap.html").read_text()


def test_a_weight_floor_or_uniform_share_of_one_is_finetune_and_smaller_ones_change_taalm(ckl_dir, tmp_path):
    finetune = _run(ckl_dir, tmp_path, "finetune")["epochs"]
    (tmp_path / "taalm").mkdir()
    floored = _run(ckl_dir, tmp_path / "taalm", "taalm", "ckl.phi_weight_floor=1.0")["epochs"]
    assert floored == finetune  # every real token at weight 1: uniform weights, the same θ updates
    plain = _run(ckl_dir, tmp_path / "plain", "taalm")["epochs"]
    small = _run(ckl_dir, tmp_path / "small", "taalm", "ckl.phi_weight_floor=0.999")["epochs"]
    assert [r["train_loss"] for r in small] != [r["train_loss"] for r in plain]
    mixed = _run(ckl_dir, tmp_path / "mixed", "taalm", "ckl.phi_uniform_share=1.0")
    assert mixed["epochs"] == finetune  # all the weight uniform: fine-tuning's weights exactly
    assert mixed["setup"]["phi_uniform_share"] == 1.0
    half = _run(ckl_dir, tmp_path / "half", "taalm", "ckl.phi_uniform_share=0.5")["epochs"]
    assert [r["train_loss"] for r in half] not in ([r["train_loss"] for r in plain], [r["train_loss"] for r in finetune])


def test_oracle_learns_the_facts(ckl_dir, tmp_path):
    run = _run(ckl_dir, tmp_path, "oracle", "theta.trainable=full", "ckl.lr=3e-3", "ckl.epochs=12", "ckl.batch_size=2")
    assert run["epochs"][0]["to_learn_acc"] < 0.2
    assert run["summary"]["top_acc"] >= 0.5


def test_taalm_without_phi_and_missing_data_are_clear(ckl_dir, tmp_path):
    from taalm_dist.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="needs ckl.phi_path"):
        _run(ckl_dir, tmp_path, "taalm", "ckl.phi_path=null")
    with pytest.raises(DataError, match="to_learn.jsonl does not exist"):
        _run(tmp_path, tmp_path, "finetune")


def test_mix_review_replays_replay_jsonl_when_the_build_wrote_one(ckl_dir, tmp_path):
    import shutil

    d = tmp_path / "with_replay"
    shutil.copytree(ckl_dir, d)
    replay = toy_rows(3, seed=3, filler_words=6, entity_offset=150)
    write_pairs(replay, d / "replay.jsonl")
    cfg = load_config(None, TINY + [f"ckl.data_dir={d}", "ckl.method=mix_review", f"ckl.out_dir={tmp_path / 'run'}",
                                    "ckl.progress=false", "tracking.mlflow=false"])
    runner = CklRunner(cfg)
    try:
        runner.setup()
        assert sorted(t.pair.uid for t in runner.replay) == sorted(r["uuid"] for r in replay)
    finally:
        runner.cleanup()


@pytest.mark.parametrize("method", ["recadam", "taalm+mix_review"])
def test_an_interrupted_run_resumes_exactly(ckl_dir, tmp_path, method):
    # before: `ckl run` could not resume; a 30-epoch run that died started over
    import os
    import signal

    from taalm_dist.engine.preemption import Preempted

    whole = _run(ckl_dir, tmp_path / "whole", method, "ckl.epochs=3", "ckl.batch_size=2")
    cfg = load_config(None, TINY + [f"ckl.data_dir={ckl_dir}", f"ckl.method={method}", f"ckl.out_dir={tmp_path / 'run'}",
                                    f"ckl.phi_path={ckl_dir / 'phi'}", "ckl.epochs=3", "ckl.batch_size=2",
                                    "ckl.progress=false", "tracking.mlflow=false"])
    runner = CklRunner(cfg)
    update = runner._theta_update

    def update_then_signal(items):
        loss = update(items)
        if runner.step == 6:  # in epoch 2 (4 updates an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    runner._theta_update = update_then_signal
    runner.setup()
    try:
        with pytest.raises(Preempted, match="during epoch 2;.*after epoch 1; continue with --resume auto"):
            runner.run()
    finally:
        runner.cleanup("KILLED")
    resumed = CklRunner(dataclasses.replace(cfg, ckl=dataclasses.replace(cfg.ckl, resume="auto")))
    try:
        resumed.setup()
        assert resumed.epoch == 1 and resumed.step == len(resumed.losses) == len(runner.epoch_batches(1))
        run = resumed.run()
    finally:
        resumed.cleanup()
    assert run["epochs"] == whole["epochs"]  # every epoch's mean loss and accuracies, bit for bit
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [0, 1, 2, 3]


def test_a_phi_whose_config_changed_in_place_is_not_resumed_with(ckl_dir, tmp_path):
    # before (second probe): ckl run hashed phi.safetensors but not phi_config.json, so a φ re-exported with another
    # backbone seed at the same path resumed silently
    import shutil

    from taalm_dist import integrity
    from taalm_dist.errors import ConfigError

    phi = tmp_path / "phi"
    shutil.copytree(ckl_dir / "phi", phi)
    _run(ckl_dir, tmp_path, "taalm", f"ckl.phi_path={phi}")
    meta = json.loads((phi / "phi_config.json").read_text())
    meta["phi"]["model"]["tiny"]["seed"] = 7
    (phi / "phi_config.json").write_text(json.dumps(meta))
    integrity.write_record(phi)
    with pytest.raises(ConfigError, match="the content of ckl.phi_path/phi_config.json changed"):
        _run(ckl_dir, tmp_path, "taalm", f"ckl.phi_path={phi}", "ckl.epochs=3", "ckl.resume=auto")


def test_a_phi_with_a_nan_never_reaches_theta(ckl_dir, tmp_path):
    # before (second probe): a φ with one NaN in its head made ckl run write NaN θ with exit 0 and report 0.000
    import shutil

    from safetensors.torch import load_file, save_file

    from taalm_dist import integrity
    from taalm_dist.errors import ModelError

    phi = tmp_path / "phi"
    shutil.copytree(ckl_dir / "phi", phi)
    state = load_file(str(phi / "phi.safetensors"))
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(phi / "phi.safetensors"))
    integrity.write_record(phi)
    with pytest.raises(ModelError, match=r"non-finite values in head.weight \(nan in 1 of"):
        _run(ckl_dir, tmp_path, "taalm", f"ckl.phi_path={phi}")
    assert not (tmp_path / "taalm").exists()
