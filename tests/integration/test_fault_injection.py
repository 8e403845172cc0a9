"""Fault injection (slow: ``make test-all``): a run killed at random moments, preempted, or started twice on one
directory ends in the same φ as an uninterrupted run, or in a clear refusal. Real processes and real signals."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 6


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "taalm_dist.cli", "data", "toy", "--out", str(d), "--n", "60"], check=True,
                   cwd=ROOT, capture_output=True)
    return d


def _args(toy: Path, out: Path, *extra: str) -> list[str]:
    flags = ["--resume", "auto"] if "--resume" in extra else []
    extra = tuple(x for x in extra if x not in ("--resume", "auto"))
    return [sys.executable, "-m", "taalm_dist.cli", "meta-train", "--config", "taalm_dist/configs/meta_train_tiny.yaml", *flags,
            f"data.train_file={toy / 'train.jsonl'}", f"data.val_file={toy / 'val.jsonl'}", f"train.out_dir={out}",
            f"train.max_steps={STEPS}", "train.docs_per_step=4", "train.val_every=0", "train.save_every=1",
            "train.progress=false", "tracking.mlflow=false", *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _start(toy: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_args(toy, out, *extra), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _phi(out: Path) -> dict:
    return load_file(str(out / "phi" / "phi.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    started = time.monotonic()
    proc = _start(toy, out)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    return _phi(out), time.monotonic() - started


def test_kill_9_at_random_moments_then_resume_gives_the_same_phi(toy, reference, tmp_path):
    want, duration = reference
    rng = random.Random(0)
    for trial in range(4):
        out = tmp_path / f"trial{trial}"
        proc = _start(toy, out, "--resume", "auto")
        time.sleep(rng.uniform(0.3, 1.0) * duration)  # anywhere from start-up to the last saves
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        resumed = _start(toy, out, "--resume", "auto")
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
        assert _same(want, _phi(out)), f"trial {trial}: φ differs after kill -9 and resume"
        steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/objective" in x]
        assert steps == list(range(1, STEPS + 1)), steps


def test_sigterm_writes_a_checkpoint_exits_75_and_resumes_to_the_same_phi(toy, reference, tmp_path):
    want, _ = reference
    out = tmp_path / "run"
    proc = _start(toy, out, "--resume", "auto", "train.save_every=0", "train.save_every_s=null")
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file() or "train/objective" not in (out / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    err = proc.stderr.read()
    assert "SIGTERM received" in err and "continue with --resume auto" in err and "Traceback" not in err
    done = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert len(done) == 1 and done[0] != f"step-{STEPS:06d}"
    resumed = _start(toy, out, "--resume", "auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert _same(want, _phi(out))


def test_two_runs_started_together_on_one_directory_one_is_refused(toy, tmp_path):
    out = tmp_path / "run"
    procs = [_start(toy, out, "train.max_steps=30"), _start(toy, out, "train.max_steps=30")]
    codes = [p.wait(timeout=600) for p in procs]
    errs = [p.stderr.read() for p in procs]
    assert sorted(codes) == [0, 2], (codes, errs)
    refused = errs[codes.index(2)]
    assert "is in use by another run" in refused and '"command": "taalm meta-train"' in refused
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/objective" in x]
    assert steps == list(range(1, 31))  # one writer: every step once


def test_two_runs_through_a_symlink_one_is_refused_and_nothing_is_deleted(toy, tmp_path):
    # before (second probe): the lock was by path as typed; `--resume auto` through a symlink to a running run's
    # directory took its own lock, deleted the first run's in-progress save as a leftover, and both crashed
    out = tmp_path / "run"
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)
    out.mkdir()
    procs = [_start(toy, out, "--resume", "auto", "train.max_steps=30"),
             _start(toy, tmp_path / "alias", "--resume", "auto", "train.max_steps=30")]
    codes = [p.wait(timeout=600) for p in procs]
    errs = [p.stderr.read() for p in procs]
    assert sorted(codes) == [0, 2], (codes, errs)
    assert "is in use by another run" in errs[codes.index(2)]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/objective" in x]
    assert steps == list(range(1, 31))


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 512 KiB (a toy run needs about 1 MiB with every checkpoint kept) at tmp_path/disk (root only; skipped where mounting is not allowed), unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_during_a_checkpoint_is_named_and_resume_after_freeing_space_is_exact(toy, reference,
                                                                                         small_disk):
    # before (second probe): a full disk during a meta-train checkpoint ended with `RuntimeError: unexpected pos ...`
    want, _ = reference
    out = small_disk / "run"
    proc = _start(toy, out, "--resume", "auto", "train.keep_checkpoints=100")
    assert proc.wait(timeout=600) == 2
    err = proc.stderr.read()
    assert "no space left on the disk of" in err and "--resume auto" in err and "Traceback" not in err, err[-3000:]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    resumed = _start(toy, out, "--resume", "auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert _same(want, _phi(out))
