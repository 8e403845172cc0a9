"""Run directories: one run per directory, held exclusively, never mixed with another, resumable.

Every trainer (``meta-train``, ``ckl run``, ``learn``) opens its ``out_dir`` through :func:`open_run_dir`,
which rank 0 decides and every rank obeys (the decision, or the error, is broadcast so all ranks stop or go
on together):

- **exclusive**: rank 0 holds an OS lock (``flock``) on ``.<name>.lock`` beside the directory for the run's
  lifetime; a second run on the same directory is refused, naming the holder (host, pid, command, start time).
  The kernel releases the lock when the process ends, however it ends (``kill -9`` included).
- **never mixed**: a directory that holds files is refused unless the run resumes it or ``overwrite`` is set;
  ``overwrite`` moves the old directory aside whole (``<name>.replaced-<time>``), it never writes into it.
- **marked**: the first start writes a run mark (``<command>_run.json``: command, start time, host). With
  ``--resume auto`` a marked directory without a checkpoint (a run that died before its first checkpoint, a
  requeued job) starts that run again, so a requeue always works; a directory without a mark or a checkpoint
  is never taken over.
- **compatible**: a resumed checkpoint must have been written with the same settings and the same data
  content (:func:`check_resumable`, which names every differing key), checked before anything is written.
- **tidy**: leftovers of interrupted saves or prunes (``.tmp-*``, ``.trash-*``, step directories without
  ``COMPLETE``) are removed before the run writes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine import distributed as D
from taalm_dist.errors import ConfigError

LOCK_SUFFIX = ".lock"
OVERWRITE_FLAG = {"meta-train": "train.overwrite=true", "ckl run": "--overwrite", "learn": "--overwrite"}
"""How each command is told to move an old run aside (named in refusals)."""


def lock_path(out_dir: str | Path) -> Path:
    """The lock file of a run directory: ``.<name>.lock`` in its parent (it survives the directory being moved),
    for the directory's resolved path: a symlink to a run directory, or a path through one, names the same lock."""
    out = Path(out_dir).resolve()
    return out.with_name(f".{out.name}{LOCK_SUFFIX}")


class RunDirLock:
    """An exclusive, non-blocking ``flock`` on :func:`lock_path` and, when the directory exists, on the directory
    itself (its identity: the same directory reached by any path, a bind mount included, is one lock); held until
    :meth:`release` or process exit."""

    def __init__(self, out_dir: str | Path):
        self.directory = Path(out_dir).resolve()
        self.path = lock_path(out_dir)
        self._fds: list[int] = []

    def acquire(self, command: str) -> "RunDirLock":
        """Take the lock, or raise :class:`ConfigError` naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not self._lock(fd, self.path):
            return self
        self._fds.append(fd)
        if self.directory.is_dir():
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if self._lock(dir_fd, self.directory):
                    self._fds.append(dir_fd)
            except ConfigError:
                self.release()
                raise
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": f"taalm {command}",
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return self

    def _lock(self, fd: int, what: Path) -> bool:
        """``flock`` ``fd`` (non-blocking): True when held; False (fd closed, a warning printed) where the
        filesystem has no flock. Raises :class:`ConfigError` naming the holder when another run holds it."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:  # the lock file holds its holder's line; the directory says nothing
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() if what == self.path else ""
            os.close(fd)
            raise ConfigError(f"{self.directory} is in use by another run ({holder or 'another process'}); wait "
                              "for it to end, or choose another output directory") from None
        except OSError as e:  # e.g. a network filesystem without flock support
            os.close(fd)
            print(f"taalm: warning: cannot lock {what} ({e}); two runs on this directory would not be "
                  "detected", file=sys.stderr)
            return False

    def release(self) -> None:
        """Let go of the lock (the file stays; it is empty of meaning without a holder)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []


@dataclass
class RunDir:
    """An opened run directory (see :func:`open_run_dir`).

    Attributes:
        path: the directory (exists on every rank after opening).
        resume_from: the complete checkpoint to resume from, or None (a fresh start).
        resume_state: its ``trainer_state.json`` (empty for a fresh start).
        moved_aside: where an old run was moved with ``overwrite``, if it was.
    """

    path: Path
    resume_from: Path | None = None
    resume_state: dict = field(default_factory=dict)
    moved_aside: Path | None = None
    lock: RunDirLock | None = None

    fresh: bool = False
    """The directory held nothing before this run (so a run that fails to start may remove it)."""

    def release(self) -> None:
        """Let go of the directory's lock (rank 0; a no-op elsewhere)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard_if_fresh(self) -> None:
        """Remove the directory again when this run created it (a run that could not start leaves nothing to resume
        or refuse); every rank may call it, rank 0 removes."""
        if self.fresh and D.is_main():
            shutil.rmtree(self.path, ignore_errors=True)


def directory_identity(path: str | Path) -> dict:
    """What tells a run directory from a copy of it: its resolved path and its inode (device, inode number). A
    moved directory keeps its inode, a copy or fork (``cp -r``, ``rsync``) gets a new one at a new path."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "device": st.st_dev, "inode": st.st_ino}


def is_same_directory(recorded: dict, path: str | Path) -> bool:
    """Whether ``path`` is the directory :func:`directory_identity` recorded (same inode, or same resolved path:
    moved, or restored in place), not a copy of it elsewhere."""
    now = directory_identity(path)
    same_inode = (recorded.get("device"), recorded.get("inode")) == (now["device"], now["inode"])
    return same_inode or recorded.get("path") == now["path"]


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` holds a run of any taalm command (a run mark, or a complete checkpoint)."""
    return any(path.glob("*_run.json")) or bool(ckpt.complete_checkpoints(path))


def mark_name(command: str) -> str:
    """``meta-train`` → ``meta_train_run.json``: the file that makes a directory a run of ``command``."""
    return command.replace(" ", "_").replace("-", "_") + "_run.json"


def open_run_dir(out_dir: str | Path, command: str, *, overwrite: bool, resume: str | None,
                 settings: dict, data_sha256: dict, legacy_hashes: tuple[str, ...] = (),
                 defaults: dict | None = None) -> RunDir:
    """Lock, check and prepare ``out_dir`` for a run of ``command`` (every rank calls it; rank 0 decides).

    Args:
        resume: None (a new run), ``auto`` (the newest complete checkpoint, or a fresh start in a new or marked
            directory) or a checkpoint directory.
        settings: the flattened settings a resumed run must share (``{"meta.inner_lr": 1e-3, ...}``).
        data_sha256: content hashes of the data files (``{"data.train_file": "ab12..."}``).
        legacy_hashes: for checkpoints of earlier versions, which stored a config hash (``resume_hash``) instead of
            settings: the hashes this run's config has in their scheme (none: such checkpoints are refused).
        defaults: the settings of the default config (same keys as ``settings``): a key a checkpoint of an earlier
            version did not record reads as its default, so a field added since (whose default keeps the old
            behaviour) does not block resuming.

    Raises:
        ConfigError: on every rank together, naming the directory and what to do.
    """
    out = Path(out_dir)
    run, error = RunDir(out), None
    if D.is_main():
        try:
            run = _open_on_main(out, command, overwrite, resume, settings, data_sha256, legacy_hashes, defaults)
        except ConfigError as e:
            error = str(e)
    error = D.broadcast_object(error)
    if error is not None:
        raise ConfigError(error)
    resume_from, fresh = D.broadcast_object((str(run.resume_from) if run.resume_from else None, run.fresh))
    if not D.is_main():
        run.resume_from, run.fresh = (Path(resume_from) if resume_from else None), fresh
        run.resume_state = ckpt.read_state(run.resume_from) if run.resume_from else {}
    D.barrier()
    return run


def _open_on_main(out: Path, command: str, overwrite: bool, resume: str | None, settings: dict,
                  data_sha256: dict, legacy_hashes: tuple[str, ...], defaults: dict | None) -> RunDir:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a run directory: choose another output directory")
    lock = RunDirLock(out).acquire(command)
    try:
        run = RunDir(out, lock=lock)
        mark = out / mark_name(command)
        holds = out.is_dir() and any(out.iterdir())
        run.fresh = not holds or overwrite
        if holds and overwrite:
            if not is_run_directory(out):
                raise ConfigError(f"{out} holds files but no taalm run (no *_run.json mark, no complete checkpoint): "
                                  f"{OVERWRITE_FLAG.get(command, '--overwrite')} moves only runs aside, so nothing was "
                                  "moved; choose another output directory")
            run.moved_aside = ckpt.move_aside(out)
            print(f"taalm: {out} held another run; moved it to {run.moved_aside}")
        elif holds:
            done = ckpt.complete_checkpoints(out)
            if resume is None:
                kind = f"a `taalm {command}` run" if mark.is_file() else "files"
                raise ConfigError(f"{out} already holds {kind}; continue it with --resume auto, choose another "
                                  f"output directory, or pass {OVERWRITE_FLAG.get(command, '--overwrite')} (the old "
                                  "directory is moved aside, not deleted)")
            if not mark.is_file() and not done:
                aside = (f", or pass {OVERWRITE_FLAG.get(command, '--overwrite')} to move that run aside"
                         if is_run_directory(out) else "")  # another command's run; a user's folder is never moved
                raise ConfigError(f"{out} holds files but no `taalm {command}` run (no {mark.name}, no complete "
                                  f"checkpoint), so it is not resumed into: choose another output directory{aside}")
            if resume == "auto" and done:
                run.resume_from = ckpt.newest_intact(done)
                if run.resume_from is None:
                    raise ConfigError(f"{out}: every complete checkpoint is damaged (named above); nothing is "
                                      f"resumed or deleted: move {ckpt.checkpoints_dir(out)} aside to start anew, "
                                      f"or pass {OVERWRITE_FLAG.get(command, '--overwrite')}")
        if resume not in (None, "auto"):
            run.resume_from = ckpt.resolve_resume(resume, out)
        if run.resume_from is not None:
            run.resume_state = ckpt.read_state(run.resume_from)
            check_resumable(run.resume_from, run.resume_state, settings, data_sha256, legacy_hashes, defaults)
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        if run.resume_from is None or not mark.is_file():
            mark.write_text(json.dumps({"command": f"taalm {command}", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "host": socket.gethostname(), "data_sha256": data_sha256}, indent=2) + "\n")
        return run
    except BaseException:
        lock.release()
        raise


def check_resumable(directory: Path, state: dict, settings: dict, data_sha256: dict,
                    legacy_hashes: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """Refuse to resume the checkpoint ``directory`` (its ``state``) with other settings or other data, naming
    every key that differs (at most 8) and what to do. A key missing on one side reads as its value in
    ``defaults`` (a field added after the checkpoint was written, at its default, is no difference). With
    ``defaults``, only the keys this run's config has are compared: a checkpoint of an earlier version also recorded
    the sections of other programs (one config served them all), which this run does not read."""
    if "settings" in state:
        base = defaults or {}
        before, now = {**base, **state["settings"]}, {**base, **settings}
        keys = set(now) if defaults is not None else set(now) | set(before)
        differ = sorted(k for k in keys if now.get(k) != before.get(k))
        if differ:
            shown = "; ".join(f"{k}: {before.get(k, '(absent)')!r} → {now.get(k, '(absent)')!r}" for k in differ[:8])
            more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
            raise ConfigError(f"cannot resume {directory}: it was written with other settings ({shown}{more}); "
                              "resume with the run's own settings (its config.yaml), or start a new run")
    elif state.get("resume_hash") is None or state["resume_hash"] not in legacy_hashes:
        raise ConfigError(f"cannot resume {directory}: it was written by an earlier version with a different config "
                          "(that version did not record which key differs); resume with the run's own config.yaml")
    saved = state.get("data_sha256", {})
    changed = sorted(k for k in data_sha256 if k in saved and saved[k] != data_sha256[k])
    if changed:
        raise ConfigError(f"cannot resume {directory}: the content of {', '.join(changed)} changed since the checkpoint "
                          "was written (the run would continue at its old position in other data); restore the data, "
                          "or start a new run")


def remove_leftovers(out: Path) -> None:
    """Delete what interrupted saves and prunes leave in ``checkpoints/``: temporary and trash directories, and
    step directories without ``COMPLETE`` (never resumed from, so never needed)."""
    root = ckpt.checkpoints_dir(out)
    if not root.is_dir():
        return
    for d in root.iterdir():
        incomplete_step = ckpt.is_step_dir(d) and not (d / ckpt.COMPLETE).is_file()
        if d.is_dir() and (d.name.startswith((".tmp-", ".trash-")) or incomplete_step):
            shutil.rmtree(d, ignore_errors=True)


def load_on_every_rank(directory: Path, load) -> None:
    """Run ``load()`` (this rank's part of checkpoint ``directory``) and agree on the outcome: when it raised a
    :class:`ConfigError` on any rank (e.g. a file refused by the weights-only loader), every rank raises, so no rank
    trains on while another exits."""
    failure = None
    try:
        load()
    except ConfigError as e:
        failure = str(e)
    if D.any_rank(failure is not None):
        raise ConfigError(failure or f"{directory}: another rank could not load its part of this checkpoint (see its "
                          "message); resume from another checkpoint")


def resume_settings(cfg, include: tuple[str, ...], exclude: tuple[str, ...]) -> dict:
    """The flattened settings of config ``cfg`` a resumed run must share with its checkpoint: the dotted keys that
    match ``include`` and not ``exclude`` (an entry ending in a dot, or empty, matches every key under it)."""
    from taalm_dist.config import flatten_dict, to_dict

    def matches(key: str, entries: tuple[str, ...]) -> bool:
        return any(key == e or ((e == "" or e.endswith(".")) and key.startswith(e)) for e in entries)

    return {k: v for k, v in flatten_dict(to_dict(cfg)).items() if matches(k, include) and not matches(k, exclude)}


def truncate_metrics(out: Path, step: int) -> None:
    """Keep only ``metrics.jsonl`` rows of steps ``<= step`` (rank 0): a resumed run logs the steps after its
    checkpoint again, and a restarted one (``step`` -1) logs everything anew, so no step appears twice."""
    path = out / "metrics.jsonl"
    if not D.is_main() or not path.is_file():
        return
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    kept = []
    for x in lines:
        try:
            row_step = json.loads(x).get("step", -1)
        except json.JSONDecodeError:  # a row cut by a crash mid-write
            continue
        if row_step <= step:
            kept.append(x)
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        os.replace(tmp, path)
