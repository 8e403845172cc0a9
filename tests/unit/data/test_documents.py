"""A user's documents in every format, windows, and the errors bad input gets."""

import json

import pytest

from taalm_dist.data.documents import load_documents, token_windows
from taalm_dist.errors import DataError

TEXTS = ["Mira Olsen was born in Tallinn.", "The Vantor bridge crosses the river Ilm."]


def test_the_three_formats_give_the_same_documents(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(TEXTS)) + "\n")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(TEXTS[0])
    (folder / "sub" / "b.md").write_text(TEXTS[1])
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are not documents
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: main")
    import datasets

    datasets.Dataset.from_dict({"body": TEXTS}).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict({"body": TEXTS}).to_parquet(str(tmp_path / "docs.parquet"))
    for path, field in ((jsonl, "body"), (folder, "text"), (tmp_path / "saved", "body"), (tmp_path / "docs.parquet", "body")):
        assert [d.text for d in load_documents(path, field)] == TEXTS, path
    assert [d.id for d in load_documents(folder)] == ["a.txt", "sub/b.md"]


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "x.jsonl").write_text(""), "is empty: it holds no document"),
    (lambda p: (p / "x.jsonl").write_bytes(b"{\"text\": \"a\"}\n\x00\x01\x02"), "looks binary"),
    (lambda p: (p / "x.jsonl").write_bytes(b"{\"text\": \"caf\xe9\"}\n"), "is not UTF-8 text"),
    (lambda p: (p / "x.jsonl").write_text('{"body": "a"}\n'), r"x.jsonl:1: no field 'text' \(the row has \['body'\]\)"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "a"}\n{"text": \n'), "x.jsonl:2: not valid JSON"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "  "}\n'), "1 empty document"),
    (lambda p: (p / "x.csv").write_text("a,b"), "unknown kind of file .csv"),
])
def test_bad_input_is_named(tmp_path, make, message):
    make(tmp_path)
    target = next(p for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=message):
        load_documents(target)


def test_a_directory_without_text_files_and_a_missing_path(tmp_path):
    with pytest.raises(DataError, match="holds no .txt or .md files and no datasets dataset"):
        load_documents(tmp_path)
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError, match=r"1 file\(s\) that are neither documents .* notes.pdf; move them out"):
        load_documents(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_documents(tmp_path / "nope.jsonl")


def test_windows_cover_every_token_once_outside_their_context():
    ids = list(range(23))
    windows = token_windows(ids, window=8, overlap=3)
    assert all(len(w) <= 8 for w, _ in windows) and windows[0][1] == 0
    learned = [t for w, ctx in windows for t in w[ctx:]]
    assert learned == ids  # every token's loss counts exactly once (the context repeats the previous window's end)
    assert token_windows([1, 2, 3], 8, 3) == [([1, 2, 3], 0)]
    with pytest.raises(ValueError, match="overlap=8 must be in"):
        token_windows(ids, 8, 8)


def test_jsonl_documents_with_a_byte_order_mark_and_a_line_that_is_not_utf8(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps({"text": t}) for t in TEXTS).encode() + b"\n")
    assert [d.text for d in load_documents(p)] == TEXTS
    p.write_bytes(json.dumps({"text": TEXTS[0]}).encode() + b'\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"docs.jsonl:2: the line is not UTF-8 text"):
        load_documents(p)


def test_a_directory_for_a_question_file_is_called_a_directory(tmp_path):
    from taalm_dist.data.documents import load_questions

    with pytest.raises(DataError) as e:
        load_questions(tmp_path)
    assert f"{tmp_path} is a directory, not a file: give a jsonl file of" in str(e.value)
    (tmp_path / "qa.jsonl").write_bytes(b'\xef\xbb\xbf{"question": "Who?", "answer": "Mira"}\n')
    assert [q.answer for q in load_questions(tmp_path / "qa.jsonl")] == ["Mira"]


def test_a_stray_dataset_file_among_text_documents_is_refused_not_read_alone(tmp_path):
    # before (second probe): one .parquet anywhere under a folder of .txt documents made `learn` and `weigh` read only
    # that file ("learned 1 documents", exit 0), dropping every text document
    import datasets

    for i, t in enumerate(TEXTS):
        (tmp_path / f"{i}.txt").write_text(t)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    datasets.Dataset.from_dict({"text": ["stray"]}).to_parquet(str(tmp_path / "deep" / "er" / "cache.parquet"))
    with pytest.raises(DataError, match=r"mixes 2 text document\(s\) \(0.txt, 1.txt\) and 1 dataset file\(s\) "
                                        r"\(deep/er/cache.parquet\)"):
        load_documents(tmp_path)
    (tmp_path / "deep" / "er" / "cache.parquet").unlink()
    assert [d.text for d in load_documents(tmp_path)] == TEXTS


def test_a_folder_of_dataset_files_is_read_as_one_dataset_hidden_files_aside(tmp_path):
    import datasets

    (tmp_path / "part").mkdir()
    datasets.Dataset.from_dict({"text": TEXTS[:1]}).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_dict({"text": TEXTS[1:]}).to_parquet(str(tmp_path / "part" / "b.parquet"))
    (tmp_path / ".cache").mkdir()
    datasets.Dataset.from_dict({"text": ["hidden"]}).to_parquet(str(tmp_path / ".cache" / "c.parquet"))
    assert [d.text for d in load_documents(tmp_path)] == TEXTS
