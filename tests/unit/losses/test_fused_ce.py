"""The fused token-weighted CE against the eager spec, forward and backward.

Run as a script (``python test_fused_ce.py triton``) it prints the error grid of one back-end as JSON:
the Triton tests run it in a subprocess with TRITON_INTERPRET=1, which must be set before triton imports.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from taalm_dist.losses import fused_ce, next_token_valid_mask, token_weighted_ce
from taalm_dist.losses.fused_ce import IGNORE_INDEX, chunked_per_token_nll, fused_token_weighted_ce

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}
REF_DTYPE = {torch.float64: torch.float64, torch.float32: torch.float64, torch.bfloat16: torch.float32}
# (padding, chunk, trainable head, some labels -100): chunk 3 and 5 do not divide the 14 tokens
CASES = [("right", 3, True, True), ("left", 5, False, True), ("none", None, True, False), ("right", 1, False, False)]


def _case(dtype, pad="right", ignore=False, B=2, L=7, H=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g).to(dtype)
    head = (torch.randn(V, H, generator=g) / H**0.5 * 3).to(dtype)
    ids = torch.randint(0, V, (B, L), generator=g)
    weights = torch.rand(B, L, generator=g, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    mask = torch.ones(B, L, dtype=torch.long)
    if pad == "right":
        mask[1, L - 3 :] = 0
    elif pad == "left":
        mask[1, :3] = 0
    if ignore:
        ids[0, 2] = ids[1, L - 4] = IGNORE_INDEX
    return hidden, head, ids, weights, mask


def _rel(a, b):
    """Norm-wise relative error ``||a - b|| / ||b||`` (absolute when ``b`` is 0)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.norm().item()
    return (a - b).norm().item() / (scale if scale > 0 else 1.0)


def _spec(hidden, head, ids, weights, mask, ref_dtype, train_head):
    """The eager spec on the same (rounded) inputs; -100 labels become zero-weight ignored positions."""
    ignored = ids == IGNORE_INDEX
    h = hidden.detach().to(ref_dtype).requires_grad_(True)
    W = head.detach().to(ref_dtype).requires_grad_(train_head)
    w = weights.detach().to(torch.promote_types(weights.dtype, ref_dtype)).requires_grad_(True)
    res = token_weighted_ce(h @ W.T, ids.clamp_min(0), w * ~ignored, mask)
    per_token = torch.where(ignored, torch.zeros_like(res.per_token), res.per_token)
    return h, W, w, res.loss, per_token, ignored


def compare(impl, dtype, pad, chunk, train_head, ignore, zero_weights=False, seed=0):
    """Errors of both public functions vs the spec: loss, per-token, grads of hidden / W / weights."""
    hidden, head, ids, weights, mask = _case(dtype, pad, ignore, seed=seed)
    if zero_weights:
        weights.zero_()
    h, W, w, ref_loss, ref_pt, ignored = _spec(hidden, head, ids, weights, mask, REF_DTYPE[dtype], train_head)
    ins = [h, W, w] if train_head else [h, w]
    ref_g = torch.autograd.grad(ref_loss, ins, retain_graph=True)
    ref_g[-1][ignored] = 0  # the spec weighs ignored positions' losses; ours treats them as invalid
    go = torch.randn(ref_pt.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=ref_pt.dtype)
    ref_pg = torch.autograd.grad(ref_pt, ins[:-1], go)

    x = [hidden.clone().requires_grad_(True), head.clone().requires_grad_(train_head), weights.clone().requires_grad_(True)]
    loss, pt = fused_token_weighted_ce(x[0], x[1], ids, x[2], mask, chunk=chunk, impl=impl, return_per_token=True)
    got = torch.autograd.grad(loss, x if train_head else [x[0], x[2]])
    nll = chunked_per_token_nll(x[0], x[1], ids, mask, chunk=chunk, impl=impl)
    got_p = torch.autograd.grad(nll, x[:2] if train_head else x[:1], go.to(nll.dtype))
    names = ["h", "W", "w"] if train_head else ["h", "w"]
    err = {"loss": _rel(loss, ref_loss), "per_token": _rel(pt, ref_pt), "nll": _rel(nll, ref_pt)}
    err |= {f"grad_{n}": _rel(a, b) for n, a, b in zip(names, got, ref_g)}
    err |= {f"nll_grad_{n}": _rel(a, b) for n, a, b in zip(names, got_p, ref_pg)}
    ok = {
        "dtypes": [t.dtype for t in got] == [t.dtype for t in (x if train_head else [x[0], x[2]])],
        "finite": all(torch.isfinite(t).all() for t in (*got, *got_p, loss, pt, nll)),
        "zero_invalid": bool((pt[~_valid(ids, mask)] == 0).all() and (nll[~_valid(ids, mask)] == 0).all()),
        "loss_dtype": loss.dtype == torch.promote_types(nll.dtype, weights.dtype) and nll.dtype == pt.dtype,
        "detached": not pt.requires_grad,
    }
    return err, ok


def _valid(ids, mask):
    return next_token_valid_mask(mask) & (ids != IGNORE_INDEX)


def _grid(impl):
    out = []
    for dtype in TOL:
        for pad, chunk, train_head, ignore in CASES:
            err, ok = compare(impl, dtype, pad, chunk, train_head, ignore)
            out.append({"case": [str(dtype), pad, chunk, train_head, ignore], "err": err, "ok": ok, "tol": TOL[dtype]})
    err, ok = compare(impl, torch.float64, "left", 3, True, True, zero_weights=True)
    out.append({"case": ["zero weights"], "err": err, "ok": ok, "tol": TOL[torch.float64]})
    return out


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("pad,chunk,train_head,ignore", CASES)
def test_chunked_matches_spec(dtype, pad, chunk, train_head, ignore):
    err, ok = compare("chunked", dtype, pad, chunk, train_head, ignore)
    assert all(ok.values()), ok
    assert max(err.values()) <= TOL[dtype], err


def test_all_zero_weights_give_zero_loss_and_finite_grads():
    hidden, head, ids, weights, mask = _case(torch.float32)
    h = hidden.requires_grad_(True)
    w = torch.zeros_like(weights, requires_grad=True)
    loss = fused_token_weighted_ce(h, head, ids, w, mask, chunk=3, impl="chunked")
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert loss.item() == 0.0
    assert (gh == 0).all() and torch.isfinite(gw).all()
    err, ok = compare("chunked", torch.float64, "right", 3, True, True, zero_weights=True)
    assert all(ok.values()) and max(err.values()) <= 1e-10, (err, ok)


def test_ignored_labels_count_as_invalid():
    hidden, head, ids, weights, mask = _case(torch.float64)
    ids[0, 4] = IGNORE_INDEX
    loss, pt = fused_token_weighted_ce(hidden, head, ids, weights, mask, return_per_token=True)
    w0 = weights.clone()
    w0[0, 4] = 0
    ids0 = ids.clamp_min(0)
    assert pt[0, 4] == 0 and pt[0, 5] > 0  # token 5 is still predicted from position 4
    assert torch.allclose(loss, token_weighted_ce(hidden @ head.T, ids0, w0, mask).loss, rtol=1e-12)


def test_no_grad_does_no_gradient_work(monkeypatch):
    hidden, head, ids, weights, mask = _case(torch.float32)
    hidden.requires_grad_(True)
    scales = []
    loop = fused_ce._chunk_loop
    monkeypatch.setattr(fused_ce, "_chunk_loop", lambda *a, **k: scales.append(k.get("scale")) or loop(*a, **k))
    with torch.no_grad():
        loss = fused_token_weighted_ce(hidden, head, ids, weights, mask, chunk=4, impl="chunked")
        nll = chunked_per_token_nll(hidden, head, ids, mask, chunk=4, impl="chunked")
    assert scales == [None, None] and not loss.requires_grad and not nll.requires_grad
    ref = token_weighted_ce((hidden @ head.T).detach(), ids, weights, mask)
    assert _rel(loss, ref.loss) < 1e-6 and _rel(nll, ref.per_token) < 1e-6


def test_frozen_head_per_token_backward_uses_stored_grads(monkeypatch):
    hidden, head, ids, weights, mask = _case(torch.float64)
    h = hidden.requires_grad_(True)
    nll = chunked_per_token_nll(h, head, ids, mask, chunk=3, impl="chunked")
    monkeypatch.setattr(fused_ce, "_chunk_loop", lambda *a, **k: pytest.fail("backward recomputed logits"))
    go = torch.randn_like(nll)
    (gh,) = torch.autograd.grad(nll, h, go)
    h_ref = hidden.detach().requires_grad_(True)
    (gh_ref,) = torch.autograd.grad(token_weighted_ce(h_ref @ head.T, ids, weights, mask).per_token, h_ref, go)
    assert _rel(gh, gh_ref) < 1e-12 and head.grad is None


def test_gradcheck_float64():
    hidden, head, ids, weights, mask = _case(torch.float64, "left", B=2, L=4, H=3, V=5)
    ins = (hidden.requires_grad_(True), head.requires_grad_(True), weights.requires_grad_(True))
    fn = lambda h, W, w: fused_token_weighted_ce(h, W, ids, w, mask, chunk=2, impl="chunked")  # noqa: E731
    assert torch.autograd.gradcheck(fn, ins)
    fn2 = lambda h, W: chunked_per_token_nll(h, W, ids, mask, chunk=3, impl="chunked")  # noqa: E731
    assert torch.autograd.gradcheck(fn2, ins[:2])


def test_single_column_and_fully_padded_batches_give_zero_loss():
    hidden, head, ids, weights, mask = _case(torch.float32)
    h = hidden[:, :1].clone().requires_grad_(True)
    loss = fused_token_weighted_ce(h, head, ids[:, :1], weights[:, :1], mask[:, :1], impl="chunked")
    (gh,) = torch.autograd.grad(loss, h)
    assert loss.item() == 0.0 and (gh == 0).all()
    assert fused_token_weighted_ce(hidden, head, ids, weights, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(weights=a["weights"][:, :3]), "weights has shape"),
        (lambda a: a.update(labels=a["labels"][:1]), "labels has shape"),
        (lambda a: a.update(attention_mask=a["attention_mask"][:, 1:]), "attention_mask has shape"),
        (lambda a: a.update(lm_head_weight=a["lm_head_weight"][:, :5]), r"lm_head_weight must be \[V, H\]"),
        (lambda a: a.update(lm_head_weight=a["lm_head_weight"].double()), "lm_head_weight is torch.float64"),
        (lambda a: a.update(chunk=0), "chunk must be >= 1"),
        (lambda a: a.update(impl="cuda"), "impl must be one of"),
        (lambda a: a["labels"].__setitem__((0, 3), 50), "outside \\[0, V=50\\)"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    hidden, head, ids, weights, mask = _case(torch.float32)
    args = dict(hidden=hidden, lm_head_weight=head, labels=ids, weights=weights, attention_mask=mask, chunk=None, impl="auto")
    change(args)
    with pytest.raises(ValueError, match=match):
        fused_token_weighted_ce(**args)


def test_auto_is_chunked_on_cpu_and_triton_without_interpreter_is_refused(monkeypatch):
    hidden, head, ids, weights, mask = _case(torch.float32)
    assert fused_ce._resolve("auto", None, hidden, head, ids, mask)[0] == "chunked"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(fused_ce, "triton_available", lambda: True)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fused_token_weighted_ce(hidden, head, ids, weights, mask, impl="triton")


def test_package_imports_without_triton():
    code = "import sys; sys.modules['triton'] = None; import taalm_dist.losses.fused_ce as f; print(f.triton_available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (the `kernels` extra)")
def test_triton_kernel_under_interpreter_matches_spec():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, __file__, "triton"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    grid = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(grid) == len(TOL) * len(CASES) + 1
    for row in grid:
        assert all(row["ok"].values()), row
        assert max(row["err"].values()) <= row["tol"], row


if __name__ == "__main__":
    print(json.dumps(_grid(sys.argv[1] if len(sys.argv) > 1 else "chunked")))
