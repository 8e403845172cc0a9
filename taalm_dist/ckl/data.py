"""LAMA-CKL files: validated rows (file:line errors) and tokenised tasks as a cached ``datasets.Dataset``.

The three files of a LAMA-CKL directory: ``variant.jsonl`` (To-Learn candidates), and
``invariant_descriptive.jsonl`` / ``invariant_schematic.jsonl`` (Not-To-Forget candidates). Rows are
validated line by line first (so every problem names file, line and field, or is skipped and counted
with ``skip_bad_rows``); the valid rows then become a ``datasets.Dataset`` whose tokenisation is cached
on disk, keyed by the file's content, the tokenizer's vocabulary and the settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from taalm_dist.cache import cache_root
from taalm_dist.data import Pair, load_pairs, tokenize_pair
from taalm_dist.data.jsonl_file import jsonl_lines
from taalm_dist.data.lama_ckl import LoadReport
from taalm_dist.errors import DataError

FILES = {"variant": "variant.jsonl", "invariant_descriptive": "invariant_descriptive.jsonl",
         "invariant_schematic": "invariant_schematic.jsonl"}


def require_files(data_dir: str | Path, names=tuple(FILES)) -> dict[str, Path]:
    """Paths of the LAMA-CKL files in ``data_dir``; a clear error names what is missing."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"--data-dir {d} is not a directory (it must hold the LAMA-CKL jsonl files)")
    paths = {n: d / FILES[n] for n in names}
    folders = [str(p) for p in paths.values() if p.is_dir()]
    if folders:
        raise DataError(f"{', '.join(folders)}: a directory where the LAMA-CKL jsonl file of that name is expected "
                        f"(--data-dir must hold the files {', '.join(FILES.values())})")
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"LAMA-CKL file(s) missing: {', '.join(missing)} (expected {', '.join(FILES.values())})")
    return paths


def load_rows(path: str | Path, task_field: str, skip_bad_rows: bool, limit: int | None = None):
    """``(raw rows, pairs, report)`` of the valid rows (same order); ``limit`` keeps the first N."""
    pairs, report = load_pairs(path, task_field, skip_bad_rows)
    by_line = {line.where: line for line in jsonl_lines(path)}  # the same reader: same file:line names
    rows = [by_line[p.source].row() for p in pairs]
    if limit is not None:
        rows, pairs = rows[:limit], pairs[:limit]
    return rows, pairs, report


def _fingerprint(pairs: list[Pair], tokenizer, max_task_tokens: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([[p.uid, p.task, p.object] for p in pairs]).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(f"{type(tokenizer).__name__}:{max_task_tokens}:2".encode())
    return h.hexdigest()[:20]


def tokenized_tasks(pairs: list[Pair], tokenizer, max_task_tokens: int = 128, cache: bool = True):
    """A ``datasets.Dataset`` with ``uid``, ``input_ids`` and ``label_mask`` (the object's tokens) per task,
    cached under :func:`cache_root` (``cache=False``: in memory)."""
    from datasets import Dataset

    base = Dataset.from_list([{"uid": p.uid, "task": p.task, "object": p.object, "source": p.source} for p in pairs])

    def encode(batch):
        ids, labels = [], []
        for uid, task, obj, source in zip(batch["uid"], batch["task"], batch["object"], batch["source"]):
            item = tokenize_pair(tokenizer, Pair(uid, task, task, obj, source), 1 << 30, max_task_tokens, "truncate")
            ids.append(item.task_ids)
            labels.append(item.label_mask)
        return {"input_ids": ids, "label_mask": labels}

    kwargs = {}
    if cache:
        folder = cache_root() / "datasets"
        folder.mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(folder / f"tasks-{_fingerprint(pairs, tokenizer, max_task_tokens)}.arrow")
    return base.map(encode, batched=True, remove_columns=["task", "object", "source"], **kwargs)


def report_line(name: str, report: LoadReport) -> str:
    return f"{name}: {report.rows} rows, {report.skipped} skipped"
