import pytest
import torch

from taalm_dist.losses import WEIGHT_SUM_EPS, next_token_valid_mask, per_token_nll, token_weighted_ce


def _case(B=4, L=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    for b, n in enumerate([7, 5, 2, 1][:B]):
        mask[b, n:] = 0
    w = torch.rand(B, L, generator=g, dtype=torch.float64)
    return logits, ids, w, mask


def test_per_token_matches_hand_computation():
    logits, ids, w, mask = _case()
    out = per_token_nll(logits, ids, mask)
    b, i = 1, 3
    expected = -torch.log_softmax(logits[b, i - 1], -1)[ids[b, i]]
    assert torch.allclose(out[b, i], expected)
    assert (out[:, 0] == 0).all()
    assert (out[1, 5:] == 0).all() and (out[3] == 0).all()


def test_loss_is_weighted_mean_per_sequence_then_mean_over_sequences():
    logits, ids, w, mask = _case()
    res = token_weighted_ce(logits, ids, w, mask)
    valid = next_token_valid_mask(mask)
    manual = []
    for b in range(4):
        wb = w[b] * valid[b]
        manual.append((wb * res.per_token[b]).sum() / (wb.sum() + WEIGHT_SUM_EPS))
    assert torch.allclose(res.loss, torch.stack(manual).mean())


def test_batch_of_four_equals_four_single_calls_averaged():
    logits, ids, w, mask = _case()
    batch = token_weighted_ce(logits, ids, w, mask).loss
    singles = [token_weighted_ce(logits[b : b + 1], ids[b : b + 1], w[b : b + 1], mask[b : b + 1]).loss for b in range(4)]
    assert torch.allclose(batch, torch.stack(singles).mean(), rtol=1e-12)


def test_all_zero_weights_give_zero_loss_and_zero_gradient():
    logits, ids, _, mask = _case()
    logits.requires_grad_(True)
    w = torch.zeros(4, 7, dtype=torch.float64, requires_grad=True)
    res = token_weighted_ce(logits, ids, w, mask)
    res.loss.backward()
    assert res.loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
    assert torch.isfinite(w.grad).all()


def test_empty_and_single_token_sequences_are_finite():
    logits, ids, w, mask = _case()
    mask[2:] = 0  # sequence 2 fully padded, sequence 3 too
    res = token_weighted_ce(logits, ids, w, mask)
    assert torch.isfinite(res.loss)
    res1 = token_weighted_ce(logits[:, :1], ids[:, :1], w[:, :1], mask[:, :1])
    assert res1.loss.item() == 0.0


def test_weights_on_padding_are_ignored():
    logits, ids, w, mask = _case()
    w2 = w.clone()
    w2[mask == 0] = 123.0
    w2[:, 0] = 55.0  # column 0 predicts nothing
    assert torch.allclose(token_weighted_ce(logits, ids, w, mask).loss, token_weighted_ce(logits, ids, w2, mask).loss)


def test_fp32_logits_accumulate_in_fp32_and_bf16_is_upcast():
    logits, ids, w, mask = _case()
    ref = token_weighted_ce(logits, ids, w, mask).loss
    lo = token_weighted_ce(logits.to(torch.bfloat16), ids, w.float(), mask).loss
    assert lo.dtype == torch.float32
    assert abs(lo.item() - ref.item()) / ref.item() < 2e-2


def test_gradcheck_float64():
    logits, ids, w, mask = _case(B=3, L=5, V=6)
    logits.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda lg, ww: token_weighted_ce(lg, ids, ww, mask[:3, :5]).loss, (logits, w))


def test_shape_mismatch_is_a_clear_error():
    logits, ids, w, mask = _case()
    with pytest.raises(ValueError, match="weights has shape"):
        token_weighted_ce(logits, ids, w[:, :3], mask)
