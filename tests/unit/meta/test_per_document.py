"""Per-document inner steps batched in one pass equal the documents' meta-gradients taken one at a time."""

import pytest
import torch

from taalm_dist.meta import InnerStep, meta_gradient
from taalm_dist.meta.functional import ThetaView
from taalm_dist.meta.per_document import PerDocumentLinear, batched_lora_forward, per_document_lora
from tiny_models import make_batches, tiny_theta

LR = {"sgd": 0.5, "adamw": 1e-2}


def _row(batch: dict, b: int) -> dict:
    """Document b alone, its padding cut off (as a sequential run would see it)."""
    n = int(batch["attention_mask"][b].sum())
    return {k: v[b : b + 1, :n] for k, v in batch.items()}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("inner", ["sgd", "adamw"])
@pytest.mark.parametrize("method", ["jvp", "fd", "fd1"])
def test_batched_per_document_equals_one_document_at_a_time_float64(inner, method):
    torch.manual_seed(0)  # the LoRA A factors' initialisation
    theta = tiny_theta("float64")
    doc, w, task = make_batches(seed=5, doc_lengths=(9, 6, 8), task_lengths=(6, 5, 4))
    restrict, _, _ = make_batches(seed=6, doc_lengths=(5, 7, 6), task_lengths=(3, 3, 3))
    kw = dict(inner=InnerStep(inner, LR[inner]), objective="task_nll", method=method, restrict_coef=0.3)
    view = ThetaView(theta)
    before = view.snapshot()
    rows, objectives = [], []
    for b in range(3):
        one = meta_gradient(view, _row(doc, b), w[b : b + 1, : int(doc["attention_mask"][b].sum())], _row(task, b),
                            restrict_batch=_row(restrict, b), **kw)
        rows.append(one.grad[0])
        objectives.append(float(one.objective))
    with per_document_lora(view, 3) as per_doc:
        batched = meta_gradient(per_doc, doc, w, task, restrict_batch=restrict, **kw)
    for b, want in enumerate(rows):
        got = batched.grad[b, : want.shape[0]]
        assert want.abs().max() > 0
        # jvp: exact; the difference quotients divide the last-bit differences of a batched vs a single pass by
        # their step (1e-5 for fd, 1e-7 for fd1 in float64): measured up to 6e-8 (fd) and 6e-6 (fd1) over draws
        assert _rel(got, want) <= {"jvp": 1e-8, "fd": 2e-7, "fd1": 2e-5}[method], (b, _rel(got, want))
        assert (batched.grad[b, want.shape[0]:] == 0).all()  # padding
    assert float(batched.objective) == pytest.approx(sum(objectives) / 3, rel=1e-10)
    # θ and its modules are exactly as before
    assert not any(isinstance(m, PerDocumentLinear) for m in theta.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, ThetaView(theta).params))


def test_full_parameter_theta_is_refused():
    view = ThetaView(tiny_theta("float64", trainable="full"))
    with pytest.raises(ValueError, match="theta.trainable=lora"):
        with per_document_lora(view, 2):
            pass
    assert not any(isinstance(m, PerDocumentLinear) for m in view.model.modules())


def _lora_layers(model):
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_lora_forward_equals_peft_and_is_removed_after(dtype):
    """Inside per_document_lora every peft LoRA layer computes base + scaling·(x A_bᵀ) B_bᵀ in one baddbmm; its
    output (and gradients) equal peft's own forward on the same per-document factors, for a float32 base and for a
    bfloat16 base with float32 adapters; afterwards the layers have no forward of their own."""
    torch.manual_seed(0)
    theta = tiny_theta(dtype)
    layers = _lora_layers(theta)
    assert layers
    view = ThetaView(theta)
    with per_document_lora(view, 3):
        for layer in layers:
            assert layer.forward.__func__ is batched_lora_forward
            with torch.no_grad():  # distinct copies, so that a document reading another's copy shows
                for f in (layer.lora_A["default"], layer.lora_B["default"]):
                    f.weight.add_(torch.randn_like(f.weight) * 0.1)
            x = torch.randn(3, 5, layer.in_features, dtype=getattr(torch, dtype), requires_grad=True)
            factors = [x, layer.lora_A["default"].weight, layer.lora_B["default"].weight]
            fused = layer(x)
            gx_fused, *g_fused = torch.autograd.grad(fused.float().square().sum(), factors)
            peft = type(layer).forward(layer, x)
            gx_peft, *g_peft = torch.autograd.grad(peft.float().square().sum(), factors)
            assert fused.dtype == peft.dtype == x.dtype
            # float32: the same sum up to its last bits; bfloat16: both round the float32 sum to bfloat16
            tol = 1e-5 if dtype == "float32" else 1e-2
            for got, want in ((fused, peft), (gx_fused, gx_peft), *zip(g_fused, g_peft)):
                assert _rel(got.float(), want.float()) <= tol
                assert want.abs().max() > 0
        with pytest.raises(ValueError, match="holds 3 documents' adapters, but the batch has 2 rows"):
            layers[0](torch.randn(2, 5, layers[0].in_features, dtype=getattr(torch, dtype)))
    assert all("forward" not in vars(layer) for layer in layers)


def test_fused_lora_forward_leaves_a_disabled_adapter_to_peft():
    """Adapters disabled (peft's disable_adapter context): the base layer alone, exactly as peft computes it."""
    torch.manual_seed(0)
    theta = tiny_theta("float64")
    layer = _lora_layers(theta)[0]
    with per_document_lora(ThetaView(theta), 2):
        x = torch.randn(2, 4, layer.in_features, dtype=torch.float64)
        with theta.disable_adapter():
            assert torch.equal(layer(x), layer.base_layer(x))
        assert not torch.equal(layer(x), layer.base_layer(x))
