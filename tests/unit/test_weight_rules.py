"""The token-weight rules on hand-made inputs."""

import math

import torch

from taalm_dist.weight_rules import Rho1Weights, oracle_weights, top_fraction_mask, uniform_weights
from tiny_models import tiny_theta


def _doc():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    obj = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": mask, "object_mask": obj}


def test_finetune_is_uniform_and_oracle_is_exactly_the_object():
    doc = _doc()
    assert torch.equal(uniform_weights(doc), doc["attention_mask"].float())
    assert torch.equal(oracle_weights(doc), doc["object_mask"].float())


def test_rho1_keeps_the_configured_fraction_of_highest_excess_loss():
    scores = torch.tensor([[0.1, 5.0, 0.3, 4.0, 0.2, 3.0], [9.0, 1.0, 2.0, 3.0, 100.0, 100.0]])
    valid = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]]).bool()
    m = top_fraction_mask(scores, valid, 0.6)
    assert m[0].tolist() == [0, 1, 0, 1, 0, 1]  # ceil(0.6 * 5) = 3 highest valid
    assert m[1].tolist() == [0, 0, 1, 1, 0, 0]  # ceil(0.6 * 3) = 2; padding and column 0 never kept
    theta = tiny_theta("float32")
    w = Rho1Weights(theta, keep=0.5)(_doc())
    assert w[0].sum().item() == math.ceil(0.5 * 5) and w[1].sum().item() == math.ceil(0.5 * 3)


def test_mix_uniform_gives_the_share_of_each_documents_loss_to_uniform_whatever_phis_scale():
    from taalm_dist.losses.token_weighted_ce import next_token_valid_mask, token_weighted_mean
    from taalm_dist.weight_rules import applied_phi_weights, mix_uniform

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    valid = next_token_valid_mask(mask)
    w = torch.rand(2, 6, generator=g, dtype=torch.float64) * mask
    w[1] *= 1e-5  # a document φ barely weights: its shape counts, not its scale
    nll = torch.rand(2, 6, generator=g, dtype=torch.float64) * valid
    assert mix_uniform(w, mask, 0.0) is w
    torch.testing.assert_close(mix_uniform(w, mask, 1.0), mask.double(), rtol=0, atol=0)  # fine-tuning's weights
    for share in (0.25, 0.5, 0.9):
        mixed = mix_uniform(w, mask, share)
        torch.testing.assert_close(mix_uniform(w * 1e3, mask, share), mixed)  # scale-free
        torch.testing.assert_close((mixed * valid).sum(1), valid.sum(1).double())  # mean weight 1
        assert (mixed[mask == 0] == 0).all() and (mixed[:, 0] == share).all()
        for b in range(2):  # each document's loss: share × its uniform-weight mean NLL + the rest × φ's weighted mean
            mean = lambda x: (x[b] * valid[b] * nll[b]).sum() / (x[b] * valid[b]).sum()
            got = token_weighted_mean(nll[b : b + 1], mixed[b : b + 1], valid[b : b + 1])
            torch.testing.assert_close(got, share * mean(mask.double()) + (1 - share) * mean(w), rtol=1e-6, atol=0)
    torch.testing.assert_close(applied_phi_weights(w, mask, 0.5, 0.5), mix_uniform(w.clamp_min(0.5) * mask, mask, 0.5))
    assert applied_phi_weights(w, mask) is w
