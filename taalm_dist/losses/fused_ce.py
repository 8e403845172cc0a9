"""Fused linear + cross-entropy: the token-weighted loss without ever holding the ``[B, L, V]`` logits.

Same conventions as the spec, :mod:`taalm_dist.losses.token_weighted_ce` (position ``i-1`` predicts token
``i``, validity, ``TW_b``, fp32/fp64 accumulation); in addition a label equal to :data:`IGNORE_INDEX`
(-100) makes its position invalid.

The valid positions are processed in chunks of ``chunk`` tokens: a chunk's logits ``h @ W.T`` (input
dtype), their log-sum-exp and NLL (fp32, fp64 for fp64 inputs) and, when a gradient is wanted,
``scale * (softmax - onehot)`` multiplied back through ``W``; then the chunk's logits are dropped. Peak
extra memory is one chunk of logits, not ``B * L * V``.

Two back-ends compute the per-chunk softmax part: ``"chunked"`` (PyTorch, any device) and ``"triton"``
(a Liger-style kernel, :mod:`taalm_dist.losses.fused_ce_triton`: CUDA, or CPU under ``TRITON_INTERPRET=1``).
``"auto"`` takes Triton on CUDA when it is installed, else ``"chunked"``.

Both autograd Functions are once-differentiable (no double backward, no forward-mode AD).
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Literal

import torch

from taalm_dist.losses.token_weighted_ce import WEIGHT_SUM_EPS, loss_dtype, next_token_valid_mask, token_weighted_mean

IGNORE_INDEX = -100
"""A label with this value is not predicted: its position is invalid whatever its mask and weight."""

Impl = Literal["chunked", "triton", "auto"]
_IMPLS = ("chunked", "triton", "auto")
_MIN_AUTO_CHUNK = 512  # smaller chunks starve the GEMM: measured 1.4x slower than eager at 64 tokens (CPU)


def fused_token_weighted_ce(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk: int | None = None,
    impl: Impl = "auto",
    return_per_token: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``token_weighted_ce(hidden @ lm_head_weight.T, labels, weights, attention_mask).loss``, fused.

    All gradients (hidden, ``lm_head_weight`` when it requires grad, weights) are computed in the
    forward pass, where the weights are known; backward only scales them by the incoming scalar.

    Args:
        hidden: ``[B, L, H]`` final hidden states (bf16, fp16, fp32 or fp64).
        lm_head_weight: ``[V, H]`` output projection, same dtype as ``hidden``; frozen or trainable.
        labels: ``[B, L]`` int token ids (the ``input_ids``); ``-100`` marks a position to ignore.
        weights: ``[B, L]`` non-negative token weights (any float dtype).
        attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.
        chunk: tokens per chunk of logits (>= 1); None picks one whose logits are about the size of the
            chunk's hidden states (at least 512 tokens).
        impl: ``"chunked"``, ``"triton"`` or ``"auto"`` (see the module docstring).
        return_per_token: also return the per-token NLL.

    Returns:
        The scalar loss in nats (dtype of the spec's loss: fp32, or fp64 if hidden or weights are fp64);
        with ``return_per_token``, ``(loss, per_token)`` where ``per_token`` is ``[B, L]`` NLL in nats
        (0 at invalid positions), detached.
    """
    _validate(hidden, lm_head_weight, labels, attention_mask, chunk, impl)
    if weights.shape != labels.shape:
        raise ValueError(f"weights has shape {tuple(weights.shape)}, expected labels' {tuple(labels.shape)}")
    impl, chunk = _resolve(impl, chunk, hidden, lm_head_weight, labels, attention_mask)
    inputs = (hidden, lm_head_weight, weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        loss, per_token = _FusedTokenWeightedCE.apply(*inputs, labels, attention_mask, chunk, impl)
    else:
        with torch.no_grad():
            per_token, valid = _per_token_no_grad(hidden, lm_head_weight, labels, attention_mask, chunk, impl)
            loss = token_weighted_mean(per_token, weights, valid)
    return (loss, per_token) if return_per_token else loss


def chunked_per_token_nll(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk: int | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Per-token next-token NLL from hidden states, chunk by chunk; differentiable in hidden and W.

    With a frozen ``lm_head_weight`` (the LoRA case) the forward stores ``dℓ_i/dh_i`` (one ``[H]`` row per
    valid token, hidden's dtype) and backward multiplies it by ``grad_output``; with a trainable one it
    saves the inputs and recomputes each chunk's logits in backward. Under ``torch.no_grad()`` (or when
    nothing requires grad) no gradient work is done.

    Args:
        hidden: ``[B, L, H]`` final hidden states; lm_head_weight: ``[V, H]``, same dtype.
        labels: ``[B, L]`` int token ids; ``-100`` marks a position to ignore.
        attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.
        chunk, impl: as in :func:`fused_token_weighted_ce`.

    Returns:
        ``[B, L]`` NLL in nats (fp32, or fp64 for fp64 inputs); 0 at column 0 and at invalid positions.
    """
    _validate(hidden, lm_head_weight, labels, attention_mask, chunk, impl)
    impl, chunk = _resolve(impl, chunk, hidden, lm_head_weight, labels, attention_mask)
    if torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad):
        return _ChunkedPerTokenNLL.apply(hidden, lm_head_weight, labels, attention_mask, chunk, impl)
    with torch.no_grad():
        return _per_token_no_grad(hidden, lm_head_weight, labels, attention_mask, chunk, impl)[0]


# ---------------------------------------------------------------------------------------------------------
# Validation and planning


def _validate(hidden, weight, labels, attention_mask, chunk, impl) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, L, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight must be [V, H] with H = hidden's {hidden.shape[2]}, got shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"lm_head_weight is {weight.dtype} but hidden is {hidden.dtype}; cast one of them")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected hidden's [B, L] {tuple(hidden.shape[:2])}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    if attention_mask.shape != labels.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected labels' {tuple(labels.shape)}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 tokens (or None for automatic), got {chunk}")
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")


def triton_available() -> bool:
    """True when the ``triton`` package imports (it is optional: the ``kernels`` extra).

    Called only for CUDA inputs or ``impl="triton"``, so CPU runs never import Triton."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (kernels on CPU tensors; set before triton is
    imported)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def _resolve(impl, chunk, hidden, weight, labels, attention_mask) -> tuple[str, int]:
    """The concrete back-end and chunk size for these inputs."""
    if impl == "auto":
        impl = "triton" if hidden.device.type == "cuda" and triton_available() else "chunked"
    elif impl == "triton":
        if not triton_available():
            raise ValueError("impl='triton' needs the triton package: pip install -e '.[kernels]'")
        if hidden.device.type != "cuda" and not triton_interpreted():
            raise ValueError(
                f"impl='triton' needs CUDA tensors (hidden is on {hidden.device}) or TRITON_INTERPRET=1 "
                "set before triton is imported"
            )
    if chunk is None:
        V, H = weight.shape
        chunk = auto_chunk(labels.numel(), V, H)
    return impl, chunk


def auto_chunk(n_tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk when ``chunk`` is None: a chunk whose logits ``[chunk, vocab]`` are about the size of the
    hidden states of all ``n_tokens`` (a power of two, at least 512, at most ``n_tokens``)."""
    n_tokens = max(1, n_tokens)
    per_chunk = math.ceil(n_tokens / math.ceil(vocab / hidden))  # logits of a chunk ≈ its hidden states
    return min(n_tokens, max(_MIN_AUTO_CHUNK, 1 << (per_chunk - 1).bit_length()))


@dataclass
class _Rows:
    """The predicted tokens: flat positions ``p = b * L + i`` (read from hidden row ``p - 1``)."""

    valid: torch.Tensor  # [B, L] bool
    pos: torch.Tensor  # [R] int64, valid positions in row-major order
    targets: torch.Tensor  # [R] int64 labels at pos


def _plan(labels: torch.Tensor, attention_mask: torch.Tensor, vocab: int) -> _Rows:
    valid = next_token_valid_mask(attention_mask) & (labels != IGNORE_INDEX)
    pos = valid.reshape(-1).nonzero().squeeze(1)
    targets = labels.reshape(-1)[pos].long()
    if targets.numel() and (targets.min() < 0 or targets.max() >= vocab):
        bad = targets[(targets < 0) | (targets >= vocab)][0].item()
        raise ValueError(f"labels hold id {bad} at a valid position, outside [0, V={vocab}) (use -100 to ignore)")
    return _Rows(valid, pos, targets)


# ---------------------------------------------------------------------------------------------------------
# The chunk loop and the PyTorch back-end


def _torch_lse_nll_grad(logits, targets, scale, acc):
    """PyTorch twin of ``fused_ce_triton.lse_nll_grad_``: per-row NLL and ``scale * (softmax - onehot)``."""
    x = logits.to(acc)  # may alias logits (same dtype): it is a scratch buffer either way
    lse = torch.logsumexp(x, dim=-1)
    nll = lse - x.gather(1, targets[:, None]).squeeze(1)
    if scale is None:
        return nll, None
    x.sub_(lse[:, None]).exp_()
    x.scatter_add_(1, targets[:, None], torch.full_like(x[:, :1], -1.0))
    x.mul_(scale[:, None])
    return nll, x


def _backend(impl: str):
    if impl == "triton":
        from taalm_dist.losses.fused_ce_triton import lse_nll_grad_

        return lse_nll_grad_
    return _torch_lse_nll_grad


def _chunk_loop(h2d, weight, rows, chunk, impl, acc, scale=None, dh_out=None, dh_index=None, want_dW=False):
    """NLL of each row of ``rows`` ([R], ``acc``), and gradients of ``Σ_r scale_r ℓ_r`` when ``scale`` is given.

    ``h2d`` is hidden as ``[B*L, H]``. The gradient wrt the hidden row of ``rows.pos[r]`` is written to
    ``dh_out[dh_index[r]]`` (hidden's dtype); with ``want_dW`` the gradient wrt ``weight`` is returned,
    accumulated in ``acc`` over chunks.
    """
    n_rows = rows.pos.numel()
    nll = torch.empty(n_rows, dtype=acc, device=h2d.device)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_dW else None
    lse_nll_grad = _backend(impl)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        h = h2d.index_select(0, rows.pos[start:stop] - 1)
        logits = h @ weight.T  # [n, V] in the input dtype
        sc = None if scale is None else scale[start:stop].to(acc)
        nll[start:stop], g = lse_nll_grad(logits, rows.targets[start:stop], sc, acc)
        if g is None:
            continue
        g = g.to(h.dtype)  # [n, V]: dℓ/dlogits, back in the matmul dtype
        if dh_out is not None:
            dh_out.index_copy_(0, dh_index[start:stop], g @ weight)
        if grad_w is not None:
            grad_w.add_(g.T @ h)
        del logits, g
    return nll, grad_w


def _scatter_per_token(nll, rows, shape, acc):
    out = torch.zeros(shape[0] * shape[1], dtype=acc, device=nll.device)
    out[rows.pos] = nll
    return out.view(shape[0], shape[1])


def _per_token_no_grad(hidden, weight, labels, attention_mask, chunk, impl):
    rows = _plan(labels, attention_mask, weight.shape[0])
    acc = loss_dtype(hidden.dtype)
    nll, _ = _chunk_loop(hidden.reshape(-1, hidden.shape[-1]), weight, rows, chunk, impl, acc)
    return _scatter_per_token(nll, rows, labels.shape, acc), rows.valid


# ---------------------------------------------------------------------------------------------------------
# Autograd Functions


class _FusedTokenWeightedCE(torch.autograd.Function):
    """Forward computes the loss and every needed gradient; backward scales them by ``grad_loss``."""

    @staticmethod
    def forward(ctx, hidden, weight, weights, labels, attention_mask, chunk, impl):
        need_h, need_W, need_w = ctx.needs_input_grad[:3]
        B, L, H = hidden.shape
        rows = _plan(labels, attention_mask, weight.shape[0])
        acc = loss_dtype(hidden.dtype)
        w_dtype = torch.promote_types(acc, weights.dtype)  # the spec's dtype for TW_b
        wv = weights.to(w_dtype) * rows.valid
        denom = wv.sum(dim=1) + WEIGHT_SUM_EPS  # S_b
        coef = (wv / denom[:, None] / B).reshape(-1)[rows.pos]  # dLoss/dℓ_bi
        h2d = hidden.reshape(B * L, H)
        dh = torch.zeros_like(h2d) if need_h else None
        nll, grad_W = _chunk_loop(
            h2d, weight, rows, chunk, impl, acc,
            scale=coef if (need_h or need_W) else None, dh_out=dh, dh_index=rows.pos - 1, want_dW=need_W,
        )  # fmt: skip
        per_token = _scatter_per_token(nll, rows, (B, L), acc)
        loss = token_weighted_mean(per_token, weights, rows.valid)
        grad_weights = None
        if need_w:  # dTW_b/dw_bi = (ℓ_bi - TW_b) / S_b, and the batch loss is the mean over b
            tw = (wv * per_token).sum(dim=1) / denom
            grad_weights = (rows.valid * (per_token - tw[:, None]) / denom[:, None] / B).to(weights.dtype)
        ctx.save_for_backward(
            None if dh is None else dh.view(B, L, H),
            None if grad_W is None else grad_W.to(weight.dtype),
            grad_weights,
        )
        ctx.mark_non_differentiable(per_token)
        return loss, per_token

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_per_token):
        grads = [None if g is None else g * grad_loss for g in ctx.saved_tensors]
        return (*grads, None, None, None, None)


class _ChunkedPerTokenNLL(torch.autograd.Function):
    """Per-token NLL; frozen W: stores dℓ_i/dh_i in forward; trainable W: recomputes chunks in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, attention_mask, chunk, impl):
        need_h, need_W = ctx.needs_input_grad[:2]
        B, L, H = hidden.shape
        rows = _plan(labels, attention_mask, weight.shape[0])
        acc = loss_dtype(hidden.dtype)
        h2d = hidden.reshape(B * L, H)
        ctx.stored = need_h and not need_W
        ctx.meta = (B, L, H, chunk, impl, acc)
        if ctx.stored:
            dh_rows = torch.empty(rows.pos.numel(), H, dtype=hidden.dtype, device=hidden.device)
            ones = torch.ones(rows.pos.numel(), dtype=acc, device=hidden.device)
            index = torch.arange(rows.pos.numel(), device=hidden.device)
            nll, _ = _chunk_loop(h2d, weight, rows, chunk, impl, acc, scale=ones, dh_out=dh_rows, dh_index=index)
            ctx.save_for_backward(dh_rows, rows.pos)
        else:
            nll, _ = _chunk_loop(h2d, weight, rows, chunk, impl, acc)
            ctx.save_for_backward(hidden, weight, rows.pos, rows.targets)
        return _scatter_per_token(nll, rows, (B, L), acc)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        B, L, H, chunk, impl, acc = ctx.meta
        go = grad_out.reshape(-1)
        if ctx.stored:
            dh_rows, pos = ctx.saved_tensors
            dh = torch.zeros(B * L, H, dtype=dh_rows.dtype, device=dh_rows.device)
            dh.index_copy_(0, pos - 1, (dh_rows * go[pos][:, None]).to(dh_rows.dtype))
            return dh.view(B, L, H), None, None, None, None, None
        hidden, weight, pos, targets = ctx.saved_tensors
        need_h, need_W = ctx.needs_input_grad[:2]
        h2d = hidden.reshape(B * L, H)
        dh = torch.zeros_like(h2d) if need_h else None
        rows = _Rows(valid=None, pos=pos, targets=targets)
        _, grad_W = _chunk_loop(
            h2d, weight, rows, chunk, impl, acc, scale=go[pos], dh_out=dh, dh_index=pos - 1, want_dW=need_W
        )
        return (
            None if dh is None else dh.view(B, L, H),
            None if grad_W is None else grad_W.to(weight.dtype),
            None, None, None, None,
        )  # fmt: skip
