"""The Triton back-end of :mod:`taalm_dist.losses.fused_ce`: one kernel over a chunk of logits.

Imported lazily (only when ``impl="triton"`` runs), so the package imports without Triton. On CPU the
kernel runs under Triton's interpreter: ``TRITON_INTERPRET=1`` must be set before ``triton`` is imported.

The kernel is Liger-style: the chunk's logits ``[n, V]`` come from a torch matmul, and one program per
row computes, in place on that buffer, an online (single-pass) log-sum-exp, the target's NLL and, when
asked, ``scale_r * (softmax_r - onehot_r)``, the gradient of ``scale_r * NLL_r`` with respect to the logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BLOCK_V = 4096  # columns per step of a row's loop; caps registers per program on the GPU


@triton.jit
def _lse_nll_grad_kernel(
    logits_ptr,
    stride_row,
    targets_ptr,
    scale_ptr,
    nll_ptr,
    V: tl.constexpr,  # constexpr: one compile per vocabulary; Triton < 3.2's interpreter cannot loop to a runtime int
    HAS_GRAD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    target = tl.load(targets_ptr + row)

    # Online log-sum-exp: running max m and running Σ exp(x - m), rescaled when m grows.
    m = tl.full([], float("-inf"), ACC)
    d = tl.full([], 0.0, ACC)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(x, 0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(d)
    x_target = tl.load(base + target).to(ACC)
    tl.store(nll_ptr + row, lse - x_target)

    if HAS_GRAD:
        scale = tl.load(scale_ptr + row).to(ACC)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < V
            x = tl.load(base + cols, mask=mask, other=0.0).to(ACC)
            p = tl.exp(x - lse)
            p = tl.where(cols == target, p - 1.0, p)
            tl.store(base + cols, (p * scale).to(logits_ptr.dtype.element_ty), mask=mask)


def lse_nll_grad_(
    logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor | None, acc_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row NLL and, in place, the scaled gradient of the logits.

    Args:
        logits: ``[n, V]`` contiguous logits of one chunk (any float dtype); overwritten when ``scale`` is
            given.
        targets: ``[n]`` int64 target ids in ``[0, V)``.
        scale: ``[n]`` per-row factor of the gradient (``acc_dtype``), or None for no gradient.
        acc_dtype: ``torch.float32`` or ``torch.float64``: the dtype of the exp/sum arithmetic and of the NLL.

    Returns:
        ``(nll [n] in nats, acc_dtype; logits buffer now holding scale * (softmax - onehot), or None)``.
    """
    n, V = logits.shape
    if logits.stride(1) != 1:
        raise ValueError(f"logits must be row-contiguous, got strides {logits.stride()}")
    nll = torch.empty(n, dtype=acc_dtype, device=logits.device)
    if n == 0:
        return nll, (logits if scale is not None else None)
    has_grad = scale is not None
    scale_arg = scale if has_grad else nll  # never read when HAS_GRAD is False
    _lse_nll_grad_kernel[(n,)](
        logits,
        logits.stride(0),
        targets,
        scale_arg,
        nll,
        V,
        HAS_GRAD=has_grad,
        ACC=tl.float64 if acc_dtype == torch.float64 else tl.float32,
        BLOCK_V=min(triton.next_power_of_2(V), _MAX_BLOCK_V),
        num_warps=8,
    )
    return nll, (logits if has_grad else None)
