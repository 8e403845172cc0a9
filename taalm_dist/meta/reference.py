"""The reference meta-gradient: differentiate through the inner step (double backward).

This is what the official TAALM code does (``create_graph=True``). It needs an attention that supports
double backward (``attn_implementation: taalm_eager``), keeps the graph of the inner backward, and cannot
run on sharded parameters. It stays as the test oracle and the benchmark baseline.
"""

from __future__ import annotations

import torch

from taalm_dist.losses import next_token_valid_mask, token_weighted_mean
from taalm_dist.meta.functional import ThetaView, eval_mode
from taalm_dist.meta.inner import InnerStep, adam_direction, adam_moments
from taalm_dist.meta.objectives import NEEDS_BEFORE, objective_value, restrict_value


def _inner_update(view, leaves, doc_batch, w, valid, inner: InnerStep, state):
    """θ' as a differentiable function of w (graph through the inner gradient)."""
    tw = token_weighted_mean(view.loss_at(leaves, doc_batch), w, valid)
    g = torch.autograd.grad(tw, leaves, create_graph=True, allow_unused=True, materialize_grads=True)
    if inner.kind == "sgd":
        return [p - inner.lr * gi for p, gi in zip(leaves, g)]
    new = []
    for p, gi, m_prev, v_prev in zip(leaves, g, state[0], state[1]):
        m, v = adam_moments(gi.to(m_prev.dtype), m_prev, v_prev, inner.betas)
        direction = adam_direction(m, v, 2, inner.betas, inner.eps)
        new.append(p * (1 - inner.lr * inner.weight_decay) - inner.lr * direction.to(p.dtype))
    return new


def _dummy_adamw(view, theta0, doc_batch, w, valid, inner: InnerStep):
    """The non-differentiated first AdamW step: (θ₁, (m₁, v₁))."""
    leaves = [t.clone().requires_grad_(True) for t in theta0]
    tw = token_weighted_mean(view.loss_at(leaves, doc_batch), w, valid)
    g = torch.autograd.grad(tw, leaves, allow_unused=True, materialize_grads=True)
    ms, vs, theta1 = [], [], []
    for p, gi in zip(theta0, g):
        g32 = gi.to(torch.promote_types(gi.dtype, torch.float32))
        m, v = adam_moments(g32, None, None, inner.betas)
        ms.append(m)
        vs.append(v)
        theta1.append(p * (1 - inner.lr * inner.weight_decay) - inner.lr * adam_direction(m, v, 1, inner.betas, inner.eps).to(p.dtype))
    return theta1, (ms, vs)


def reference_meta_gradient(
    theta, doc_batch, weights, task_batch, *, inner: InnerStep, objective: str,
    per_token_loss=None, restrict_batch=None, restrict_coef: float = 0.0,
):
    """Same contract as :func:`taalm_dist.meta.hypergradient.meta_gradient`, by double backward."""
    from taalm_dist.meta.hypergradient import MetaGradient

    view = ThetaView(theta, per_token_loss)
    valid = next_token_valid_mask(doc_batch["attention_mask"])
    theta0 = [p.detach() for p in view.params]
    w = weights.detach().clone().requires_grad_(True)
    with eval_mode(theta):
        with torch.no_grad():
            before = view.loss_at(theta0, task_batch) if objective in NEEDS_BEFORE else None
            use_restrict = restrict_batch is not None and restrict_coef
            r_before = view.loss_at(theta0, restrict_batch) if use_restrict else None
        state, pre = None, theta0
        if inner.kind == "adamw":
            pre, state = _dummy_adamw(view, theta0, doc_batch, w.detach(), valid, inner)
        leaves = [t.detach().clone().requires_grad_(True) for t in pre]
        new = _inner_update(view, leaves, doc_batch, w, valid, inner, state)
        task_obj = objective_value(objective, view.loss_at(new, task_batch), task_batch, before)
        total = task_obj
        if use_restrict:
            after = view.loss_at(new, restrict_batch)
            total = total + restrict_coef * restrict_value(after, r_before, restrict_batch["attention_mask"])
        (grad,) = torch.autograd.grad(total, w)
    return MetaGradient(grad.detach(), total.detach(), task_obj.detach())
