"""Benchmark of the token-weighted CE: eager (full logits) vs fused chunked / Triton / Liger.

    taalm bench ce --tokens 4096 --vocab 49152 --hidden 2048 --impls eager,chunked,triton,liger

Each case (impl, tokens T, vocab V, hidden H) runs in a fresh process: random inputs (``hidden [1, T, H]``
requiring grad, ``W [V, H]``, frozen unless ``--train-head``), one warm-up, then the best of ``repeats``
forward + backward passes. Memory is the peak over the inputs: CPU, peak RSS minus the RSS right after the
inputs are built; CUDA, ``max_memory_allocated`` minus the allocated after the inputs. After measuring,
the case's loss and gradients are compared with the eager spec evaluated in fp32 on the same inputs.

"liger" is Liger-Kernel's fused linear CE: a plain token mean (it has no per-token weights), so it is
compared with the spec under uniform weights. "triton" and "liger" need CUDA (triton also runs on the CPU under
``TRITON_INTERPRET=1``, slowly: for checking, not timing); elsewhere they are reported with ``"skipped"``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from taalm_dist.bench.common import PeakMemory, best_time, machine_info, peak_rss_mb, run_case_subprocess
from taalm_dist.losses import token_weighted_ce
from taalm_dist.losses.fused_ce import fused_token_weighted_ce, triton_interpreted

IMPLS = ("eager", "chunked", "triton", "liger")


def bench_ce(
    tokens: list[int],
    vocabs: list[int],
    hiddens: list[int],
    impls: list[str],
    dtype: str = "float32",
    repeats: int = 1,
    train_head: bool = False,
    threads: int | None = None,
    timeout_s: float = 1800,
) -> dict:
    """Measure every (impl, tokens, vocab, hidden) case, each in a fresh subprocess.

    Args:
        tokens, vocabs, hiddens: sizes T (tokens in one sequence), V, H; all combinations are run.
        impls: any of ``"eager"``, ``"chunked"``, ``"triton"``, ``"liger"``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float64"``: dtype of hidden and W.
        repeats: timed passes per case (best is kept), after one warm-up.
        train_head: W requires grad (else frozen, the LoRA case).
        threads: ``torch.set_num_threads`` in each case's process (None: torch's default).
        timeout_s: limit per case, in seconds.

    Returns:
        ``{"bench": "ce", "machine": machine_info(), "cases": [...]}``; each case has ``impl, tokens, vocab,
        hidden, dtype, train_head, device, wall_s`` (s, best forward + backward), ``peak_mb`` (MB over the
        inputs), ``peak_rss_mb`` (CPU: absolute peak RSS), ``loss`` (the impl's loss on the case's inputs;
        under uniform weights for liger), ``max_rel_err_vs_eager`` (norm-wise, worst of loss and gradients,
        vs the fp32 eager spec), ``ratio_time_vs_eager`` and ``ratio_mem_vs_eager`` (None without an eager
        case), or ``skipped`` with the reason.
    """
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise ValueError(f"unknown impls {bad}; choose from {IMPLS}")
    cases = []
    for T, V, H in itertools.product(tokens, vocabs, hiddens):
        group = []
        for impl in impls:
            case = {"impl": impl, "tokens": T, "vocab": V, "hidden": H, "dtype": dtype, "train_head": train_head}
            case |= {"repeats": repeats, "threads": threads}
            group.append(run_case_subprocess("taalm_dist.bench.ce", case, timeout_s))
        eager = next((c for c in group if c["impl"] == "eager" and "skipped" not in c), None)
        for c in group:
            ok = eager is not None and "skipped" not in c
            c["ratio_time_vs_eager"] = c["wall_s"] / eager["wall_s"] if ok and eager["wall_s"] > 0 else None
            c["ratio_mem_vs_eager"] = c["peak_mb"] / eager["peak_mb"] if ok and eager["peak_mb"] > 0 else None
        cases += group
    return {"bench": "ce", "machine": machine_info(), "cases": cases}


def _inputs(T, V, H, dtype, train_head, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(1, T, H, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    head = (torch.randn(V, H, generator=g) / H**0.5).to(device=device, dtype=dtype).requires_grad_(train_head)
    ids = torch.randint(0, V, (1, T), generator=g).to(device)
    weights = torch.rand(1, T, generator=g).to(device)
    mask = torch.ones(1, T, dtype=torch.long, device=device)
    return hidden, head, ids, weights, mask


def _loss_fn(impl):
    """``fn(hidden, head, ids, weights, mask) -> scalar loss`` for one impl, or a skip reason (str)."""
    if impl == "eager":
        return lambda h, W, ids, w, m: token_weighted_ce(h @ W.T, ids, w, m).loss
    if impl == "chunked":
        return lambda h, W, ids, w, m: fused_token_weighted_ce(h, W, ids, w, m, impl="chunked")
    if impl == "triton":
        if not (torch.cuda.is_available() or triton_interpreted()):
            return "triton needs CUDA (or TRITON_INTERPRET=1: its interpreter on the CPU)"
        return lambda h, W, ids, w, m: fused_token_weighted_ce(h, W, ids, w, m, impl="triton")
    if not torch.cuda.is_available():
        return f"{impl} needs CUDA"
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as e:
        return f"liger_kernel is not installed ({e})"
    liger = LigerFusedLinearCrossEntropyLoss()
    return lambda h, W, ids, w, m: liger(W, h[0, :-1], ids[0, 1:])


def _measure(case: dict) -> dict:
    """Run one case in this process (the ``--case`` entry point)."""
    T, V, H, impl = case["tokens"], case["vocab"], case["hidden"], case["impl"]
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {k: case[k] for k in ("impl", "tokens", "vocab", "hidden", "dtype", "train_head")}
    out |= {"device": device, "threads": torch.get_num_threads()}
    fn = _loss_fn(impl)
    if isinstance(fn, str):
        return out | {"skipped": fn}
    hidden, head, ids, weights, mask = _inputs(T, V, H, dtype, case["train_head"], device)
    memory = PeakMemory(device)
    params = [hidden, head] if case["train_head"] else [hidden]

    def step():
        for p in params:
            p.grad = None
        fn(hidden, head, ids, weights, mask).backward()

    out["wall_s"] = best_time(step, case["repeats"], device == "cuda")
    if device == "cuda":
        out |= {"peak_mb": memory.peak(), "peak_rss_mb": None}
    else:
        out |= {"peak_mb": memory.peak(), "peak_rss_mb": peak_rss_mb(), "base_rss_mb": memory.base}
    out["loss"], out["max_rel_err_vs_eager"] = _error_vs_spec(impl, hidden, head, ids, weights, mask, params)
    return out


def _error_vs_spec(impl, hidden, head, ids, weights, mask, params) -> tuple[float, float]:
    """The impl's loss, and the worst norm-wise relative error of the loss and the gradients vs the eager spec
    in fp32."""
    got = [p.grad.detach().clone() for p in params]
    w = torch.ones_like(weights) if impl == "liger" else weights
    with torch.no_grad():
        loss = _loss_fn(impl)(hidden, head, ids, w, mask)
    ref_params = [p.detach().float().requires_grad_(True) for p in params]
    h32 = ref_params[0]
    W32 = ref_params[1] if len(params) > 1 else head.detach().float()
    ref = token_weighted_ce(h32 @ W32.T, ids, w.float(), mask).loss
    ref_grads = torch.autograd.grad(ref, ref_params)
    pairs = [(loss, ref.detach()), *zip(got, ref_grads)]
    err = max(((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item() for a, b in pairs)
    return loss.item(), err


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="taalm bench ce", description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--case", help="internal: measure one case given as JSON and print it")
    parser.add_argument("--tokens", default="1024,4096,16384", help="comma-separated token counts T")
    parser.add_argument("--vocab", default="32000,49152", help="comma-separated vocabulary sizes V")
    parser.add_argument("--hidden", default="2048,4096", help="comma-separated hidden sizes H (on a CPU pick a few "
                        "cases: the full grid takes hours)")
    parser.add_argument("--impls", default="eager,chunked,triton,liger", help=f"comma-separated, from {IMPLS}")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case (best kept)")
    parser.add_argument("--train-head", action="store_true", help="W requires grad (default: frozen)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's)")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(_measure(json.loads(args.case))))
        return
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    res = bench_ce(ints(args.tokens), ints(args.vocab), ints(args.hidden), args.impls.split(","),
                   args.dtype, args.repeats, args.train_head, args.threads)  # fmt: skip
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
