"""``taalm data mix``: one meta-training file from the pairs of several sources (a φ that sees both kinds).

A φ meta-trained on one source's documents (LAMA-CKL's Wikipedia evidence, or the synthetic benchmark's short
biographies) learns that source's answers; on the other source it may put its weight on the wrong tokens, which
hurts θ more than uniform weights would. Meta-training on a mixture of the sources is one way to a φ that
transfers. Every row keeps its fields and gains ``source`` (the name given to its file), so a run's documents can
be told apart afterwards; the rows are shuffled with a seed, and ``mix.json`` beside the output records the
sources (path, SHA-256, rows taken).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from taalm_dist.data.jsonl_file import file_sha256, jsonl_lines
from taalm_dist.data.lama_ckl import parse_row, write_pairs
from taalm_dist.errors import DataError


def parse_source(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` (or a bare ``PATH``, named by its parent directory's name) as ``(name, path)``."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec).resolve().parent.name or Path(spec).stem
    if not name or not path:
        raise DataError(f"source {spec!r}: give NAME=PATH (e.g. lama=runs/ckl_smollm2/tailored/meta_train.jsonl)")
    return name, Path(path)


def mix_pairs(sources: list[tuple[str, Path]], out: str | Path, seed: int = 0, max_per_source: int | None = None,
              overwrite: bool = False) -> dict[str, int]:
    """Write the rows of every ``(name, path)`` source, each with ``source: name``, shuffled, to ``out``.

    Args:
        sources: ``(name, jsonl path)`` pairs; every row must be a meta-training pair (fields ``evidence``,
            ``task_descriptive``, ``object``, the object inside the task), checked here so that a bad row is
            named by ``file:line`` now rather than when meta-training tokenises it.
        out: the jsonl file to write (``mix.json`` is written beside it); refused when it exists, unless
            ``overwrite``.
        seed: seed of the shuffle (same sources and seed, same file).
        max_per_source: take at most this many rows of each source (the first ones in file order); None: all.
        overwrite: replace an existing ``out`` and its ``mix.json``.

    Returns ``{name: rows taken}``. Raises :class:`DataError` for a bad row, a repeated source name, or a
    ``uuid`` found in two sources (the sources must not share facts).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists: choose another --out, or pass --overwrite to replace it")
    names = [n for n, _ in sources]
    if len(sources) < 2 or len(set(names)) != len(names):
        raise DataError(f"give at least two sources with different names (got {names})")
    rows, counts, seen, record = [], {}, {}, []
    for name, path in sources:
        taken = 0
        for line in jsonl_lines(path, "a jsonl file of meta-training pairs (fields evidence, task_descriptive, object)"):
            if max_per_source is not None and taken >= max_per_source:
                break
            row = line.row()
            parse_row(row, line.where, "task_descriptive")
            uid = row.get("uuid")
            if uid is not None:
                if uid in seen:
                    raise DataError(f"{line.where}: uuid {uid!r} is also in {seen[uid]}: the sources share a fact")
                seen[uid] = line.where
            rows.append({**row, "source": name})
            taken += 1
        counts[name] = taken
        record.append({"name": name, "path": str(path), "sha256": file_sha256(path), "rows": taken})
    random.Random(seed).shuffle(rows)
    write_pairs(rows, out)
    (out.parent / "mix.json").write_text(json.dumps({"seed": seed, "max_per_source": max_per_source,
                                                     "sources": record, "rows": len(rows)}, indent=2))
    return counts
