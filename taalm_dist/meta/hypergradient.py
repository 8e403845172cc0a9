"""The exact one-step meta-gradient dL/dw without double backward (docs/design.md §2).

For an inner step θ' = θ_pre − ṽ-direction update on the token-weighted loss of the document batch D,

    u_bj       = ⟨∇ℓ_bj(θ_pre), ṽ⟩                  (one JVP, a central difference of two forwards, or a
                                                  one-sided difference of one forward: fd1)
    dL/dw_bj   = −valid_bj / (B·S_b) · (u_bj − Σ_i (w_bi / S_b) u_bi),   S_b = Σ_i w_bi valid_bi + 1e-6

with ṽ = lr·∇L(θ') for SGD (θ_pre = θ₀) and ṽ = lr·A′(g)⊙∇L(θ') for AdamW (θ_pre = θ₁, after the dummy
step; A′ in :mod:`taalm_dist.meta.inner`). Weight decay does not depend on w and drops out. No graph of
the inner backward is ever built; θ's trainable tensors are edited in place and restored to θ₀.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from taalm_dist.losses import PerTokenLossFn, WEIGHT_SUM_EPS, next_token_valid_mask, token_weighted_mean
from taalm_dist.meta.estimators import ESTIMATORS, Batch, Probe
from taalm_dist.meta.functional import ThetaView, eval_mode
from taalm_dist.meta.inner import InnerStep, adamw_update_, apply_adamw, apply_sgd
from taalm_dist.models.precision import float32_compute
from taalm_dist.meta.objectives import NEEDS_BEFORE, objective_value, restrict_value

METHODS = (*ESTIMATORS, "double_backward")
"""``meta.method`` names: every registered estimator (:mod:`taalm_dist.meta.estimators`) and the double-backward
reference."""


@dataclass
class MetaGradient:
    """Result of :func:`meta_gradient`.

    Attributes:
        grad: ``[B, L]`` dL/dw (0 at column 0 and at padding), dtype of ``weights``.
        objective: scalar L(θ') (objective + restrict term), detached fp32+.
        task_objective: the objective alone (without the restrict term).
    """

    grad: torch.Tensor
    objective: torch.Tensor
    task_objective: torch.Tensor


def centre_and_scale(u: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """``−valid/(B·S_b) · (u − Σ_i (w_i/S_b) u_i)``: dL/dw from the directional derivatives ``u`` [B, L].

    ``batch`` is B, the number of documents the inner step averaged over (default: ``u.shape[0]``; with
    document parallelism over several ranks, the global count)."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    v = valid.to(dtype)
    w = weights.to(dtype) * v
    u = u.to(dtype) * v
    s = w.sum(dim=1, keepdim=True) + WEIGHT_SUM_EPS
    centred = u - (w * u).sum(dim=1, keepdim=True) / s
    return -(v * centred) / (s * (batch or u.shape[0]))


def _scored(view, task_batch, objective, before, restrict_batch, restrict_before, restrict_coef):
    """(L, objective-only) at the current θ (differentiable)."""
    task_obj = objective_value(objective, view.loss(task_batch), task_batch, before)
    total = task_obj
    if restrict_batch is not None and restrict_coef:
        total = total + restrict_coef * restrict_value(
            view.loss(restrict_batch), restrict_before, restrict_batch["attention_mask"]
        )
    return total, task_obj


def _reference_losses(view, task_batch, objective, restrict_batch, restrict_coef):
    """θ₀'s per-token NLL on T_D (for change objectives) and on T_U (for the restrict term)."""
    with torch.no_grad():
        before = view.loss(task_batch) if objective in NEEDS_BEFORE else None
        use_restrict = restrict_batch is not None and restrict_coef
        r_before = view.loss(restrict_batch) if use_restrict else None
    return before, r_before


class InnerResult(NamedTuple):
    """What :func:`inner_update_` leaves besides θ' in place: ``pre``, the point the differentiated step's gradient
    was taken at (θ₀ for SGD, θ₁ after the dummy AdamW step); ``dadg``, for AdamW dA/dg per tensor (fp32+), else
    None; ``pre_loss``, the ``[B, L]`` per-token losses at ``pre`` (detached)."""

    pre: list[torch.Tensor]
    dadg: list[torch.Tensor] | None
    pre_loss: torch.Tensor


def inner_update_(view: ThetaView, doc_batch: Batch, weights: torch.Tensor, valid: torch.Tensor,
                  inner: InnerStep) -> InnerResult:
    """In place θ₀ → θ' (one inner step on the token-weighted loss of ``doc_batch``); see :class:`InnerResult`."""
    state = None
    scale = view.loss_scale(weights.shape[0])
    if inner.kind == "adamw":  # dummy step: not differentiated (docs/design.md §2)
        g0 = view.grad(_scaled(token_weighted_mean(view.loss(doc_batch), weights, valid), scale))
        state = apply_adamw(view.params, g0, None, inner)
        view.sync()
    pre = view.snapshot()
    pre_loss = view.loss(doc_batch)
    g = view.grad(_scaled(token_weighted_mean(pre_loss, weights, valid), scale))
    if inner.kind == "sgd":
        apply_sgd(view.params, g, inner.lr)
        view.sync()
        return InnerResult(pre, None, pre_loss.detach())
    _, dadg = adamw_update_(view.params, g, state, inner, derivative=True)
    view.sync()
    return InnerResult(pre, dadg, pre_loss.detach())


def _scaled(loss: torch.Tensor, scale: float) -> torch.Tensor:
    """``loss · scale`` (the view's :meth:`~taalm_dist.meta.functional.ThetaView.loss_scale`; 1 leaves it as is)."""
    return loss if scale == 1.0 else loss * scale


def _has_low_precision(model: torch.nn.Module) -> bool:
    """Whether any floating parameter of ``model`` is narrower than float32 (a bf16/fp16 frozen base)."""
    return any(p.is_floating_point() and p.element_size() < 4 for p in model.parameters())


def _compute_context(model: torch.nn.Module, compute_float32: bool):
    return float32_compute(model) if compute_float32 else contextlib.nullcontext()


def updated_objective(
    theta: torch.nn.Module,
    doc_batch: Batch,
    weights: torch.Tensor,
    task_batch: Batch,
    *,
    inner: InnerStep,
    objective: str,
    per_token_loss: PerTokenLossFn | None = None,
    compute_float32: bool = True,
) -> torch.Tensor:
    """L(θ'): the objective after one inner step with ``weights`` (θ restored after). Scalar, detached.

    ``theta`` may be a model or a prebuilt :class:`ThetaView` (e.g. a sharded one); the value is this
    rank's part (its documents' mean) — average over ranks for the global value. ``compute_float32`` as in
    :func:`meta_gradient`."""
    view = theta if isinstance(theta, ThetaView) else ThetaView(theta, per_token_loss)
    valid = next_token_valid_mask(doc_batch["attention_mask"])
    theta0 = view.snapshot()
    with eval_mode(view.model), _compute_context(view.model, compute_float32):
        try:
            before, _ = _reference_losses(view, task_batch, objective, None, 0.0)
            inner_update_(view, doc_batch, weights.detach(), valid, inner)
            with torch.no_grad():
                return objective_value(objective, view.loss(task_batch), task_batch, before)
        finally:
            view.assign(theta0)


def meta_gradient(
    theta: torch.nn.Module,
    doc_batch: Batch,
    weights: torch.Tensor,
    task_batch: Batch,
    *,
    inner: InnerStep,
    objective: str,
    method: str = "jvp",
    per_token_loss: PerTokenLossFn | None = None,
    fd_eps: float | None = None,
    restrict_batch: Batch | None = None,
    restrict_coef: float = 0.0,
    compute_float32: bool = True,
) -> MetaGradient:
    """dL/dw for one inner step of θ on ``doc_batch`` weighted by ``weights``; see the module docstring.

    θ's trainable tensors are left exactly as they were (θ₀). θ runs in eval mode (no dropout).
    ``theta`` may be a model or a prebuilt :class:`ThetaView` (a sharded view supports ``fd`` only).
    ``compute_float32``: θ's passes compute in float32 even when its frozen base is bfloat16/float16
    (:func:`taalm_dist.models.precision.float32_compute`; nothing changes for a float32 model); when false they
    compute in the base's dtype and only the finite difference's two forwards are upcast.
    """
    if method == "double_backward":
        from taalm_dist.meta.reference import reference_meta_gradient

        if isinstance(theta, ThetaView):
            if not theta.supports_functional:
                raise ValueError("method='double_backward' needs θ's full tensors; on sharded θ use method='fd'")
            theta, per_token_loss = theta.model, theta.fn
        return reference_meta_gradient(
            theta, doc_batch, weights, task_batch, inner=inner, objective=objective,
            per_token_loss=per_token_loss, restrict_batch=restrict_batch, restrict_coef=restrict_coef,
        )
    est = ESTIMATORS.lookup(method)
    view = theta if isinstance(theta, ThetaView) else ThetaView(theta, per_token_loss)
    if est.needs_functional and not view.supports_functional:
        raise ValueError(f"method={method!r} needs θ's full tensors (functional_call); on sharded θ use method='fd'")
    weights = weights.detach()
    valid = next_token_valid_mask(doc_batch["attention_mask"])
    theta0 = view.snapshot()
    with eval_mode(view.model), _compute_context(view.model, compute_float32):
        try:
            before, r_before = _reference_losses(view, task_batch, objective, restrict_batch, restrict_coef)
            step = inner_update_(view, doc_batch, weights, valid, inner)
            total, task_obj = _scored(view, task_batch, objective, before, restrict_batch, r_before, restrict_coef)
            v = view.grad(_scaled(total, view.loss_scale(task_batch["input_ids"].shape[0])))
            view.assign(step.pre)
            # θ_pre's losses serve the estimate only when computed in the float32 the estimate computes in
            reuse = est.reuses_at_loss and (compute_float32 or not _has_low_precision(view.model))
            u = est(Probe(view, step.pre, _direction(v, step.dadg, inner.lr), doc_batch, inner.kind, fd_eps,
                          step.pre_loss if reuse else None))
        finally:
            view.assign(theta0)
    grad = centre_and_scale(u, weights, valid, view.global_batch(weights.shape[0])).to(weights.dtype)
    return MetaGradient(grad, total.detach(), task_obj.detach())


def _direction(v: list[torch.Tensor], dadg: list[torch.Tensor] | None, lr: float) -> list[torch.Tensor]:
    """The inner step's direction ṽ: ``lr·v`` (SGD) or ``lr·A′⊙v`` (AdamW; dA/dg is not needed after, so the
    direction takes its memory)."""
    if dadg is None:
        return [lr * x.to(torch.promote_types(x.dtype, torch.float32)) for x in v]
    return [a.mul_(x).mul_(lr) for a, x in zip(dadg, v)]


def hypergradient(
    theta: torch.nn.Module,
    doc_batch: Batch,
    weights: torch.Tensor,
    task_batch: Batch,
    *,
    inner: str,
    lr: float,
    objective: str,
    method: str,
    per_token_loss: PerTokenLossFn | None = None,
    fd_eps: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    weight_decay: float = 0.0,
    restrict_batch: Batch | None = None,
    restrict_coef: float = 0.0,
) -> torch.Tensor:
    """dL/dw, shape of ``weights`` ``[B, L]``: how the meta-objective after one inner step moves with w.

    Args:
        theta: θ, a causal LM whose trainable tensors (``requires_grad``) the inner step updates.
        doc_batch: ``input_ids``, ``attention_mask`` ``[B, L]`` of the documents D (right padded).
        weights: ``[B, L]`` token weights; ``weights[b, i]`` weighs the loss of token i (column 0 unused).
        task_batch: ``input_ids``, ``attention_mask``, ``label_mask`` ``[B, Lt]`` of the tasks T_D.
        inner: ``"sgd"`` or ``"adamw"`` (dummy AdamW step first, then the differentiated step).
        lr: inner learning rate.
        objective: ``task_nll`` | ``task`` | ``change2`` | ``change3`` (see meta.objectives).
        method: ``jvp`` (exact, forward mode) | ``fd`` (central difference) | ``fd1`` (one-sided difference reusing
            the inner step's losses: one forward instead of two) | ``double_backward`` (reference).
        per_token_loss: ``fn(model, batch) -> [B, L]`` NLL; default: eager full-logit fp32 NLL.
        fd_eps: step of the difference (default by dtype and inner step:
            :func:`~taalm_dist.meta.estimators.default_fd_eps`, :func:`~taalm_dist.meta.estimators.default_fd1_eps`
            for fd1).
        betas, adam_eps, weight_decay: inner AdamW settings.
        restrict_batch, restrict_coef: optional stability term on an unrelated task T_U.
    """
    step = InnerStep(inner, lr, tuple(betas), adam_eps, weight_decay)
    return meta_gradient(
        theta, doc_batch, weights, task_batch, inner=step, objective=objective, method=method,
        per_token_loss=per_token_loss, fd_eps=fd_eps, restrict_batch=restrict_batch, restrict_coef=restrict_coef,
    ).grad
