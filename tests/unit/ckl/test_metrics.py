import pytest
import torch

from taalm_dist.ckl.metrics import object_token_accuracy, summarise


def _logits_predicting(predictions: list[list[int]], V: int = 10) -> torch.Tensor:
    B, L = len(predictions), len(predictions[0])
    logits = torch.zeros(B, L, V)
    for b, row in enumerate(predictions):
        for i, tok in enumerate(row):
            logits[b, i, tok] = 5.0
    return logits


def test_two_token_object_with_one_right_scores_half():
    ids = torch.tensor([[1, 2, 3, 7, 8]])  # object = tokens 7 8 (positions 3, 4)
    label = torch.tensor([[0, 0, 0, 1, 1]])
    # position 2 predicts 7 (right), position 3 predicts 9 instead of 8 (wrong)
    logits = _logits_predicting([[2, 3, 7, 9, 0]])
    acc = object_token_accuracy(logits, ids, torch.ones_like(ids), label)
    assert acc.tolist() == [0.5]


def test_padding_and_missing_object():
    ids = torch.tensor([[1, 2, 7, 0, 0], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    label = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])  # label on padding must not count
    logits = _logits_predicting([[2, 7, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert object_token_accuracy(logits, ids, mask, label).tolist() == [1.0, 0.0]


def test_summary_from_a_known_series():
    tl = {0: 0.05, 1: 0.10, 2: 0.30, 3: 0.30, 4: 0.20}
    nf = {0: 0.95, 1: 0.93, 2: 0.90, 3: 0.85, 4: 0.80}
    s = summarise(tl, nf)
    assert (s.top_acc, s.epoch, s.nf_acc) == (0.30, 2, 0.90)
    assert s.total_knowledge == pytest.approx(1.20)
    with pytest.raises(ValueError, match="no trained epoch"):
        summarise({0: 0.1}, {0: 0.9})
