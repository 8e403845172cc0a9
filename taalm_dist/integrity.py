"""Nothing silently wrong: the finiteness policy and the integrity records every program shares.

**Finiteness.** A tensor a program loads (a φ export, a checkpoint) or is about to write (θ's learned tensors,
weights for ``taalm weigh``) must be finite: :func:`require_finite` names the first tensors that are not and the
program stops with exit 2 instead of writing NaN with exit 0. During training, meta-training skips a φ update
with a non-finite objective, meta-gradient or weight (at most ``train.max_consecutive_skips`` in a row); the θ
programs (``learn``, ``ckl run``) stop at the first non-finite loss, since a θ update cannot be taken back and a
NaN there means a broken φ or a step size that diverged.

**Integrity records.** Each φ export and each checkpoint holds ``integrity.json``: the size and SHA-256 of every
other file in its directory, written last (before ``COMPLETE`` for a checkpoint). Loading or resuming verifies it
(:func:`verify_record`): a missing, truncated or altered file is found before it is read. Directories written
before the record existed have none and are read as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

RECORD = "integrity.json"
RECORD_FORMAT = 1
"""The ``format`` of the integrity records this version writes and reads."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (streamed, 1 MiB at a time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def nonfinite(tensors: Mapping[str, "object"]) -> list[str]:
    """Names of the tensors of ``tensors`` (name → torch.Tensor, any shape) holding a NaN or an infinity,
    each with what it holds, e.g. ``"head.bias (inf)"``; integer tensors are always finite."""
    import torch

    bad = []
    for name, t in tensors.items():
        if not torch.is_tensor(t) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            kinds = [kind for kind, test in (("inf", torch.isinf), ("nan", torch.isnan)) if bool(test(t).any())]
            bad.append(f"{name} ({'/'.join(kinds)} in {int((~finite).sum())} of {t.numel()} values)")
    return bad


def require_finite(tensors: Mapping[str, "object"], what: str, fix: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``what`` (e.g. the file) and its first non-finite tensors, with ``fix`` (what the
    user does about it), when any tensor of ``tensors`` holds a NaN or an infinity."""
    bad = nonfinite(tensors)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise error(f"{what}: non-finite values in {', '.join(bad[:3])}{more}; {fix}")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a sibling temporary file renamed over it: a reader, or a rerun
    after an interruption, finds the old file or the whole new one, never a partial one."""
    import os

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_record(directory: str | Path) -> Path:
    """Write ``integrity.json`` into ``directory``: size and SHA-256 of every other file under it (recursively,
    paths relative to it). Call it after the last file is written."""
    root = Path(directory)
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != RECORD and not p.is_symlink():
            files[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
    path = root / RECORD
    path.write_text(json.dumps({"format": RECORD_FORMAT, "files": files}, indent=1) + "\n")
    return path


def verify_record(directory: str | Path) -> list[str]:
    """What is wrong with ``directory`` against its ``integrity.json`` (one line per file: missing, of another
    size, or of other content), or an unreadable record; empty when intact or when it has no record (written
    before records existed)."""
    root = Path(directory)
    path = root / RECORD
    if not path.exists():
        return []
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if record.get("format") != RECORD_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {record.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{RECORD} is unreadable ({type(e).__name__}: {e})"]
    problems = []
    for rel, want in files.items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != want["bytes"]:
            problems.append(f"{rel} has {p.stat().st_size} bytes, {want['bytes']} were written")
        elif file_sha256(p) != want["sha256"]:
            problems.append(f"{rel} differs from what was written (SHA-256 mismatch)")
    return problems
