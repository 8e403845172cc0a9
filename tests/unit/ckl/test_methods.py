"""Each LAMA-CKL method's weights or mechanism on hand-made inputs."""

import math

import pytest
import torch

from taalm_dist.ckl.methods import (Rho1Weights, add_kadapters, base_rule, mechanism, oracle_weights, quadratic_pull,
                                    recadam_lambda, top_fraction_mask, uniform_weights)
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


def test_recadam_pull_fades_to_zero_as_the_schedule_ends():
    assert recadam_lambda(0, k=0.5, t0=50) < 1e-10
    assert recadam_lambda(50, k=0.5, t0=50) == pytest.approx(0.5)
    assert 1 - recadam_lambda(200, k=0.5, t0=50) < 1e-30
    p = [torch.tensor([1.0, 2.0])]
    assert quadratic_pull(p, [torch.tensor([0.0, 0.0])]).item() == 5.0


def test_kadapter_trains_only_adapter_parameters_and_starts_as_identity():
    theta = tiny_theta("float32", trainable="full")
    ids = torch.tensor([[5, 6, 7, 8]])
    before = theta(input_ids=ids).logits
    adapters = add_kadapters(theta, size=8)
    trainable = {n for n, p in theta.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("kadapters.") for n in trainable)
    assert len(adapters) == 2
    assert torch.allclose(theta(input_ids=ids).logits, before)
    theta(input_ids=ids).logits.sum().backward()
    assert adapters[0].up.weight.grad.abs().sum() > 0


def test_method_names_split_into_rule_and_mechanism():
    assert (base_rule("taalm+recadam"), mechanism("taalm+recadam")) == ("taalm", "recadam")
    assert (base_rule("oracle"), mechanism("oracle")) == ("oracle", None)
    assert (base_rule("mix_review"), mechanism("mix_review")) == ("mix_review", "mix_review")
