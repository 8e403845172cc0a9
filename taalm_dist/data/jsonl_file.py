"""The one reader of jsonl data files (LAMA-CKL rows, meta-training pairs, documents, questions, ``ckl build``).

A jsonl file is read as bytes and decoded **line by line**, so one line that is not UTF-8 is one bad row
(named ``file:line``, skipped and counted under ``skip_bad_rows`` like any other malformed row) instead of a
``UnicodeDecodeError`` for the whole file. A UTF-8 byte order mark at the start of the file is accepted
(editors on Windows write one). Problems of the whole file — it does not exist, is a directory, is binary or
UTF-16 — are a :class:`~taalm_dist.errors.DataError` at once, never skippable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from taalm_dist import integrity
from taalm_dist.errors import DataError

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def file_sha256(path: str | Path | None) -> str | None:
    """Hex SHA-256 of a file's bytes (streamed), or None without a path."""
    return integrity.file_sha256(path) if path else None


def require_file(path: str | Path, expected: str) -> Path:
    """``path`` as a :class:`Path` if it is a file; else a :class:`DataError` saying what it is instead (missing, a
    directory — with the jsonl files it holds) and ``expected`` (e.g. ``"a jsonl file of LAMA-CKL rows"``)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        inside = sorted(q.name for q in p.glob("*.jsonl"))
        hint = f" (it holds {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''}: give one of them)" if inside \
            else ""
        raise DataError(f"{p} is a directory, not a file: give {expected}{hint}")
    if p.exists():
        raise DataError(f"{p} is not a regular file: give {expected}")
    raise DataError(f"{p} does not exist: give {expected}")


def parse_json_object(line: str, where: str) -> dict:
    """One jsonl line as a dict; ``where`` (``file:line``) names it in the error when it is not a JSON object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        # Some of json's messages end in "at" ("Invalid control character at", "Unterminated string starting at"):
        # they read on with the column, the others get their own "at".
        at = "" if e.msg.endswith(" at") else " at"
        raise DataError(f"{where}: not valid JSON ({e.msg}{at} column {e.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return row


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line of a jsonl file: ``number`` (1-based), ``where`` (``file:line``) and its ``raw`` bytes
    (without the line break and, on the first line, without a UTF-8 byte order mark). :meth:`text` and
    :meth:`row` decode it and raise a :class:`DataError` naming ``where`` when they cannot."""

    number: int
    where: str
    raw: bytes

    def text(self) -> str:
        """The line as text; a line that is not UTF-8 is a bad row."""
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{self.where}: the line is not UTF-8 text (byte {e.start + 1} of the line is "
                            f"{self.raw[e.start:e.start + 1]!r}); fix the line, or convert the file to UTF-8 (e.g. "
                            "iconv -f latin1 -t utf-8)") from None

    def row(self) -> dict:
        """The line as a JSON object (:func:`parse_json_object`)."""
        return parse_json_object(self.text(), self.where)


def jsonl_lines(path: str | Path, expected: str = "a jsonl file (one JSON object per line)") -> Iterator[JsonlLine]:
    """The non-blank lines of a jsonl file, in order. The file is checked at once (see :func:`require_file`;
    ``expected`` says what the caller needs); a binary (NUL bytes) or UTF-16 file is refused as a whole.
    Lines are split at ``\\n`` only (a ``\\r`` before it is JSON whitespace), so a U+2028 inside a string
    does not split a row."""
    p = require_file(path, expected)
    data = p.read_bytes()
    if data.startswith(_UTF16_BOMS):
        raise DataError(f"{p} is UTF-16 text (it starts with a UTF-16 byte order mark); convert it to UTF-8")
    if b"\x00" in data[:8192]:
        raise DataError(f"{p} looks binary (it contains NUL bytes): give {expected}, as UTF-8 text")
    return _lines(p, data)


def _lines(p: Path, data: bytes) -> Iterator[JsonlLine]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            yield JsonlLine(n, f"{p}:{n}", raw)
