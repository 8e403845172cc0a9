"""How the meta-gradient's directional derivatives are estimated: one signature, one registry.

Every estimator computes, for every token j of the document batch, ``u_j = ⟨∇ℓ_j(θ_pre), ṽ⟩`` — the derivative of
the token's loss at θ_pre along the inner step's direction ṽ (docs/design.md §2) — from one :class:`Probe` of θ:

* ``jvp`` — exact, one forward-mode pass (needs θ's full tensors: :attr:`ThetaAccess.supports_functional`);
* ``fd`` — a central difference of two no-grad forwards along the unit direction;
* ``fd1`` — a one-sided difference of one forward against the per-token losses at θ_pre that the inner step
  already computed (:attr:`Probe.at_loss`).

:func:`~taalm_dist.meta.hypergradient.meta_gradient` looks the method up by name in :data:`ESTIMATORS`; a new
estimator is an object with the :class:`Estimator` members registered there — nothing else changes
(``meta.method`` in the config lists the shipped names for users; a test keeps the two lists equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import torch

from taalm_dist.models.precision import float32_compute
from taalm_dist.registry import Registry

Batch = Mapping[str, torch.Tensor]


class ThetaAccess(Protocol):
    """What an estimator needs of θ (:class:`~taalm_dist.meta.functional.ThetaView`, its ZeRO-3 and per-document
    forms)."""

    model: torch.nn.Module
    supports_functional: bool
    """Whether :meth:`loss_at` works (θ's full tensors: not under ZeRO-3)."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """``[B, L]`` per-token NLL at θ's current values."""

    def loss_at(self, tensors: Sequence[torch.Tensor], batch: Batch) -> torch.Tensor:
        """``[B, L]`` per-token NLL with θ's trainable tensors replaced by ``tensors`` (differentiable)."""

    def assign(self, tensors: Sequence[torch.Tensor]) -> None:
        """θ's trainable tensors ← ``tensors``, in place."""

    def direction_norm(self, direction: Sequence[torch.Tensor]) -> torch.Tensor:
        """‖direction‖: a 0-d float64 tensor, or ``[B]`` (one per document) for a per-document view."""

    def assign_step(self, at: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], step: float,
                    norm: torch.Tensor) -> None:
        """θ's trainable tensors ← ``at + step · direction / norm``, in place."""

    def per_row(self, norm: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``norm`` shaped to scale a ``[B, L]`` tensor like ``like``."""


@dataclass(frozen=True)
class Probe:
    """Everything an estimator is given: θ (``view``), the point ``at`` (θ_pre's trainable tensors), the inner step's
    ``direction`` ṽ (same shapes), the document ``batch``, the difference step ``eps`` (None: the estimator's
    default for ``at``'s dtype and the ``inner`` step kind) and ``at_loss``, the ``[B, L]`` per-token losses at
    ``at`` when the inner step computed them in the estimator's precision (else None)."""

    view: ThetaAccess
    at: list[torch.Tensor]
    direction: list[torch.Tensor]
    batch: Batch
    inner: str = "sgd"
    eps: float | None = None
    at_loss: torch.Tensor | None = None


class Estimator(Protocol):
    """A directional-derivative estimator (module docstring)."""

    name: str
    """Its ``meta.method`` name."""
    needs_functional: bool
    """It evaluates θ functionally (``loss_at``): refused on a sharded θ."""
    reuses_at_loss: bool
    """It consumes :attr:`Probe.at_loss` (the inner step keeps its losses for it)."""

    def __call__(self, probe: Probe) -> torch.Tensor:
        """``[B, L]`` u."""


ESTIMATORS: Registry[Estimator] = Registry(
    "estimator", lambda name, known: ValueError(f"method={name!r} is not one of {(*known, 'double_backward')}"))
"""Every registered estimator by name: ``ESTIMATORS.register(est.name, est)`` adds one, ``ESTIMATORS.lookup(name)``
finds one (a ValueError listing them when there is none)."""


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


def _is_zero(norm: torch.Tensor) -> bool:
    return norm.dim() == 0 and float(norm) == 0.0


# ----------------------------------------------------------------------------------------------- the three shipped
class Jvp:
    """Exact ``u`` by forward-mode AD (one pass through ``loss_at``)."""

    name, needs_functional, reuses_at_loss = "jvp", True, False

    def __call__(self, probe: Probe) -> torch.Tensor:
        primals = tuple(t.detach() for t in probe.at)
        tangents = tuple(d.to(t.dtype) for d, t in zip(probe.direction, primals))
        try:
            _, u = torch.func.jvp(lambda *ts: probe.view.loss_at(ts, probe.batch), primals, tangents)
        except (NotImplementedError, RuntimeError) as e:
            if "forward AD" not in str(e) and "forward-mode" not in str(e):
                raise
            raise RuntimeError(
                "method='jvp' needs an attention that supports forward-mode AD: load θ with "
                "attn_implementation='taalm_eager' (or 'eager'), or use method='fd', which works with any kernel. "
                f"({str(e).splitlines()[0]})") from None
        return u


@dataclass(frozen=True)
class Difference:
    """``u`` by a finite difference along the unit direction, computed in float32 even when θ's frozen base is bfloat16
    (:func:`taalm_dist.models.precision.float32_compute`): ``central`` — two no-grad forwards at ``at ± eps·d̂``
    (``fd``; step :func:`default_fd_eps`); else one forward at ``at + eps·d̂`` against :attr:`Probe.at_loss`,
    computed here when None (``fd1``; step :func:`default_fd1_eps`)."""

    name: str
    central: bool
    needs_functional: bool = False

    @property
    def reuses_at_loss(self) -> bool:
        return not self.central

    @torch.no_grad()
    def __call__(self, probe: Probe) -> torch.Tensor:
        view, at, d, batch = probe.view, probe.at, probe.direction, probe.batch
        default = default_fd_eps if self.central else default_fd1_eps
        eps, norm = probe.eps or default(at[0].dtype, probe.inner), view.direction_norm(d)
        known = None if self.central else probe.at_loss
        if _is_zero(norm):
            return torch.zeros_like(view.loss(batch) if known is None else known)
        with float32_compute(view.model):  # [mixed precision note] in taalm_dist.models.precision
            lower = None if self.central else (view.loss(batch) if known is None else known)
            view.assign_step(at, d, eps, norm)  # syncs
            upper = view.loss(batch)
            if self.central:
                view.assign_step(at, d, -eps, norm)
                lower = view.loss(batch)
            view.assign(at)
        return (upper - lower) * (view.per_row(norm, upper) / (2 * eps if self.central else eps))


for _est in (Jvp(), Difference("fd", central=True), Difference("fd1", central=False)):
    ESTIMATORS.register(_est.name, _est)
