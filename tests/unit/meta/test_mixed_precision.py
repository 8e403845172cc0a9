"""Mixed precision: a bfloat16 frozen base with float32 trainable tensors, and a meta-gradient as good as float32's."""

import pytest
import torch

from taalm_dist.config import LoraConfig, LossConfig, ModelSourceConfig, PhiConfig, TinyModelConfig, load_config
from taalm_dist.errors import ConfigError
from taalm_dist.losses.lm_head import per_token_loss_fn
from taalm_dist.meta import InnerStep, meta_gradient
from taalm_dist.models import build_phi
from taalm_dist.models.precision import float32_compute
from tiny_models import make_batches, tiny_theta


def _cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _dtypes(model, trainable: bool) -> set:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


def test_trainable_tensors_stay_float32_on_a_bfloat16_base():
    lora = tiny_theta("bfloat16")
    assert _dtypes(lora, True) == {torch.float32} and _dtypes(lora, False) == {torch.bfloat16}
    assert _dtypes(tiny_theta("bfloat16", trainable="full"), True) == {torch.float32}
    spec = ModelSourceConfig(dtype="bfloat16", tiny=TinyModelConfig(hidden_size=32, intermediate_size=64))
    phi = build_phi(PhiConfig(model=spec, lora=LoraConfig(rank=4, target_modules=["q_proj"])))
    assert phi.head.weight.dtype == torch.float32 and _dtypes(phi, True) == {torch.float32}
    assert _dtypes(phi.backbone, False) == {torch.bfloat16}
    doc, _, _ = make_batches()
    w = phi(doc["input_ids"], doc["attention_mask"])
    assert w.dtype == torch.float32 and (w[doc["attention_mask"] == 0] == 0).all()


@pytest.mark.parametrize("loss", ["eager", "chunked"])
@pytest.mark.parametrize("inner, lr", [("sgd", 0.5), ("sgd", 1e-2), ("adamw", 1e-2), ("adamw", 1e-3)])
def test_fd_meta_gradient_with_a_bfloat16_base_matches_float32(inner, lr, loss):
    """The all-float32 answer is θ in float32 with the same (bfloat16-valued) base weights, by forward-mode AD."""
    doc, w, task = make_batches(doc_lengths=(30, 24), task_lengths=(8, 7), dtype=torch.float32)
    mixed = tiny_theta("bfloat16")
    reference = tiny_theta("float32")
    reference.load_state_dict({k: v.float() for k, v in mixed.state_dict().items()})
    step = InnerStep(inner, lr)
    want = meta_gradient(reference, doc, w, task, inner=step, objective="task_nll", method="jvp").grad
    fn = per_token_loss_fn(LossConfig(impl=loss))
    got = meta_gradient(mixed, doc, w, task, inner=step, objective="task_nll", method="fd", per_token_loss=fn).grad
    assert want.abs().max() > 0 and _cosine(got, want) >= 0.99
    if inner == "sgd":  # upcasting only the difference's two forwards is enough for SGD
        fd_only = meta_gradient(mixed, doc, w, task, inner=step, objective="task_nll", method="fd", per_token_loss=fn,
                                compute_float32=False)
        assert _cosine(fd_only.grad, want) >= 0.99


def test_float32_compute_upcasts_low_precision_layers_only_and_nests():
    mixed = tiny_theta("bfloat16")
    doc, _, _ = make_batches()
    with float32_compute(mixed) as patched:
        assert patched > 0
        with float32_compute(mixed) as again:
            assert again == 0
        logits = mixed(**doc).logits
    assert logits.dtype == torch.float32
    assert mixed(**doc).logits.dtype == torch.bfloat16  # restored
    with float32_compute(tiny_theta("float32")) as patched:
        assert patched == 0


def test_the_fused_loss_keeps_the_float32_head_it_finds():
    """The chunked loss swaps the LM head's forward for its call: it must put float32_compute's back, not drop it."""
    mixed = tiny_theta("bfloat16")
    doc, _, _ = make_batches()
    fn = per_token_loss_fn(LossConfig(impl="chunked"))
    with float32_compute(mixed):
        first = fn(mixed, doc)
        assert "forward" in mixed.lm_head.__dict__ and mixed(**doc).logits.dtype == torch.float32
        torch.testing.assert_close(fn(mixed, doc), first)
    assert "forward" not in mixed.lm_head.__dict__


def test_the_retired_precision_key_names_its_replacement():
    with pytest.raises(ConfigError, match="engine.precision' was removed: .*theta.model.dtype"):
        load_config(None, ["engine.precision=bf16"])


def test_a_frozen_low_precision_linear_computes_in_float32_without_keeping_a_float32_weight():
    """float32_compute's linear: the output, input gradient, double backward and forward-mode tangent of
    F.linear(x, W.float()) in float64-checked float32, with only the bf16 W itself saved for the backward."""
    from taalm_dist.models.precision import _float32_linear

    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(48, 40, bias=True).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(3, 7, 48, generator=g, requires_grad=True)
    ref_w, ref_b = layer.weight.double(), layer.bias.double()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
        y = _float32_linear(layer, x)
    assert y.dtype == torch.float32
    assert (torch.float32, layer.weight.numel()) not in saved and (torch.bfloat16, layer.weight.numel()) in saved
    want = torch.nn.functional.linear(x.double(), ref_w, ref_b)
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)
    v = torch.randn(y.shape, generator=g, requires_grad=True)
    (gx,) = torch.autograd.grad(y, x, v, create_graph=True)
    torch.testing.assert_close(gx.double(), v.double() @ ref_w, rtol=1e-6, atol=1e-6)
    (ggv,) = torch.autograd.grad((gx * x).sum(), v)  # through the backward itself: x @ Wᵀ
    torch.testing.assert_close(ggv.double(), x.detach().double() @ ref_w.T, rtol=1e-6, atol=1e-6)
    t = torch.randn(x.shape, generator=g)
    _, tangent = torch.func.jvp(lambda a: _float32_linear(layer, a), (x.detach(),), (t,))
    torch.testing.assert_close(tangent.double(), t.double() @ ref_w.T, rtol=1e-6, atol=1e-6)
    layer.weight.requires_grad_(True)  # a trainable low-precision weight gets its gradient the plain way
    y = _float32_linear(layer, x)
    y.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16
