"""The inner step of θ (one SGD step, or AdamW with a dummy first step) and its derivative.

Adam's update direction for one tensor, with moments after the current gradient ``g``:

    m = β1 m_prev + (1−β1) g,   v = β2 v_prev + (1−β2) g²,   A(g) = (m / bc1) / (sqrt(v / bc2) + eps)

with ``bc = 1 − β^t``; AdamW then sets ``θ ← θ(1 − lr·wd) − lr·A``. ``adam_direction_derivative`` is
``dA/dg`` elementwise (through both m and v), used by the closed-form hypergradient (docs/design.md §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class InnerStep:
    """One inner update of θ's trainable tensors.

    Attributes:
        kind: ``"sgd"`` or ``"adamw"`` (a non-differentiated dummy AdamW step, then the differentiated one).
        lr: learning rate α.
        betas, eps, weight_decay: AdamW settings (ignored by SGD).
    """

    kind: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.kind not in ("sgd", "adamw"):
            raise ValueError(f"inner={self.kind!r} must be 'sgd' or 'adamw'")


@dataclass
class AdamState:
    """First/second moments of each trainable tensor and the step count t."""

    m: list[torch.Tensor]
    v: list[torch.Tensor]
    t: int


def adam_moments(g: torch.Tensor, m_prev: torch.Tensor | None, v_prev: torch.Tensor | None, betas) -> tuple:
    """``(m, v)`` after gradient ``g``; ``None`` previous moments mean zeros (the first step)."""
    b1, b2 = betas
    m = (1 - b1) * g if m_prev is None else b1 * m_prev + (1 - b1) * g
    v = (1 - b2) * g * g if v_prev is None else b2 * v_prev + (1 - b2) * g * g
    return m, v


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) derivative at 0 under autograd (the double-where trick)."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def adam_direction(m: torch.Tensor, v: torch.Tensor, t: int, betas, eps: float) -> torch.Tensor:
    """``A = (m / bc1) / (sqrt(v / bc2) + eps)``; differentiable (safe at v = 0)."""
    b1, b2 = betas
    return (m / (1 - b1**t)) / (_safe_sqrt(v / (1 - b2**t)) + eps)


def adam_direction_derivative(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, betas, eps: float):
    """Elementwise ``dA/dg`` at gradient ``g`` with moments ``(m, v)`` already including ``g``.

    ``dA/dg = (1−β1)/bc1 / (s + eps) − (m/bc1) · ds/dg / (s + eps)²`` with ``s = sqrt(v/bc2)`` and
    ``ds/dg = (1−β2) g / (bc2 s)`` (taken as 0 where s = 0, the limit of the product).
    Compute in fp32 or wider.
    """
    b1, b2 = betas
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    s = torch.sqrt(v / bc2)
    den = s + eps
    ds = torch.where(s > 0, (1 - b2) * g / (bc2 * torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(s))
    return ((1 - b1) / bc1) / den - (m / bc1) * ds / (den * den)


@torch.no_grad()
def apply_sgd(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float) -> None:
    """In place: ``p ← p − lr·g``."""
    for p, g in zip(params, grads):
        p.sub_(lr * g.to(p.dtype))


@torch.no_grad()
def apply_adamw(params: list[torch.Tensor], grads: list[torch.Tensor], state: AdamState | None, step: InnerStep) -> AdamState:
    """In place AdamW step (torch.optim.AdamW semantics); returns the new state (moments in fp32+)."""
    return adamw_update_(params, grads, state, step)[0]


@torch.no_grad()
def adamw_update_(params: list[torch.Tensor], grads: list[torch.Tensor], state: AdamState | None, step: InnerStep,
                  derivative: bool = False) -> tuple[AdamState, list[torch.Tensor] | None]:
    """In place AdamW step; returns ``(state, dA/dg per tensor or None)``.

    The same arithmetic as torch.optim.AdamW (``denom = sqrt(v)/sqrt(bc2) + eps``, ``p −= lr/bc1 · m/denom``) with
    every tensor visited by a handful of fused in-place kernels: on θ's LoRA factors (one copy per document under
    ``train.docs_per_pass``) the inner step's elementwise work is memory traffic; unfused (the moments computed
    twice, ~45 passes per tensor) it cost ~0.3 s of a 3.4 s φ update on the demo's config, fused 0.11 s.
    ``derivative``: also return :func:`adam_direction_derivative` at this step's gradient (fp32+), computed from the
    same moments.
    """
    t = 1 if state is None else state.t + 1
    b1, b2 = step.betas
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    ms, vs, dadgs = [], [], []
    for i, (p, g) in enumerate(zip(params, grads)):
        g32 = g.to(torch.promote_types(g.dtype, torch.float32))
        if state is None:
            m = g32 * (1 - b1)
            v = torch.mul(g32, g32).mul_(1 - b2)
        else:
            m = torch.lerp(state.m[i], g32, 1 - b1)
            v = state.v[i].mul(b2).addcmul_(g32, g32, value=1 - b2)
        s = v.sqrt().div_(math.sqrt(bc2))  # sqrt(v / bc2)
        denom = s.add(step.eps) if derivative else s.add_(step.eps)
        if derivative:
            dadgs.append(_direction_derivative(g32, m, s, denom, b1, b2, bc1, bc2))
        if step.weight_decay:
            p.mul_(1 - step.lr * step.weight_decay)
        if p.dtype == m.dtype:
            p.addcdiv_(m, denom, value=-step.lr / bc1)
        else:  # a narrower θ: the update rounded to its dtype, as AdamW's own foreach path does
            p.sub_((m / denom).mul_(step.lr / bc1).to(p.dtype))
        ms.append(m)
        vs.append(v)
    return AdamState(ms, vs, t), (dadgs if derivative else None)


def _direction_derivative(g, m, s, denom, b1, b2, bc1, bc2) -> torch.Tensor:
    """:func:`adam_direction_derivative` from the step's own ``s = sqrt(v/bc2)`` and ``denom = s + eps``, in place
    where it can: ``(1−β1)/bc1 / denom − (1−β2)/(bc1·bc2) · m·g / (s · denom²)`` (the second term 0 where
    s = 0)."""
    inv = denom.reciprocal()
    curv = torch.mul(m, g).mul_(inv).mul_(inv)
    curv = torch.where(s > 0, curv.div_(s), 0.0)
    return inv.mul_((1 - b1) / bc1).sub_(curv, alpha=(1 - b2) / (bc1 * bc2))
