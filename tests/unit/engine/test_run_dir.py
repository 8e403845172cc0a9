"""Run directories: exclusive, never mixed, resumable only into the same settings and data (issue: robustness).

Each test reproduces a failure found by probing the trainer (the first lines say which) and checks it now ends in a
clear error or the correct result.
"""

import json
import os
import shutil
import signal

import pytest
import torch

from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.programs.meta_train import MetaTrainer
from taalm_dist.engine.preemption import Preempted
from taalm_dist.engine.run_dir import RunDirLock, lock_path, truncate_metrics
from taalm_dist.errors import ConfigError
from taalm_dist.models import load_phi
from toy_meta import run_trainer as _run
from toy_meta import toy_config as _config

SHORT = ["train.docs_per_step=2", "train.val_every=0", "train.save_every=1"]


def _phi(path):
    return {n: p.detach().clone() for n, p in load_phi(path).named_parameters()}


def _steps(out):
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/objective" in x]


def test_overwrite_moves_the_old_run_aside_and_never_resumes_it(tmp_path):
    # before: the old run's checkpoints stayed, pruning kept the highest steps (the old run's), so a crash and
    # --resume auto "resumed" the old run and exported its φ
    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=4"))
    old_phi = _phi(out / "phi")
    _run(_config(tmp_path, *SHORT, "train.max_steps=2", "train.overwrite=true", "train.lr=1e-2"))
    [aside] = tmp_path.glob("run.replaced-*")
    assert [d.name for d in ckpt.complete_checkpoints(aside)] == ["step-000003", "step-000004"]
    assert [d.name for d in ckpt.complete_checkpoints(out)] == ["step-000001", "step-000002"]
    assert (out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()).is_dir()
    trainer, summary = _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.lr=1e-2", "train.resume=auto"))
    assert summary["steps"] == 3 and _steps(out) == [1, 2, 3]
    assert any(not torch.equal(old_phi[n], p) for n, p in _phi(out / "phi").items())


def test_a_second_run_on_a_held_directory_is_refused_naming_the_holder(tmp_path):
    # before: two runs on one out_dir both exited 0, every metric was written twice, the last writer's φ won
    first = MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=1"))
    first.setup()
    try:
        with pytest.raises(ConfigError, match=rf"in use by another run \(.*\"pid\": {os.getpid()}.*taalm meta-train"):
            MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=1", "train.resume=auto")).setup()
        with pytest.raises(ConfigError, match="in use by another run"):  # overwrite does not break in either
            MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=1", "train.overwrite=true")).setup()
        first.train()
    finally:
        first.cleanup()
    _run(_config(tmp_path, *SHORT, "train.max_steps=2", "train.resume=auto"))  # released at the end of the run
    assert _steps(tmp_path / "run") == [1, 2]


def test_lock_is_released_when_its_holder_lets_go(tmp_path):
    lock = RunDirLock(tmp_path / "run").acquire("meta-train")
    with pytest.raises(ConfigError, match="in use"):
        RunDirLock(tmp_path / "run").acquire("meta-train")
    lock.release()
    RunDirLock(tmp_path / "run").acquire("meta-train").release()
    assert lock_path(tmp_path / "run") == tmp_path / ".run.lock"


def test_a_refused_resume_writes_nothing_and_names_what_differs(tmp_path):
    # before: a refused resume first rewrote config.yaml (with the rejected config) and ds_config.json, and the
    # refusal named no key
    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"other settings \(meta.inner_lr: 0.1 → 0.2; train.lr: 0.003 → 0.01\)"):
        MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto", "meta.inner_lr=0.2",
                            "train.lr=1e-2")).setup()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_field_added_since_the_checkpoint_reads_as_its_default(tmp_path):
    # before: a checkpoint written before a config field existed (its settings lack the key) refused every resume
    # ("(absent) → 0.0"), though the new field's default keeps the old behaviour
    out = tmp_path / "run"

    def forget_the_field():  # as an earlier version wrote them: no train.weight_decay in any checkpoint
        for f in out.glob("checkpoints/step-*/trainer_state.json"):
            state = json.loads(f.read_text())
            assert state["settings"].pop("train.weight_decay", 0.0) == 0.0
            f.write_text(json.dumps(state))
            (f.parent / "integrity.json").unlink(missing_ok=True)  # earlier versions wrote no integrity record

    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    forget_the_field()
    _, summary = _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto"))
    assert summary["steps"] == 3 and _steps(out) == [1, 2, 3]
    forget_the_field()
    with pytest.raises(ConfigError, match=r"train.weight_decay: 0.0 → 0.5"):  # a non-default value still differs
        MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=4", "train.resume=auto",
                            "train.weight_decay=0.5")).setup()


def test_a_checkpoint_of_the_one_config_resumes_without_the_other_programs_sections(tmp_path):
    # meta-train checkpoints written while one config served every program recorded ckl.* and learn.* settings too;
    # meta-train does not read them, so they neither block nor change a resume
    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    for f in out.glob("checkpoints/step-*/trainer_state.json"):
        state = json.loads(f.read_text())
        assert not any(k.startswith(("ckl.", "learn.")) for k in state["settings"])
        state["settings"].update({"ckl.epochs": 7, "learn.lr": 0.5})
        f.write_text(json.dumps(state))
        (f.parent / "integrity.json").unlink()  # as that version wrote them: without an integrity record
    _, summary = _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto"))
    assert summary["steps"] == 3 and _steps(out) == [1, 2, 3]


def test_data_changed_in_place_is_not_resumed_but_a_moved_run_is(tmp_path):
    # before: the fingerprint held out_dir (a copied run could not resume) but not the data (a file changed in
    # place resumed silently at its old position)
    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    data = tmp_path / "elsewhere"
    data.mkdir()
    shutil.copy(tmp_path / "train.jsonl", data / "train.jsonl")
    _, summary = _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto",
                              f"train.out_dir={tmp_path / 'moved'}", f"data.train_file={data / 'train.jsonl'}"))
    assert summary["steps"] == 3 and _steps(tmp_path / "moved") == [1, 2, 3]
    cfg = _config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto")  # rewrites train.jsonl: same content
    rows = (tmp_path / "train.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows[1:] + rows[:1]) + "\n")
    with pytest.raises(ConfigError, match="the content of data.train_file changed"):
        MetaTrainer(cfg).setup()


def test_resume_logs_every_step_once_and_removes_leftovers(tmp_path):
    # before: metrics.jsonl got duplicate step rows after a resume; an emptied step directory left by an
    # interrupted prune was never removed
    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=3"))
    truncate_metrics(out, 99)  # a no-op
    with (out / "metrics.jsonl").open("a") as f:  # rows of steps after the checkpoint, as a crash leaves them
        f.write(json.dumps({"step": 4, "train/objective": 1.0}) + "\n" + '{"step": 5, "train/obj')
    shutil.rmtree(out / "checkpoints" / "step-000003")
    (out / "checkpoints" / "step-000001").mkdir()  # a prune cut short: no COMPLETE
    (out / "checkpoints" / "step-000001" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / ".trash-step-000000").mkdir()
    _run(_config(tmp_path, *SHORT, "train.max_steps=5", "train.resume=auto"))
    assert _steps(out) == [1, 2, 3, 4, 5]
    names = sorted(d.name for d in (out / "checkpoints").iterdir())
    assert names == ["latest", "step-000004", "step-000005"]


def test_resume_auto_starts_a_marked_run_that_has_no_checkpoint(tmp_path):
    # before: a requeued job that died before its first checkpoint failed for good with "already holds a run;
    # resume it with --resume auto" although it was started with --resume auto
    trainer = MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=2"))
    trainer.setup()
    trainer.cleanup("KILLED")  # died before training
    assert (tmp_path / "run" / "meta_train_run.json").is_file()
    with pytest.raises(ConfigError, match="already holds a `taalm meta-train` run; continue it with --resume auto"):
        MetaTrainer(_config(tmp_path, *SHORT, "train.max_steps=2")).setup()
    _, summary = _run(_config(tmp_path, *SHORT, "train.max_steps=2", "train.resume=auto"))
    assert summary["steps"] == 2 and _steps(tmp_path / "run") == [1, 2]


def test_sigterm_checkpoints_after_the_step_and_resume_is_exact(tmp_path):
    # before: SIGTERM/SIGINT ended the run at once with no checkpoint (save_every defaulted to 0)
    base = ["train.docs_per_step=2", "train.val_every=0", "train.max_steps=4"]
    _, whole = _run(_config(tmp_path, *base, f"train.out_dir={tmp_path / 'whole'}"))
    trainer = MetaTrainer(_config(tmp_path, *base))
    step = trainer.train_step

    def step_then_signal():
        out = step()
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the run, handled after this φ update
        return out

    trainer.train_step = step_then_signal
    trainer.setup()
    try:
        with pytest.raises(Preempted, match="stopped by SIGTERM after φ update 2.*--resume auto"):
            trainer.train()
    finally:
        trainer.cleanup("KILLED")
    assert [d.name for d in ckpt.complete_checkpoints(tmp_path / "run")] == ["step-000002"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    _run(_config(tmp_path, *base, "train.resume=auto"))
    want, got = _phi(tmp_path / "whole" / "phi"), _phi(tmp_path / "run" / "phi")
    assert all(torch.equal(want[n], got[n]) for n in want)
    assert _steps(tmp_path / "run") == [1, 2, 3, 4]


def test_time_based_checkpoints(tmp_path):
    _run(_config(tmp_path, "train.docs_per_step=2", "train.val_every=0", "train.max_steps=3", "train.save_every=0",
                 "train.save_every_s=1e-9", "train.keep_checkpoints=5"))
    assert [d.name for d in ckpt.complete_checkpoints(tmp_path / "run")] == ["step-000001", "step-000002",
                                                                             "step-000003"]


def test_more_documents_per_step_than_the_data_holds_is_refused(tmp_path):
    # before: docs_per_step=100000 on 40 documents ran for minutes, holding every graph, with no warning
    with pytest.raises(ConfigError, match=r"train.docs_per_step=100000 is more than the 200 training pairs"):
        MetaTrainer(_config(tmp_path, "train.docs_per_step=100000")).setup()
    assert not (tmp_path / "run").exists()


def test_a_file_where_the_run_directory_should_be_is_named(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a run directory"):
        MetaTrainer(_config(tmp_path, "train.max_steps=1", "train.docs_per_step=2")).setup()


def test_a_stop_file_stops_like_sigterm_and_is_answered(tmp_path, monkeypatch):
    # launchers that cannot signal the trainer alone (torchrun kills its workers 30 s after a SIGTERM) create a file
    stop = tmp_path / "stop-request"
    monkeypatch.setenv("TAALM_STOP_FILE", str(stop))
    base = ["train.docs_per_step=2", "train.val_every=0", "train.max_steps=4"]
    trainer = MetaTrainer(_config(tmp_path, *base))
    step = trainer.train_step

    def step_then_request():
        out = step()
        if trainer.step == 1:
            stop.write_text("")
        return out

    trainer.train_step = step_then_request
    trainer.setup()
    try:
        with pytest.raises(Preempted, match=f"stopped by stop file {stop} after φ update 1"):
            trainer.train()
    finally:
        trainer.cleanup("KILLED")
    assert stop.read_text().startswith("stopped: stopped by stop file")
    _, summary = _run(_config(tmp_path, *base, "train.resume=auto"))  # the answered file is not a new request
    assert summary["steps"] == 4


# ------------------------------------------------------------- nothing silently wrong (second reliability probe)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "missing safetensors": lambda d: (d / "phi" / "phi_trainable.safetensors").unlink(),
    "truncated safetensors": lambda d: _truncate(d / "phi" / "phi_trainable.safetensors"),
    "zero-byte optimizer state": lambda d: (d / "phi" / "optimizer.pt").write_bytes(b""),
    "half-written trainer_state.json": lambda d: _truncate(d / ckpt.STATE),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, damage, capsys):
    # before: a newest checkpoint marked COMPLETE but damaged gave a raw traceback (exit 1) on --resume auto
    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.keep_checkpoints=3"))
    reference = _phi(out / "phi")
    newest = ckpt.complete_checkpoints(out)[-1]
    assert newest.name == "step-000003" and (newest / "integrity.json").is_file()
    DAMAGE[damage](newest)
    (out / "phi").rename(tmp_path / "phi_before")  # the export is rewritten by the resumed run
    _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.keep_checkpoints=3", "train.resume=auto"))
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err and "an earlier one is tried" in err
    again = _phi(out / "phi")
    assert all(torch.equal(reference[k], again[k]) for k in reference)  # step 3 redone from step 2: the same φ


def test_when_every_checkpoint_is_damaged_nothing_is_resumed_or_deleted(tmp_path):
    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    for d in ckpt.complete_checkpoints(out):
        (d / "phi" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="every complete checkpoint is damaged .* nothing is resumed or deleted"):
        _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto"))
    assert len(ckpt.complete_checkpoints(out)) == 2
    with pytest.raises(ConfigError, match="the checkpoint is damaged .*optimizer.pt has 0 bytes"):
        ckpt.resolve_resume(str(ckpt.complete_checkpoints(out)[-1]), out)


def test_a_crafted_optimizer_pickle_is_refused_without_a_traceback(tmp_path):
    # before: refused by torch, but the traceback ended with torch's advice to pass weights_only=False
    import pickle

    from taalm_dist import integrity

    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    newest = ckpt.complete_checkpoints(out)[-1]
    (newest / "phi" / "optimizer.pt").write_bytes(pickle.dumps({"state": Exploit()}))
    integrity.write_record(newest)  # an attacker rewrites the record too: the loader itself must refuse
    with pytest.raises(ConfigError, match="could run code") as e:
        _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto"))
    assert "weights_only=False" not in str(e.value) and not marker.exists()


def test_a_checkpoint_with_a_non_finite_phi_is_not_resumed(tmp_path):
    # before: a checkpointed φ with head.bias=inf resumed and exported silently
    from safetensors.torch import load_file, save_file

    from taalm_dist import integrity

    out = tmp_path / "run"
    _run(_config(tmp_path, *SHORT, "train.max_steps=2"))
    newest = ckpt.complete_checkpoints(out)[-1]
    path = newest / "phi" / "phi_trainable.safetensors"
    state = load_file(str(path))
    state["head.bias"].fill_(float("inf"))
    save_file(state, str(path))
    integrity.write_record(newest)
    with pytest.raises(ConfigError, match=r"holds a φ with non-finite values \(head.bias \(inf"):
        _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto"))


def test_a_full_disk_during_a_checkpoint_is_named_and_the_run_resumes(tmp_path, monkeypatch):
    # before: RuntimeError: unexpected pos ... (no mention of disk space)
    import errno

    from taalm_dist.errors import TrainingError
    from taalm_dist.engine import phi_update

    out = tmp_path / "run"
    real_save, calls = phi_update.torch.save, {"n": 0}

    def fills_the_disk(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(phi_update.torch, "save", fills_the_disk)
    with pytest.raises(TrainingError, match="no space left on the disk of .* checkpoint step 2 .*--resume auto"):
        _run(_config(tmp_path, *SHORT, "train.max_steps=3"))
    monkeypatch.setattr(phi_update.torch, "save", real_save)
    assert [d.name for d in ckpt.complete_checkpoints(out)] == ["step-000001"]
    assert not list(ckpt.checkpoints_dir(out).glob(".tmp-*"))
    _run(_config(tmp_path, *SHORT, "train.max_steps=3", "train.resume=auto"))
    assert _steps(out) == [1, 2, 3]


def test_overwrite_moves_only_runs_aside(tmp_path):
    # before: --overwrite moved any non-empty folder aside, one that was not a run included
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="moves only runs aside, so nothing was moved"):
        _run(_config(tmp_path, *SHORT, "train.max_steps=1", "train.overwrite=true"))
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_the_lock_holds_the_directory_itself_whatever_path_reaches_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "link").symlink_to(out)
    assert lock_path(tmp_path / "link") == lock_path(out)
    held = RunDirLock(out).acquire("meta-train")
    try:
        other = RunDirLock(out)
        other.path = tmp_path / ".elsewhere.lock"  # another path to the same directory (e.g. a bind mount)
        with pytest.raises(ConfigError, match="in use by another run"):
            other.acquire("meta-train")
    finally:
        held.release()
