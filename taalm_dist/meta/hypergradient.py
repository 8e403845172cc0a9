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
from typing import Mapping

import torch

from taalm_dist.losses import PerTokenLossFn, WEIGHT_SUM_EPS, next_token_valid_mask, token_weighted_mean
from taalm_dist.meta.functional import ThetaView, eval_mode
from taalm_dist.meta.inner import InnerStep, adamw_update_, apply_adamw, apply_sgd
from taalm_dist.models.precision import float32_compute
from taalm_dist.meta.objectives import NEEDS_BEFORE, objective_value, restrict_value

METHODS = ("jvp", "fd", "fd1", "double_backward")
Batch = Mapping[str, torch.Tensor]


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


def default_fd_eps(dtype: torch.dtype, inner: str = "sgd") -> float:
    """Central-difference step along the unit direction: 1e-5 (fp64), 1e-3 (fp32, SGD inner step), 3e-2 (fp32 AdamW
    inner step, and bf16/fp16).

    [fd step note] The difference quotient's error is truncation (grows like ε², the third derivative along the
    direction) plus rounding (like u·|ℓ|/ε, u the compute's unit roundoff). Which one dominates depends on the inner
    step. SGD's direction lr·∇L(θ') is one the losses move along fast: 1e-3 leaves 0.3 % error on the demo's
    SmolLM2-135M (φ's gradient against the exact jvp, ``taalm bench gradnoise``), 3e-2 already 2.4 % (truncation).
    AdamW's direction lr·A′(g)⊙∇L(θ') is dominated by coordinates with tiny gradients, where Adam's normalisation is
    steep (A′ up to ~1/adam_eps) and the losses barely move: at 1e-3 rounding dominates — φ's gradient was 33-38 %
    off the exact one on the demo, 1.4e-2 (median) on the tests' tiny Llama — and the error falls with the step:
    1e-2 4 %, 3e-2 1.2 %, 1e-1 0.5 % on SmolLM2 (tiny Llama 9e-4 / 3e-4 / 3.5e-4). 3e-2 is taken for AdamW: within
    a factor 2-3 of the best on both models, well before truncation shows (SGD shows it from 3e-2).

    [bf16 fd note] With bf16 trainable tensors a step of 1e-3 is mostly rounded away (measured on a tiny
    Llama, SGD inner step: cosine to the fp32 answer 0.09 at 1e-3, 0.998 at 3e-2); the AdamW inner step
    itself loses its small updates to rounding (cosine 0.90 at best). Keep θ's trainable tensors fp32."""
    if dtype == torch.float64:
        return 1e-5
    return 1e-3 if dtype == torch.float32 and inner == "sgd" else 3e-2


def default_fd1_eps(dtype: torch.dtype, inner: str = "sgd") -> float:
    """One-sided difference step along the unit direction: 1e-7 (fp64), 1e-3 (fp32, SGD inner step), 3e-2 (fp32
    AdamW inner step, and bf16/fp16).

    [fd1 step note] The one-sided quotient's truncation error grows like ε (the curvature along the direction),
    its rounding error like u·|ℓ|/ε; for the inner steps' directions see [fd step note]. Measured against the exact
    jvp: float64 on the tiny Llama, SGD / AdamW, max-norm relative error 7e-8 / 1.4e-7 at 1e-7. float32, tiny Llama
    over 6 draws (median): SGD 2.5e-3 at 1e-3 (3e-3 at 3e-3, 9e-3 at 1e-2); AdamW 1.9e-2 at 1e-3, 2.4e-3 at 1e-2,
    5.2e-3 at 3e-2. float32, the demo's SmolLM2-135M, φ's gradient (``taalm bench gradnoise``): SGD 0.6-0.8 % at
    1e-3 (up to 3 % at 1e-2); AdamW 60-69 % at 1e-3, 7 % at 1e-2, 2.7 % at 3e-2, 1 % at 1e-1. fd at its defaults has
    about half fd1's error; both are a few per cent of the spread between φ updates, and fd1 saves one of the
    meta-step's forwards of θ, so it is the default method."""
    return 1e-7 if dtype == torch.float64 else default_fd_eps(dtype, inner)


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


def directional_jvp(view: ThetaView, at: list[torch.Tensor], direction: list[torch.Tensor], batch: Batch):
    """``[B, L]`` u = ⟨∇ℓ_j(at), direction⟩ for every token, exactly (forward-mode AD, one pass)."""
    primals = tuple(t.detach() for t in at)
    tangents = tuple(d.to(t.dtype) for d, t in zip(direction, primals))
    _, u = torch.func.jvp(lambda *ts: view.loss_at(ts, batch), primals, tangents)
    return u


@torch.no_grad()
def directional_fd(view: ThetaView, at: list[torch.Tensor], direction: list[torch.Tensor], batch: Batch, eps: float):
    """``[B, L]`` u by a central difference of two no-grad forwards along the unit direction, computed in float32
    even when θ's frozen base is bfloat16 (:func:`taalm_dist.models.precision.float32_compute`)."""
    norm = view.direction_norm(direction)
    if not torch.is_tensor(norm) and norm == 0.0:
        return torch.zeros_like(view.loss(batch))
    with float32_compute(view.model):  # [mixed precision note] in taalm_dist.models.precision
        view.assign_step(at, direction, eps, norm)  # syncs
        plus = view.loss(batch)
        view.assign_step(at, direction, -eps, norm)
        minus = view.loss(batch)
        view.assign(at)
    return (plus - minus) * (view.per_row(norm, plus) / (2 * eps))


@torch.no_grad()
def directional_fd1(view: ThetaView, at: list[torch.Tensor], direction: list[torch.Tensor], batch: Batch, eps: float,
                    at_loss: torch.Tensor | None):
    """``[B, L]`` u by a one-sided difference: one no-grad forward at ``at + eps·d̂`` against ``at_loss``, the per-token
    losses at ``at`` that the inner step already computed (in the same float32 compute; None: computed here)."""
    norm = view.direction_norm(direction)
    if not torch.is_tensor(norm) and norm == 0.0:
        return torch.zeros_like(view.loss(batch)) if at_loss is None else torch.zeros_like(at_loss)
    with float32_compute(view.model):  # [mixed precision note] in taalm_dist.models.precision
        base = view.loss(batch) if at_loss is None else at_loss
        view.assign_step(at, direction, eps, norm)  # syncs
        plus = view.loss(batch)
        view.assign(at)
    return (plus - base) * (view.per_row(norm, plus) / eps)


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


def inner_update_(view: ThetaView, doc_batch: Batch, weights: torch.Tensor, valid: torch.Tensor, inner: InnerStep,
                  keep_loss: list | None = None):
    """In place θ₀ → θ'. Returns ``(θ_pre, A′ or None)``: the point the differentiated step's gradient
    is taken at (θ₀ for SGD, θ₁ after the dummy AdamW step) and, for AdamW, dA/dg per tensor (fp32+).
    ``keep_loss``: a list that receives the ``[B, L]`` per-token losses at θ_pre (detached), for ``fd1``."""
    state = None
    scale = view.loss_scale(weights.shape[0])
    if inner.kind == "adamw":  # dummy step: not differentiated (docs/design.md §2)
        g0 = view.grad(_scaled(token_weighted_mean(view.loss(doc_batch), weights, valid), scale))
        state = apply_adamw(view.params, g0, None, inner)
        view.sync()
    pre = view.snapshot()
    pre_loss = view.loss(doc_batch)
    if keep_loss is not None:
        keep_loss.append(pre_loss.detach())
    g = view.grad(_scaled(token_weighted_mean(pre_loss, weights, valid), scale))
    if inner.kind == "sgd":
        apply_sgd(view.params, g, inner.lr)
        view.sync()
        return pre, None
    _, dadg = adamw_update_(view.params, g, state, inner, derivative=True)
    view.sync()
    return pre, dadg


def _scaled(loss: torch.Tensor, scale: float) -> torch.Tensor:
    """``loss · scale`` (the view's :meth:`~taalm_dist.meta.functional.ThetaView.loss_scale`; 1 leaves it as is)."""
    return loss if scale == 1.0 else loss * scale


def _has_low_precision(model: torch.nn.Module) -> bool:
    """Whether any floating parameter of ``model`` is narrower than float32 (a bf16/fp16 frozen base)."""
    return any(p.is_floating_point() and p.element_size() < 4 for p in model.parameters())


def _compute_context(model: torch.nn.Module, compute_float32: bool):
    return float32_compute(model) if compute_float32 else contextlib.nullcontext()


def _jvp_with_advice(view, pre, direction, doc_batch):
    try:
        return directional_jvp(view, pre, direction, doc_batch)
    except (NotImplementedError, RuntimeError) as e:
        if "forward AD" not in str(e) and "forward-mode" not in str(e):
            raise
        raise RuntimeError(
            "method='jvp' needs an attention that supports forward-mode AD: load θ with "
            "attn_implementation='taalm_eager' (or 'eager'), or use method='fd', which works with any kernel. "
            f"({str(e).splitlines()[0]})"
        ) from None


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
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    view = theta if isinstance(theta, ThetaView) else ThetaView(theta, per_token_loss)
    if method == "jvp" and not view.supports_functional:
        raise ValueError("method='jvp' needs θ's full tensors (functional_call); on sharded θ use method='fd'")
    weights = weights.detach()
    valid = next_token_valid_mask(doc_batch["attention_mask"])
    theta0 = view.snapshot()
    with eval_mode(view.model), _compute_context(view.model, compute_float32):
        try:
            before, r_before = _reference_losses(view, task_batch, objective, restrict_batch, restrict_coef)
            pre_loss: list = []  # fd1 reuses θ_pre's per-token losses when they were computed in float32
            reuse = method == "fd1" and (compute_float32 or not _has_low_precision(view.model))
            pre, scale = inner_update_(view, doc_batch, weights, valid, inner, keep_loss=pre_loss if reuse else None)
            total, task_obj = _scored(view, task_batch, objective, before, restrict_batch, r_before, restrict_coef)
            v = view.grad(_scaled(total, view.loss_scale(task_batch["input_ids"].shape[0])))
            if scale is None:
                direction = [inner.lr * x.to(torch.promote_types(x.dtype, torch.float32)) for x in v]
            else:  # dA/dg is not needed after: the direction takes its memory
                direction = [a.mul_(x).mul_(inner.lr) for a, x in zip(scale, v)]
            view.assign(pre)
            if method == "jvp":
                u = _jvp_with_advice(view, pre, direction, doc_batch)
            elif method == "fd1":
                u = directional_fd1(view, pre, direction, doc_batch,
                                    fd_eps or default_fd1_eps(pre[0].dtype, inner.kind), pre_loss[0] if pre_loss else None)
            else:
                u = directional_fd(view, pre, direction, doc_batch, fd_eps or default_fd_eps(pre[0].dtype, inner.kind))
        finally:
            view.assign(theta0)
    grad = centre_and_scale(u, weights, valid, view.global_batch(weights.shape[0])).to(weights.dtype)
    return MetaGradient(grad, total.detach(), task_obj.detach())


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
        fd_eps: step of the difference (default by dtype and inner step: :func:`default_fd_eps`, :func:`default_fd1_eps`
            for fd1).
        betas, adam_eps, weight_decay: inner AdamW settings.
        restrict_batch, restrict_coef: optional stability term on an unrelated task T_U.
    """
    step = InnerStep(inner, lr, tuple(betas), adam_eps, weight_decay)
    return meta_gradient(
        theta, doc_batch, weights, task_batch, inner=step, objective=objective, method=method,
        per_token_loss=per_token_loss, fd_eps=fd_eps, restrict_batch=restrict_batch, restrict_coef=restrict_coef,
    ).grad
