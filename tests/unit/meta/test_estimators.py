"""The estimator registry: one signature for jvp / fd / fd1, a new estimator usable by registering it alone, and
the config's ``meta.method`` listing exactly the registered names."""

import typing

import pytest
import torch

from taalm_dist.config import MetaConfig
from taalm_dist.meta import METHODS, InnerStep, meta_gradient
from taalm_dist.meta.estimators import ESTIMATORS, Probe
from tiny_models import make_batches, tiny_theta


def _case():
    doc, w, task = make_batches(seed=0, doc_lengths=(7, 5), task_lengths=(5, 4))
    return tiny_theta("float64"), doc, w, task


def test_the_config_lists_exactly_the_registered_methods():
    assert typing.get_args(typing.get_type_hints(MetaConfig)["method"]) == METHODS
    assert METHODS == ("jvp", "fd", "fd1", "double_backward")
    with pytest.raises(ValueError, match=r"method='nope' is not one of \('jvp', 'fd', 'fd1', 'double_backward'\)"):
        ESTIMATORS.lookup("nope")


def test_a_new_estimator_registers_in_one_place_and_meta_gradient_uses_it():
    class Backward:  # u by reverse mode, one token at a time: slow, exact, a different route from jvp
        name, needs_functional, reuses_at_loss = "per_token_backward", True, False
        calls = 0

        def __call__(self, probe: Probe) -> torch.Tensor:
            Backward.calls += 1
            at = [t.detach().requires_grad_(True) for t in probe.at]
            loss = probe.view.loss_at(at, probe.batch)
            u = torch.zeros_like(loss)
            for b in range(loss.shape[0]):
                for j in range(loss.shape[1]):
                    g = torch.autograd.grad(loss[b, j], at, retain_graph=True, allow_unused=True,
                                            materialize_grads=True)
                    u[b, j] = sum((x * d.to(x.dtype)).sum() for x, d in zip(g, probe.direction))
            return u.detach()

    ESTIMATORS.register("per_token_backward", Backward())
    try:
        theta, doc, w, task = _case()
        kw = dict(inner=InnerStep("adamw", 1e-2), objective="task_nll")
        new = meta_gradient(theta, doc, w, task, method="per_token_backward", **kw).grad
        exact = meta_gradient(theta, doc, w, task, method="jvp", **kw).grad
        assert Backward.calls == 1
        torch.testing.assert_close(new, exact, rtol=1e-9, atol=1e-12)
        with pytest.raises(ValueError, match="registered already"):
            ESTIMATORS.register("per_token_backward", Backward())
    finally:
        del ESTIMATORS["per_token_backward"]


def test_every_shipped_estimator_takes_the_one_probe_and_agrees_with_jvp():
    theta, doc, w, task = _case()
    kw = dict(inner=InnerStep("sgd", 1e-2), objective="task_nll")
    exact = meta_gradient(theta, doc, w, task, method="jvp", **kw).grad
    for name in ("fd", "fd1"):
        got = meta_gradient(theta, doc, w, task, method=name, **kw).grad
        assert float((got - exact).abs().max() / exact.abs().max()) < 1e-5, name
