"""RecAdam's numbers on hand-made inputs (the methods as objects: tests/unit/programs/test_methods.py; the weight
rules: tests/unit/test_weight_rules.py)."""

import pytest
import torch

from taalm_dist.ckl.methods import quadratic_pull, recadam_lambda


def test_recadam_pull_fades_to_zero_as_the_schedule_ends():
    assert recadam_lambda(0, k=0.5, t0=50) < 1e-10
    assert recadam_lambda(50, k=0.5, t0=50) == pytest.approx(0.5)
    assert 1 - recadam_lambda(200, k=0.5, t0=50) < 1e-30
    p = [torch.tensor([1.0, 2.0])]
    assert quadratic_pull(p, [torch.tensor([0.0, 0.0])]).item() == 5.0
