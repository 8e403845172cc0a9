"""Crash-safe checkpoint directories and ``--resume auto``.

Layout: ``<out_dir>/checkpoints/step-000123/`` with ``phi/`` (φ and its optimizer; a ZeRO-3 checkpoint
under DeepSpeed), ``trainer_state.json``, ``rng-rank<r>.pt`` and, written last, ``COMPLETE``.
A checkpoint is first written to ``.tmp-step-000123`` by all ranks, then renamed by rank 0 after a
barrier, then marked complete, then ``latest`` is replaced atomically. A directory without
``COMPLETE`` (a save that was killed) is never resumed from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from taalm_dist.engine import distributed as D
from taalm_dist.errors import ConfigError

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones are ignored)."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / COMPLETE).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """``auto`` → newest complete checkpoint or None; a path → that checkpoint (must be complete)."""
    if not resume:
        return None
    if resume == "auto":
        done = complete_checkpoints(out_dir)
        return done[-1] if done else None
    p = Path(resume)
    if not (p / COMPLETE).is_file():
        raise ConfigError(f"train.resume={resume}: not a complete checkpoint (no {COMPLETE} file); "
                          "use --resume auto to pick the newest complete one")
    return p


def save_rng(directory: Path, py_rng: random.Random) -> None:
    torch.save({"torch": torch.get_rng_state(), "python": py_rng.getstate()}, directory / f"rng-rank{D.rank()}.pt")


def load_rng(directory: Path, py_rng: random.Random) -> None:
    path = directory / f"rng-rank{D.rank()}.pt"
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["torch"])
    py_rng.setstate(state["python"])


def begin(out_dir: str | Path, step: int) -> Path:
    """The temporary directory all ranks write this checkpoint into (rank 0 creates it)."""
    tmp = checkpoints_dir(out_dir) / f".tmp-{step_dir_name(step)}"
    if D.is_main():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    D.barrier()
    return tmp


def commit(out_dir: str | Path, tmp: Path, step: int, state: dict, keep: int) -> Path:
    """After every rank wrote into ``tmp``: rename, mark complete, point ``latest`` at it, prune."""
    D.barrier()
    final = checkpoints_dir(out_dir) / step_dir_name(step)
    if D.is_main():
        (tmp / STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        (final / COMPLETE).write_text("ok\n")
        latest_tmp = checkpoints_dir(out_dir) / ".latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, checkpoints_dir(out_dir) / "latest")
        for old in complete_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE).read_text())
