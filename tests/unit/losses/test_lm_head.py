"""loss.impl wiring: θ's per-token losses through the fused head equal the eager spec (values, gradients,
the meta-gradient), and what the fused path cannot do is refused by name."""

import pytest
import torch

from taalm_dist.config import ConfigError, build, TaalmConfig
from taalm_dist.losses import eager_per_token_nll
from taalm_dist.losses.lm_head import fused_per_token_nll, output_head, per_token_loss_fn, resolve_impl
from taalm_dist.meta import hypergradient
from tiny_models import make_batches, tiny_theta


def _grads(model, fn, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    per_token = fn(model, batch)
    weights = torch.rand(per_token.shape, generator=torch.Generator().manual_seed(0), dtype=per_token.dtype)
    return per_token.detach(), torch.autograd.grad((per_token * weights).sum(), params)


@pytest.mark.parametrize("trainable", ["lora", "full"])
@pytest.mark.parametrize("chunk", [3, None])
def test_fused_head_matches_eager_values_and_gradients_in_float64(trainable, chunk):
    model = tiny_theta("float64", trainable=trainable)
    doc, _, _ = make_batches()
    ref_loss, ref_grads = _grads(model, eager_per_token_nll, doc)
    loss, grads = _grads(model, fused_per_token_nll("chunked", chunk), doc)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert type(model.get_output_embeddings().forward).__name__ == "method"  # the head is restored


def test_fd_meta_gradient_with_fused_head_matches_eager():
    model = tiny_theta("float64")
    doc, weights, task = make_batches()
    kw = dict(inner="sgd", lr=0.5, objective="task_nll", method="fd")
    ref = hypergradient(model, doc, weights, task, **kw)
    fused = hypergradient(model, doc, weights, task, per_token_loss=fused_per_token_nll("chunked", 4), **kw)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-10)


def test_head_with_adapters_is_refused_and_jvp_keeps_eager():
    from taalm_dist.config import LoraConfig
    from taalm_dist.models import make_trainable
    from taalm_dist.models.loading import load_causal_lm
    from taalm_dist.config import ModelSourceConfig

    model = make_trainable(load_causal_lm(ModelSourceConfig(source="tiny")), "lora",
                           LoraConfig(rank=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ConfigError, match="bias-free torch.nn.Linear"):
        output_head(model)
    assert resolve_impl("auto", "jvp") == "eager" and resolve_impl("auto", "double_backward") == "eager"
    assert resolve_impl("auto", "fd") == "auto"  # the fused loss chooses per call, by the tensors' device
    assert per_token_loss_fn(build(TaalmConfig, {"loss": {"impl": "eager"}}).loss) is eager_per_token_nll
    with pytest.raises(ConfigError, match="loss.impl=chunked is differentiable once"):
        build(TaalmConfig, {"loss": {"impl": "chunked"}, "meta": {"method": "jvp"},
                            "theta": {"model": {"attn_implementation": "taalm_eager"}}})


def test_auto_chooses_by_the_tensors_device_not_the_machine(monkeypatch):
    """On a CUDA machine, CPU tensors must not reach the Triton kernel (auto used to decide by the machine)."""
    from taalm_dist.losses import fused_ce
    from tiny_models import make_batches, tiny_theta

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fused_ce, "triton_available", lambda: True)
    theta = tiny_theta("float32")
    doc, _, _ = make_batches()
    got = per_token_loss_fn(build(TaalmConfig, {"loss": {"impl": "auto"}}).loss)(theta, doc)
    torch.testing.assert_close(got, eager_per_token_nll(theta, doc), rtol=1e-5, atol=1e-5)
