from pathlib import Path

import pytest

from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.errors import ConfigError


def _complete(root: Path, step: int) -> Path:
    d = ckpt.checkpoints_dir(root) / ckpt.step_dir_name(step)
    d.mkdir(parents=True)
    (d / ckpt.STATE).write_text('{"step": %d}' % step)  # a complete checkpoint has its state (else: damaged)
    (d / ckpt.COMPLETE).write_text("ok")
    return d


def test_resume_auto_picks_newest_complete_and_ignores_half_written(tmp_path):
    assert ckpt.resolve_resume("auto", tmp_path) is None
    _complete(tmp_path, 3)
    newest = _complete(tmp_path, 10)
    (ckpt.checkpoints_dir(tmp_path) / "step-000012").mkdir()  # killed before COMPLETE
    (ckpt.checkpoints_dir(tmp_path) / ".tmp-step-000014").mkdir()  # killed while writing
    assert ckpt.resolve_resume("auto", tmp_path) == newest
    assert ckpt.resolve_resume(None, tmp_path) is None
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(ckpt.checkpoints_dir(tmp_path) / "step-000012"), tmp_path)


def test_commit_is_atomic_and_prunes_old_checkpoints(tmp_path):
    for step in (1, 2, 3):
        tmp = ckpt.begin(tmp_path, step)
        (tmp / "payload").write_text(str(step))
        final = ckpt.commit(tmp_path, tmp, step, {"step": step}, keep=2)
        assert (final / ckpt.COMPLETE).is_file() and not tmp.exists()
    names = [d.name for d in ckpt.complete_checkpoints(tmp_path)]
    assert names == ["step-000002", "step-000003"]
    assert (ckpt.checkpoints_dir(tmp_path) / "latest").read_text().strip() == "step-000003"
    assert ckpt.read_state(ckpt.checkpoints_dir(tmp_path) / "step-000003") == {"step": 3}


def test_rng_state_round_trips_without_pickle(tmp_path):
    import random

    import torch

    py = random.Random(7)
    torch.manual_seed(3)
    ckpt.save_rng(tmp_path, py)
    expected = (torch.rand(4), py.random())
    torch.manual_seed(99)
    py.seed(99)
    ckpt.load_rng(tmp_path, py)
    assert torch.equal(torch.rand(4), expected[0]) and py.random() == expected[1]
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "rng-rank0.safetensors"))) == {"torch"}  # tensors + JSON metadata only
    assert not (tmp_path / "rng-rank0.pt").exists()
    ckpt.load_rng(tmp_path)  # torch's generator alone (taalm learn)


class _RunsCode:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_a_crafted_legacy_rng_file_is_refused_without_running_it(tmp_path, monkeypatch):
    import random

    import torch

    monkeypatch.chdir(tmp_path)
    torch.save({"torch": torch.get_rng_state(), "python": _RunsCode()}, tmp_path / "rng-rank0.pt")
    with pytest.raises(ConfigError, match="could run code"):
        ckpt.load_rng(tmp_path, random.Random())
    assert not (tmp_path / "pwned").exists()
    # a plain one from an earlier version still resumes
    py = random.Random(5)
    torch.save({"torch": torch.get_rng_state(), "python": py.getstate()}, tmp_path / "rng-rank0.pt")
    expected = py.random()
    ckpt.load_rng(tmp_path, py)
    assert py.random() == expected


def test_a_missing_rng_state_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no RNG state for rank 0"):
        ckpt.load_rng(tmp_path)


def test_deepspeed_state_is_loaded_weights_only_and_a_crafted_file_never_runs(tmp_path):
    # before: DeepSpeed's checkpoint engine unpickled φ's ZeRO-3 state with weights_only=False
    import os
    import pickle

    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    state = {"zero_stage": ZeroStageEnum.weights, "loss_scaler": LossScaler(1.0), "fp32": [torch.arange(3.0)]}
    torch.save(state, tmp_path / "optim_states.pt")
    got = ckpt.weights_only_load(tmp_path / "optim_states.pt")
    assert got["zero_stage"] is ZeroStageEnum.weights and isinstance(got["loss_scaler"], LossScaler)
    assert torch.equal(got["fp32"][0], torch.arange(3.0))

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "crafted.pt").write_bytes(pickle.dumps({"optimizer_state_dict": Exploit()}))
    with pytest.raises(ConfigError, match="could run code"):
        ckpt.weights_only_load(tmp_path / "crafted.pt")
    assert not marker.exists()


def test_deepspeed_engines_load_through_the_weights_only_loader():
    from types import SimpleNamespace

    engine = SimpleNamespace(checkpoint_engine=SimpleNamespace(load=lambda path, map_location=None: "unpickled"))
    ckpt.load_weights_only(engine)
    with pytest.raises(FileNotFoundError):
        engine.checkpoint_engine.load("/nonexistent/state.pt")
