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
