"""Crash-safe checkpoint directories and ``--resume auto``.

Layout: ``<out_dir>/checkpoints/step-000123/`` with ``phi/`` (φ and its optimizer; a ZeRO-3 checkpoint
under DeepSpeed), ``trainer_state.json``, ``rng-rank<r>.safetensors`` and, written last, ``COMPLETE``.
A checkpoint is first written to ``.tmp-step-000123`` by all ranks, then its integrity record (``integrity.json``:
size and SHA-256 of every file) is written, then it is renamed by rank 0 after a barrier, then marked complete, then
``latest`` is replaced atomically. A directory without ``COMPLETE`` (a save that was killed) is never resumed from;
``--resume auto`` passes over a complete one whose files differ from its record (named on stderr) to the newest
intact one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from taalm_dist import integrity
from taalm_dist.engine import distributed as D
from taalm_dist.errors import ConfigError

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def is_step_dir(path: Path) -> bool:
    """Whether ``path`` is named like a checkpoint step directory (``step-000123``)."""
    return bool(_STEP_DIR.match(path.name))


def _discard(path: Path) -> None:
    """Remove a checkpoint directory: renamed to ``.trash-<name>`` first (atomic), so an interrupted removal
    leaves a leftover :func:`taalm_dist.engine.run_dir.remove_leftovers` deletes, never a half-deleted step."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


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


def damage(directory: Path) -> list[str]:
    """What is wrong with a complete checkpoint: files that differ from its integrity record
    (:mod:`taalm_dist.integrity`), or an unreadable ``trainer_state.json``; empty when it can be resumed from."""
    problems = integrity.verify_record(directory)
    if not problems:
        try:
            state = read_state(directory)
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problems = [f"{STATE} is unreadable ({type(e).__name__}: {e})"]
    return problems


def newest_intact(done: list[Path]) -> Path | None:
    """The newest of the complete checkpoints ``done`` (oldest first) that is not damaged (:func:`damage`); each
    newer damaged one is named on stderr with what is wrong. None when there is none."""
    for d in reversed(done):
        problems = damage(d)
        if not problems:
            return d
        print(f"taalm: warning: checkpoint {d} is damaged ({'; '.join(problems[:3])}); it is not resumed from, "
              "an earlier one is tried", file=sys.stderr, flush=True)
    return None


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """``auto`` → newest intact complete checkpoint or None; a path → that checkpoint (must be complete and
    intact)."""
    if not resume:
        return None
    if resume == "auto":
        return newest_intact(complete_checkpoints(out_dir))
    p = Path(resume)
    if not (p / COMPLETE).is_file():
        raise ConfigError(f"train.resume={resume}: not a complete checkpoint (no {COMPLETE} file); "
                          "use --resume auto to pick the newest complete one")
    problems = damage(p)
    if problems:
        raise ConfigError(f"train.resume={resume}: the checkpoint is damaged ({'; '.join(problems[:3])}); resume "
                          "from another one (--resume auto picks the newest intact one)")
    return p


def replace_dir(target: Path, write) -> None:
    """``write(tmp)`` into a fresh sibling directory, then swap it in for ``target``: a reader finds the old
    directory or the new one, never a half-written one."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def move_aside(path: Path) -> Path:
    """Rename ``path`` (atomically) to ``<name>.replaced-<YYYYmmdd-HHMMSS>[-n]``, a name not taken; returns it.
    Nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.replaced-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.replaced-{stamp}-{n}"), n + 1
    os.replace(path, aside)
    return aside


def save_rng(directory: Path, py_rng: random.Random | None = None) -> None:
    """This rank's RNG state as ``rng-rank<r>.safetensors``: torch's generator (a uint8 tensor) and, when
    given, ``py_rng``'s state as JSON in the file's metadata. Nothing is pickled, so loading runs no code."""
    from safetensors.torch import save_file

    meta = {"python": json.dumps(py_rng.getstate())} if py_rng is not None else None
    save_file({"torch": torch.get_rng_state()}, str(directory / f"rng-rank{D.rank()}.safetensors"), metadata=meta)


def load_rng(directory: Path, py_rng: random.Random | None = None) -> None:
    """Restore what :func:`save_rng` wrote for this rank. A checkpoint of an earlier version (``rng-rank<r>.pt``)
    is read with ``weights_only=True``: tensors and plain values only, never code."""
    from safetensors import safe_open

    path = directory / f"rng-rank{D.rank()}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            torch_state, meta = f.get_tensor("torch"), f.metadata() or {}
        python_state = _python_rng_state(json.loads(meta["python"])) if "python" in meta else None
    else:
        legacy = path.with_suffix(".pt")
        if not legacy.is_file():
            raise ConfigError(f"{directory}: no RNG state for rank {D.rank()} ({path.name}); the checkpoint is "
                              "incomplete or was written by another number of processes")
        try:
            state = torch.load(legacy, weights_only=True)
        except Exception as e:  # the unpickler refuses anything but tensors and plain values
            raise ConfigError(f"{legacy}: not a plain RNG state ({type(e).__name__}); it is not loaded, since it "
                              "could run code. Resume from another checkpoint") from None
        torch_state, python_state = state["torch"], state.get("python")
    torch.set_rng_state(torch_state)
    if py_rng is not None:
        if python_state is None:
            raise ConfigError(f"{directory}: its RNG state has no Python generator; it was not written by this trainer")
        py_rng.setstate(python_state)


DEEPSPEED_SAFE_GLOBALS = ("deepspeed.runtime.zero.config:ZeroStageEnum",
                          "deepspeed.runtime.fp16.loss_scaler:LossScaler",
                          "deepspeed.runtime.fp16.loss_scaler:DynamicLossScaler")
"""The classes (besides tensors and plain values) DeepSpeed's ZeRO checkpoints of θ and φ hold; nothing else is
unpickled (an enum, and loss scalers restored from their attributes: no code of the file runs)."""


def weights_only_load(path: str | Path, map_location=None):
    """``torch.load(path, weights_only=True)`` admitting :data:`DEEPSPEED_SAFE_GLOBALS`: tensors, plain values and those
    classes only. A file holding anything else is refused with a :class:`ConfigError` and never executed."""
    import importlib
    import pickle

    allowed = []
    for spec in DEEPSPEED_SAFE_GLOBALS:
        module, name = spec.split(":")
        try:
            allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: what it lacks, it does not write
            pass
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")[0][:300]
        raise ConfigError(f"{path}: holds objects this trainer does not load, since loading them could run code "
                          f"({first}); resume from a checkpoint this trainer wrote, or start a new run") from None


def load_weights_only(engine) -> None:
    """Make a DeepSpeed engine's ``load_checkpoint`` read its files with :func:`weights_only_load` (DeepSpeed's own
    checkpoint engine unpickles them with ``weights_only=False``, which runs whatever a crafted file holds)."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if checkpoint_engine is None:
        raise RuntimeError("this DeepSpeed engine has no checkpoint_engine: safe loading cannot be installed")
    checkpoint_engine.load = lambda path, map_location=None: weights_only_load(path, map_location)


def _python_rng_state(state: list) -> tuple:
    """``random.Random.getstate()`` after a JSON round trip (lists back to tuples)."""
    version, internal, gauss_next = state
    return version, tuple(internal), gauss_next


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
        integrity.write_record(tmp)  # every rank's files are in: the record covers them all
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        (final / COMPLETE).write_text("ok\n")
        latest_tmp = checkpoints_dir(out_dir) / ".latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, checkpoints_dir(out_dir) / "latest")
        for old in complete_checkpoints(out_dir)[:-keep]:
            _discard(old)
    D.barrier()
    return final


FULL_DISK_FREE_BYTES = 64 << 20
"""Below this many free bytes, a failed write is read as a full disk (torch and safetensors report a failed write
as ``RuntimeError: unexpected pos ...`` or a bare OSError, not always with ``ENOSPC``)."""


def disk_full(error: BaseException, out_dir: str | Path) -> str | None:
    """Whether ``error``, raised while writing into ``out_dir``, is a full disk: a description (the errno, or the free
    bytes left) when it is, else None."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return os.strerror(error.errno)
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError:
        return None
    return f"{free} bytes free" if free < FULL_DISK_FREE_BYTES else None


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE).read_text())
