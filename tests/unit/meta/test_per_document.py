"""Per-document inner steps batched in one pass equal the documents' meta-gradients taken one at a time."""

import pytest
import torch

from taalm_dist.meta import InnerStep, meta_gradient
from taalm_dist.meta.functional import ThetaView
from taalm_dist.meta.per_document import PerDocumentLinear, per_document_lora
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
