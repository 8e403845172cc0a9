"""Read meta-training pairs (document D, task T_D, object) from LAMA-CKL-schema jsonl.

Each row needs ``evidence`` (the document), the task field (``task_descriptive`` by default) and
``object``. The task is cut right after the last occurrence of the object, so the object's tokens are the
last tokens of T_D (docs/design.md §4). Every problem names the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from taalm_dist.data.documents import parse_json_object
from taalm_dist.errors import DataError


@dataclass(frozen=True)
class Pair:
    """One meta-training pair.

    Attributes:
        uid: the row's ``uuid`` (or ``file:line``).
        document: D, the evidence text.
        task: T_D, the task sentence cut after the object.
        object: the answer string; it ends ``task``.
        source: ``file:line`` the row came from.
    """

    uid: str
    document: str
    task: str
    object: str
    source: str


@dataclass
class LoadReport:
    """What loading did: rows read, rows skipped and the first reasons."""

    rows: int = 0
    skipped: int = 0
    reasons: list[str] | None = None


def parse_row(row: dict, where: str, task_field: str) -> Pair:
    """Validate one decoded row; raise :class:`DataError` naming ``where`` and the field."""
    for name in ("evidence", task_field, "object"):
        if name not in row:
            raise DataError(f"{where}: missing field '{name}' (row has: {', '.join(sorted(row))})")
        if not isinstance(row[name], str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(row[name]).__name__}")
    evidence, task, obj = row["evidence"], row[task_field], row["object"].strip()
    if not evidence.strip():
        raise DataError(f"{where}: field 'evidence' is empty: a document needs text to learn from")
    if not obj:
        raise DataError(f"{where}: field 'object' is empty")
    end = task.rfind(obj)
    if end < 0:
        raise DataError(f"{where}: object {obj!r} is not found in {task_field} {task!r}")
    return Pair(str(row.get("uuid", where)), evidence, task[: end + len(obj)], obj, where)


def load_pairs(path: str | Path, task_field: str = "task_descriptive", skip_bad_rows: bool = False):
    """All pairs of a jsonl file, with a :class:`LoadReport`.

    With ``skip_bad_rows`` a malformed row is skipped and counted; otherwise the first one raises.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    pairs, report = [], LoadReport(reasons=[])
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            report.rows += 1
            where = f"{p}:{lineno}"
            try:
                pairs.append(parse_row(parse_json_object(line, where), where, task_field))
            except DataError as e:
                if not skip_bad_rows:
                    raise DataError(f"{e} — fix the row, or pass --skip-bad-rows / data.skip_bad_rows=true") from None
                report.skipped += 1
                if len(report.reasons) < 5:
                    report.reasons.append(str(e))
    if not pairs:
        raise DataError(f"{p}: no usable rows ({report.rows} read, {report.skipped} skipped)")
    return pairs, report


def write_pairs(rows: list[dict], path: str | Path) -> None:
    """Write rows as jsonl (one JSON object per line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
