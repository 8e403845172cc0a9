"""Teacher-forced object-token accuracy on hand-made logits."""

import torch

from taalm_dist.losses.accuracy import object_token_accuracy


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
