import pytest
import torch

from taalm_dist.data import Pair, collate, tokenize_pair, toy_rows
from taalm_dist.data.lama_ckl import parse_row
from taalm_dist.errors import DataError
from taalm_dist.models.toy_tokenizer import toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def _pair(row=None):
    return parse_row(row or toy_rows(1, seed=0)[0], "f.jsonl:1", "task_descriptive")


def test_label_mask_marks_exactly_the_object_tokens(tok):
    item = tokenize_pair(tok, _pair(), 512, 64, "truncate")
    obj_id = tok.convert_tokens_to_ids(item.pair.object)
    assert item.label_mask == [int(i == obj_id) for i in item.task_ids]
    assert item.label_mask[-1] == 1
    assert [i for i, m in zip(item.doc_ids, item.doc_object_mask) if m] == [obj_id]


def test_long_documents_are_truncated_and_flagged_or_refused(tok):
    pair = _pair()
    item = tokenize_pair(tok, pair, 10, 64, "truncate")
    assert item.truncated and len(item.doc_ids) == 10
    with pytest.raises(DataError, match="data.max_doc_tokens=10"):
        tokenize_pair(tok, pair, 10, 64, "error")


def test_empty_document_and_long_task_are_refused(tok):
    empty = Pair("u", "PUNA", "the code of Kufa is PUNA", "PUNA", "f.jsonl:7")
    with pytest.raises(DataError, match="f.jsonl:7: document has 1 token"):
        tokenize_pair(tok, empty, 512, 64, "truncate")
    with pytest.raises(DataError, match="data.max_task_tokens=3"):
        tokenize_pair(tok, _pair(), 512, 3, "truncate")


def test_collate_right_pads(tok):
    rows = toy_rows(2, seed=1, filler_words=3)
    rows[1]["evidence"] += " noba noba noba"
    items = [tokenize_pair(tok, _pair(r), 512, 64, "truncate") for r in rows]
    doc, task = collate(items, tok.pad_token_id)
    assert doc["input_ids"].shape[0] == 2 and doc["attention_mask"].sum(1).tolist() == [len(i.doc_ids) for i in items]
    assert torch.equal(task["label_mask"].sum(1), torch.tensor([1, 1]))
    assert (doc["input_ids"][0, len(items[0].doc_ids):] == tok.pad_token_id).all()


def test_the_document_object_mask_marks_whole_words_only():
    # Robustness issue: object "Mu" in "Mufa ..." labelled Mufa's tokens as the object's.
    class Chars:  # one token per character, with offsets: shows exactly which characters are marked
        def __call__(self, text, return_offsets_mapping=True):
            return {"input_ids": [ord(c) for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}

    doc = "Mufa met Mu. (Mu)"
    item = tokenize_pair(Chars(), Pair("u", doc, "It was Mu", "Mu", "f.jsonl:1"), 512, 64, "truncate")
    marked = "".join(c if m else "_" for c, m in zip(doc, item.doc_object_mask))
    assert marked == "_________Mu___Mu_"
