"""A user's own documents (not benchmark rows): a jsonl file, a directory of text files, or a `datasets` dataset.

:func:`load_documents` reads any of them into :class:`Document` s; :func:`token_windows` splits a long
document's tokens into overlapping windows that fit the model's context. Every problem is a
:class:`~taalm_dist.errors.DataError` naming the file (and line or field) and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from taalm_dist.data.jsonl_file import jsonl_lines
from taalm_dist.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
DATASET_SUFFIXES = (".parquet", ".arrow")


@dataclass
class Document:
    """One document: ``id`` (file name, ``<file>:<line>`` or dataset row index) and its ``text``."""

    id: str
    text: str


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DataError(f"{path} looks binary (it contains NUL bytes): give a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); convert it to "
                        "UTF-8") from None


def _jsonl_objects(path: Path, expected: str):
    """``(line number, row)`` of every non-blank line of a jsonl file (:func:`jsonl_lines`); a line that is not
    UTF-8 or not a JSON object is named."""
    for line in jsonl_lines(path, expected):
        yield line.number, line.row()


def _from_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    for n, row in _jsonl_objects(path, f"a jsonl file of documents (field {text_field!r})"):
        if text_field not in row:
            raise DataError(f"{path}:{n}: no field {text_field!r} (the row has {sorted(row)}); name the text field "
                            "with --text-field")
        if not isinstance(row[text_field], str):
            raise DataError(f"{path}:{n}: field {text_field!r} must be a string, got {type(row[text_field]).__name__}")
        docs.append(Document(f"{path.name}:{n}", row[text_field]))
    return docs


def _from_dataset(path: Path, text_field: str, files: list[Path] | None = None) -> list[Document]:
    """A ``save_to_disk`` directory, or the dataset ``files`` (default: ``path`` itself, a .parquet/.arrow file)."""
    import datasets

    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))
        else:
            files = files or [path]
            kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"cannot read {path} as a datasets dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path} holds splits {sorted(ds)}; save the split to learn from with save_to_disk")
        ds = ds["train"]
    if text_field not in ds.column_names:
        raise DataError(f"{path}: the dataset has no column {text_field!r} (columns: {ds.column_names}); name the text "
                        "column with --text-field")
    return [Document(f"{path.name}[{i}]", str(t)) for i, t in enumerate(ds[text_field])]


def _folder_files(p: Path) -> tuple[list[Path], list[Path]]:
    """The documents of a folder (not a ``save_to_disk`` dataset), by one rule that drops no file silently: every
    file under it, hidden ones (a name starting with ".") and those in hidden folders aside, must be a text
    document (.txt, .md) or a dataset file (.parquet, .arrow), and all of one kind. Returns (text files, dataset
    files), sorted, one of them empty; anything else is a :class:`DataError` naming the files."""
    files = sorted(q for q in p.rglob("*") if q.is_file()
                   and not any(part.startswith(".") for part in q.relative_to(p).parts))
    text = [q for q in files if q.suffix in TEXT_SUFFIXES]
    data = [q for q in files if q.suffix in DATASET_SUFFIXES]
    other = [q for q in files if q.suffix not in TEXT_SUFFIXES + DATASET_SUFFIXES]

    def names(qs: list[Path]) -> str:
        return ", ".join(str(q.relative_to(p)) for q in qs[:3]) + (f" and {len(qs) - 3} more" if len(qs) > 3 else "")

    if other:
        raise DataError(f"{p}: {len(other)} file(s) that are neither documents (.txt, .md) nor dataset files "
                        f"(.parquet, .arrow): {names(other)}; move them out of the folder (or rename them with a "
                        "leading '.'), so that no file is skipped unseen")
    if text and data:
        raise DataError(f"{p} mixes {len(text)} text document(s) ({names(text)}) and {len(data)} dataset file(s) "
                        f"({names(data)}); one folder holds one kind: move one kind elsewhere")
    if not files:
        raise DataError(f"{p} holds no .txt or .md files and no datasets dataset: nothing to learn")
    return text, data


def load_documents(path: str | Path, text_field: str = "text") -> list[Document]:
    """Documents from ``path``: a ``.jsonl`` file (``text_field`` of every row), a directory of ``.txt`` / ``.md``
    files (one document each, sorted by path), or a `datasets` dataset (a ``save_to_disk`` directory, or
    ``.parquet`` / ``.arrow`` files: column ``text_field``). A folder's files follow :func:`_folder_files` (all of
    one kind, none skipped). Empty documents are refused, as is an input without any document."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist: give a .jsonl file, a directory of .txt/.md files or a datasets dataset")
    if p.is_file() and p.suffix == ".jsonl":
        docs = _from_jsonl(p, text_field)
    elif p.is_file() and p.suffix in DATASET_SUFFIXES:
        docs = _from_dataset(p, text_field)
    elif p.is_file() and p.suffix in TEXT_SUFFIXES:
        docs = [Document(p.name, _read_text(p))]
    elif p.is_file():
        raise DataError(f"{p}: unknown kind of file {p.suffix or '(no suffix)'}; give a .jsonl, .txt, .md, .parquet or "
                        ".arrow file, or a directory")
    elif (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
        docs = _from_dataset(p, text_field)
    else:
        text, data = _folder_files(p)
        docs = _from_dataset(p, text_field, data) if data else [Document(str(f.relative_to(p)), _read_text(f))
                                                                 for f in text]
    if not docs:
        raise DataError(f"{p} is empty: it holds no document")
    empty = [d.id for d in docs if not d.text.strip()]
    if empty:
        raise DataError(f"{p}: {len(empty)} empty document(s), e.g. {empty[:3]}; remove them")
    return docs


def token_windows(ids: list[int], window: int, overlap: int) -> list[tuple[list[int], int]]:
    """Split ``ids`` into windows of at most ``window`` tokens, each starting ``window - overlap`` tokens after the
    previous one. Returns ``(window ids, context)`` pairs: the first ``context`` tokens of a window repeat the
    previous window's end (context only; their loss was counted there), 0 for the first window."""
    if window < 2:
        raise ValueError(f"window={window} must be >= 2 tokens")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap} must be in [0, window={window})")
    if len(ids) <= window:
        return [(list(ids), 0)]
    out, start, stride = [], 0, window - overlap
    while True:
        out.append((list(ids[start : start + window]), 0 if start == 0 else overlap))
        if start + window >= len(ids):
            return out
        start += stride


def document_windows(tokenizer, texts: list[str], window: int, overlap: int, ids: list[str] | None = None) -> list:
    """Every window θ learns of ``texts`` (:func:`token_windows` of each text's tokens), as
    :class:`~taalm_dist.data.tokenize.TokenizedPair` documents whose repeated context tokens carry no loss
    (``loss_mask`` 0), in order; ``taalm learn`` and ``taalm twiki run`` learn these.

    Raises:
        DataError: a text of fewer than 2 tokens (named by ``ids[i]``, else its index).
    """
    from taalm_dist.data.tokenize import TokenizedPair

    out = []
    for i, text in enumerate(texts):
        tokens = list(tokenizer(text)["input_ids"])
        if len(tokens) < 2:
            raise DataError(f"document {ids[i] if ids else i} has {len(tokens)} token(s); at least 2 are needed to "
                            "learn from (remove it)")
        for w, context in token_windows(tokens, window, overlap):
            loss_mask = [0] * context + [1] * (len(w) - context) if context else None
            out.append(TokenizedPair(None, w, [0] * len(w), [], [], False, loss_mask))
    return out


@dataclass
class QuestionAnswer:
    """One evaluation row: ``question`` and the ``answer`` θ should continue it with; ``id`` is ``<file>:<line>``."""

    id: str
    question: str
    answer: str


def load_questions(path: str | Path) -> list[QuestionAnswer]:
    """``question`` / ``answer`` rows of a jsonl file (``--eval-qa``, ``--retain``); every problem names file:line."""
    p = Path(path)
    rows = []
    for n, row in _jsonl_objects(p, 'a jsonl file of {"question": ..., "answer": ...} rows'):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{p}:{n}: field {key!r} must be a non-empty string (the row has {sorted(row)})")
        rows.append(QuestionAnswer(f"{p.name}:{n}", row["question"], row["answer"]))
    if not rows:
        raise DataError(f"{p} is empty: it holds no question")
    return rows


def qa_text(qa: QuestionAnswer) -> tuple[str, tuple[int, int]]:
    """The teacher-forced text ``question answer`` and the answer's character span in it."""
    q = qa.question.rstrip()
    a = qa.answer.strip()
    text = f"{q} {a}"
    return text, (len(text) - len(a), len(text))
