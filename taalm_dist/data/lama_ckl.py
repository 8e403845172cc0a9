"""Read meta-training pairs (document D, task T_D, object) from LAMA-CKL-schema jsonl.

Each row needs ``evidence`` (the document), the task field (``task_descriptive`` by default) and
``object``. The task is cut right after the last occurrence of the object, so the object's tokens are the
last tokens of T_D (docs/design.md §4). An occurrence is a whole word (:func:`object_spans`): the object "Mu"
is not in "Mufa was born ...", so it neither ends a task there nor labels the document's tokens. Every problem
names the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from taalm_dist.data.jsonl_file import jsonl_lines
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


def object_spans(text: str, obj: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the whole-word occurrences of ``obj`` in ``text``, left to right
    (overlapping ones included).

    Whole word: no letter or digit right before an object that starts with one, nor right after an object
    that ends with one — "Paris" is found in "Paris.", "(Paris)" and "Paris's", not in "Parisian"; an object
    that starts or ends with punctuation (".NET", "C++") needs no boundary on that side. Case counts.
    """
    out, start = [], text.find(obj) if obj else -1
    while start >= 0:
        end = start + len(obj)
        before_ok = start == 0 or not (obj[0].isalnum() and text[start - 1].isalnum())
        after_ok = end == len(text) or not (obj[-1].isalnum() and text[end].isalnum())
        if before_ok and after_ok:
            out.append((start, end))
        start = text.find(obj, start + 1)
    return out


def _inside_words(text: str, obj: str) -> str:
    """A short excerpt around the first (non-whole-word) occurrence of ``obj`` in ``text``, for an error."""
    i = text.find(obj)
    j = i
    while j > 0 and text[j - 1].isalnum():
        j -= 1
    k = i + len(obj)
    while k < len(text) and text[k].isalnum():
        k += 1
    return text[j:k]


def parse_row(row: dict, where: str, task_field: str) -> Pair:
    """Validate one decoded row; raise :class:`DataError` naming ``where`` and the field.

    The object must occur as a whole word (:func:`object_spans`) in the task; in the evidence it may be
    absent, but if it occurs there only inside other words the row is refused: its tokens would be labelled
    as the object's."""
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
    for name, text in ((task_field, task), ("evidence", evidence)):
        if obj in text and not object_spans(text, obj):
            raise DataError(f"{where}: object {obj!r} occurs in field '{name}' only inside other words (e.g. "
                            f"{_inside_words(text, obj)!r}), not as a word of its own; fix the object or the "
                            f"{name}")
    spans = object_spans(task, obj)
    if not spans:
        raise DataError(f"{where}: object {obj!r} is not found in {task_field} {task!r}")
    return Pair(str(row.get("uuid", where)), evidence, task[: spans[-1][1]], obj, where)


def load_pairs(path: str | Path, task_field: str = "task_descriptive", skip_bad_rows: bool = False):
    """All pairs of a jsonl file, with a :class:`LoadReport`.

    With ``skip_bad_rows`` a malformed row (including a line that is not UTF-8) is skipped and counted;
    otherwise the first one raises. A file that is missing, a directory, binary or UTF-16 always raises.
    """
    p = Path(path)
    pairs, report = [], LoadReport(reasons=[])
    for line in jsonl_lines(p, f"a jsonl file of LAMA-CKL rows (fields evidence, {task_field}, object)"):
        report.rows += 1
        try:
            pairs.append(parse_row(line.row(), line.where, task_field))
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
