from pathlib import Path

import pytest

from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.errors import ConfigError


def _complete(root: Path, step: int) -> Path:
    d = ckpt.checkpoints_dir(root) / ckpt.step_dir_name(step)
    d.mkdir(parents=True)
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
