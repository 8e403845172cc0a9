"""K-Adapter bottleneck adapters."""

import torch

from taalm_dist.models.kadapter import add_kadapters
from tiny_models import tiny_theta


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
