"""TemporalWiki's files (Jang et al., 2022), as published: the diffsets θ learns and the probes it is scored on.

Layout of a data directory (the official download, or ``taalm data twiki-synth``)::

    TWiki_Diffsets/wikipedia_0809_gpt2.csv            one column ``text``: a changed Wikipedia line per row
    TWiki_Diffsets/wikipedia_0809_subset.csv          (the official smaller versions; ``twiki.subset``)
    twiki_probes/0801-0901_changed.csv                columns ``subject``, ``relation``, ``object``
    twiki_probes/0801-0901_unchanged.csv

Diffset ``MMNN`` holds what changed between the snapshots of month MM and month NN; its probes are
``MM01-NN01`` (as TemporalWiki's ``Datasets.py`` maps them). The official diffsets have the one column ``text``, the
probes exactly ``subject,relation,object``; other columns are ignored. A diffset line is kept as TAALM's
preprocessing (``preprocess/preprocess_temporalwiki_dataset.py``) keeps it (:func:`keep_line`).

Probes are scored two ways (:func:`probe_prompt`, :func:`probe_sro`): the paper's — the NLL of the object's tokens
at the end of ``Guess the object. \n  subject is S , relation is R , object is O`` (TAALM's ``make_task``) — and
TemporalWiki's own — the perplexity of the text ``S R O`` as a whole (its ``evaluate_ppl`` mode).

Every reader refuses a malformed file naming the file and the line (1-based, the header is line 1) and saying
what to do; nothing is guessed.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from taalm_dist.errors import DataError

DIFFSETS, PROBES = "TWiki_Diffsets", "twiki_probes"
"""The two folders of the layout."""
MIN_CHARS, MIN_LETTER_SHARE = 50, 0.3
"""The paper's filter: a diffset line shorter than this, or with a smaller share of letters, is dropped."""
PROBE_COLUMNS = ("subject", "relation", "object")
_DIFFSET_NAME = re.compile(r"^wikipedia_(\d{4})_(gpt2|subset)\.csv$")
_LETTERS = re.compile(r"[a-zA-Z]")


@dataclass(frozen=True)
class Probe:
    """One probe: a (subject, relation, object) triple, and where it was read (``file:line``)."""

    subject: str
    relation: str
    object: str
    where: str


def keep_line(text: str) -> bool:
    """TAALM's diffset filter, on the line as read: at least ``MIN_CHARS`` characters (so no ``nan`` line) of which
    at least ``MIN_LETTER_SHARE`` are ASCII letters (``[a-zA-Z]``, as TAALM counts them)."""
    if len(text) < MIN_CHARS or len(text.strip()) < MIN_CHARS:
        return False
    return len(_LETTERS.findall(text)) / len(text) >= MIN_LETTER_SHARE


def probe_prompt(probe: "Probe") -> tuple[str, str]:
    """The paper's probe text (TAALM's ``make_task``) and the object it ends with, whose tokens are scored."""
    return f"Guess the object. \n  subject is {probe.subject} , relation is {probe.relation} , object is {probe.object}", \
        probe.object


def probe_sro(probe: "Probe") -> str:
    """TemporalWiki's probe text ``S R O``, scored whole (its perplexity)."""
    return f"{probe.subject} {probe.relation} {probe.object}"


def probe_period(period: str) -> str:
    """The probes' name of diffset ``MMNN``: ``MM01-NN01``."""
    return f"{period[:2]}01-{period[2:]}01"


def diffset_path(data_dir: str | Path, period: str, subset: bool = False) -> Path:
    """``data_dir/TWiki_Diffsets/wikipedia_<period>_gpt2.csv`` (``_subset.csv`` with ``subset``)."""
    return Path(data_dir) / DIFFSETS / f"wikipedia_{period}_{'subset' if subset else 'gpt2'}.csv"


def probe_path(data_dir: str | Path, period: str, kind: str) -> Path:
    """``data_dir/twiki_probes/<MM01-NN01>_<kind>.csv`` for diffset ``period``, ``kind`` changed or unchanged."""
    return Path(data_dir) / PROBES / f"{probe_period(period)}_{kind}.csv"


def find_periods(data_dir: str | Path, subset: bool = False) -> list[str]:
    """Every diffset period of ``data_dir`` (``MMNN``), in file-name order.

    Raises:
        DataError: no ``TWiki_Diffsets`` folder, or no diffset in it.
    """
    folder = Path(data_dir) / DIFFSETS
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: twiki.data_dir must hold {DIFFSETS}/ and {PROBES}/ (the official "
                        "TemporalWiki download, or `taalm data twiki-synth --out DIR`)")
    kind = "subset" if subset else "gpt2"
    found = sorted(m.group(1) for f in folder.iterdir() if (m := _DIFFSET_NAME.match(f.name)) and m.group(2) == kind)
    if not found:
        raise DataError(f"{folder} holds no wikipedia_MMNN_{kind}.csv diffset")
    return found


def _rows(path: Path, columns: tuple[str, ...]):
    """``(line, row)`` of CSV ``path`` with ``columns`` checked in its header; refuses ragged rows."""
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected in the TemporalWiki layout: see `taalm twiki run --help`)")
    with path.open("rb") as f:  # named by line before parsing: the CSV reader's decoder reads ahead
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); convert "
                                "the file to UTF-8 or remove that line") from None
    csv.field_size_limit(sys.maxsize)  # a diffset line can be a whole section
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path} is empty: expected a header with {', '.join(columns)}") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}:1: unreadable header ({e})") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}:1: header {header} lacks column(s) {missing}; a TemporalWiki "
                            f"{'probe' if len(columns) > 1 else 'diffset'} file has {', '.join(columns)}")
        at = [header.index(c) for c in columns]
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({e}); fix or remove that line") from None
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: {len(row)} fields where the header has {len(header)}; fix or remove "
                                "that line (a field with commas must be quoted)")
            yield line, [row[i] for i in at]


def read_diffset(path: str | Path, max_docs: int | None = None) -> tuple[list[str], int]:
    """The lines of a diffset that pass :func:`keep_line` (the first ``max_docs``), and how many were dropped.

    Raises:
        DataError: missing file, no ``text`` column, a ragged or undecodable line (named), or no line kept.
    """
    p = Path(path)
    kept, dropped = [], 0
    for _, (text,) in _rows(p, ("text",)):
        if keep_line(text):
            kept.append(text.strip())
            if max_docs is not None and len(kept) >= max_docs:
                break
        else:
            dropped += 1
    if not kept:
        raise DataError(f"{p}: no line passes the filter (≥ {MIN_CHARS} characters, not 'nan', ≥ "
                        f"{MIN_LETTER_SHARE:.0%} letters; {dropped} dropped)")
    return kept, dropped


def read_probes(path: str | Path, max_probes: int | None = None) -> list[Probe]:
    """The probes of ``path`` (the first ``max_probes``; a file with only its header has none: the first period of
    ``taalm data twiki-synth`` has no unchanged facts yet).

    Raises:
        DataError: missing file or column, a ragged line, or an empty subject/relation/object (named).
    """
    p = Path(path)
    out = []
    for line, values in _rows(p, PROBE_COLUMNS):
        values = [v.strip() for v in values]
        empty = [c for c, v in zip(PROBE_COLUMNS, values) if not v or v.lower() == "nan"]
        if empty:
            raise DataError(f"{p}:{line}: empty {', '.join(empty)}; every probe needs a subject, a relation and an "
                            "object (fix or remove that line)")
        out.append(Probe(*values, where=f"{p}:{line}"))
        if max_probes is not None and len(out) >= max_probes:
            break
    return out


def make_pairs(lines: list[str], probes: list[Probe], period: str) -> tuple[list[dict], int]:
    """Meta-training pairs (LAMA-CKL schema, as TAALM's ``train_attention_traindata_0809``: a diffset line and the
    paper's probe task about it) from a period's diffset ``lines`` and its ``probes`` (its changed ones): each probe
    whose subject and object both occur in a line is paired with the shortest such line. Returns the rows and how
    many probes found no line."""
    rows, unmatched = [], 0
    for i, probe in enumerate(probes):
        found = [line for line in lines if probe.subject in line and probe.object in line]
        if not found:
            unmatched += 1
            continue
        task, obj = probe_prompt(probe)
        rows.append({"uuid": f"twiki-{period}-{i}", "evidence": min(found, key=len), "task_schematic": task,
                     "task_descriptive": task, "object": obj, "subject": probe.subject,
                     "relation_label": probe.relation, "source": probe.where})
    return rows, unmatched
