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


def test_object_token_nll_is_the_mean_negative_log_likelihood_of_the_marked_tokens_in_float64():
    from taalm_dist.losses.accuracy import object_token_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 10, generator=g)
    ids = torch.tensor([[1, 2, 3, 7, 8], [4, 5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    label = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])  # the second row's label on padding must not count
    logp = torch.log_softmax(logits.double(), -1)
    want = [-(logp[0, 2, 7] + logp[0, 3, 8]) / 2, -logp[1, 1, 6]]
    out = object_token_nll(logits, ids, mask, label)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.stack(want))
    assert object_token_nll(logits, ids, mask, torch.zeros_like(label)).isnan().all()  # nothing marked: no score
