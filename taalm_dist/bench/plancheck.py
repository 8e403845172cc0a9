"""``taalm bench plancheck``: ``taalm plan``'s θ-side memory against the live tensor memory measured on the same case.

Each case is one meta-gradient (the θ side of a meta-step: inner step, objective gradient, difference forwards)
of θ = SmolLM2-135M with LoRA r16 on every projection (``bench metastep``'s models) on one document of ``tokens``
tokens, in a fresh process. Memory is measured as live tensors, not RSS: ``torch.profiler`` with
``profile_memory`` records every allocation and free, and the peak of the memory timeline (all categories) minus its
start (the loaded models) is what the plan predicts as ``meta_step_copies + theta_activations + loss`` — the same
quantity a GPU's ``max_memory_allocated`` reports. (RSS overstates it on the CPU: the allocator keeps freed pages.)

Other shapes (``--theta-shape llama2-7b@2 --phi-shape tinyllama-1.1b --dtype bfloat16``): random θ and φ of those
shapes (``NAME@N``: the first N layers, :func:`taalm_dist.plan.named_shape`), LoRA r16 on every projection of θ,
planned with the same shapes and dtype. Each case also reports the memory held when the step starts (θ, its
LoRA and the batch: ``static_mb``) against the plan's θ base + trainable tensors.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from taalm_dist.bench.common import machine_info, run_case_or_failure
from taalm_dist.bench.metastep import SMOLLM2
METHODS = ("fd", "fd1", "fd-ckpt", "fd1-ckpt", "double_backward")
"""``double_backward`` (the official approach, which the plan does not model) is measured for the ratio only."""
CATEGORIES = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
              "unknown")
"""The profiler's memory categories in its timeline's order (``peak_by_category_mb``: each one's growth at the peak)."""


def _plan_overrides(case: dict) -> list[str]:
    return [f"theta.model.source={SMOLLM2}", "theta.trainable=lora", "theta.model.attn_implementation=sdpa",
            f"theta.model.dtype={case.get('dtype', 'float32')}", f"phi.model.dtype={case.get('dtype', 'float32')}",
            f"meta.inner={case['inner']}", f"meta.method={case['method'].removesuffix('-ckpt')}",
            f"engine.gradient_checkpointing={str(case['method'].endswith('-ckpt')).lower()}"]


def _plan_shapes(case: dict) -> dict:
    """``plan_memory``'s shape arguments for a case (SmolLM2's own shape needs none)."""
    theta = case.get("theta", "smollm2-135m")
    return {} if theta == "smollm2-135m" else {"theta_shape": theta, "phi_shape": case.get("phi", "smollm2-135m")}


def _measure(case: dict) -> dict:
    """One case in this process (the ``--case`` entry point)."""
    from torch.profiler import ProfilerActivity, profile

    from taalm_dist.bench.metastep import _build
    from taalm_dist.config import LossConfig, load_config
    from taalm_dist.losses.lm_head import per_token_loss_fn
    from taalm_dist.meta import InnerStep, meta_gradient
    from taalm_dist.plan import plan_memory

    method = case["method"].removesuffix("-ckpt")
    theta_shape = case.get("theta", "smollm2-135m")
    build = {"method": case["method"], "inner": case["inner"], "tokens": case["tokens"], "task_tokens": 24,
             "theta": theta_shape, "phi": case.get("phi", "smollm2-135m"), "real_weights": theta_shape == "smollm2-135m",
             "dtype": case.get("dtype", "float32")}
    torch.set_num_threads(case.get("threads") or torch.get_num_threads())
    theta, phi, doc, task = _build(build, "cpu")
    loss_fn = per_token_loss_fn(LossConfig(impl="auto"), method)
    with torch.no_grad():
        w = phi(doc["input_ids"], doc["attention_mask"])
    del phi

    def theta_side():
        meta_gradient(theta, doc, w, task, inner=InnerStep(case["inner"], 1e-3), objective="task_nll", method=method,
                      per_token_loss=loss_fn)

    theta_side()  # warm-up: lazily built state is not part of the step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        theta_side()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_memory_timeline(f.name, device="cpu")
        timeline = json.load(open(f.name))
    totals = [sum(sizes) for sizes in timeline[1]]
    live = (max(totals) - totals[0]) / 2**20
    at_peak = timeline[1][totals.index(max(totals))]
    over = [(a - b) / 2**20 for a, b in zip(at_peak, timeline[1][0])]  # index 0 is unused; then the categories
    case = {**case, "peak_by_category_mb": {name: round(mb, 1) for name, mb in zip(CATEGORIES, over[1:]) if mb}}
    static = totals[0] / 2**20
    if method == "double_backward":
        return {**case, "live_peak_mb": live, "static_mb": static, "plan_mb": None, "plan_error": None,
                "plan_terms_mb": None}
    p = plan_memory(load_config(None, _plan_overrides(case)), 1, tokens=case["tokens"], docs=1, **_plan_shapes(case))
    planned = p.meta_step_copies_mb + p.theta_activations_mb + p.loss_mb
    planned_static = p.theta_base_mb + p.theta_trainable_mb
    return {**case, "live_peak_mb": live, "plan_mb": planned, "plan_error": planned / live - 1,
            "plan_terms_mb": {"copies": p.meta_step_copies_mb, "activations": p.theta_activations_mb, "loss": p.loss_mb},
            "static_mb": static, "plan_static_mb": planned_static, "plan_static_error": planned_static / static - 1}


def bench_plancheck(tokens: list[int], methods=("fd", "fd-ckpt"), inner: str = "sgd", timeout_s: float = 1800,
                    theta: str = "smollm2-135m", phi: str = "smollm2-135m", dtype: str = "float32",
                    threads: int | None = None) -> dict:
    """Every (tokens, method) case in a fresh process; returns the ``{"bench", "machine", "cases"}`` JSON object (a case
    that failed, e.g. out of memory under the profiler at long lengths, has ``failed`` instead of measurements).
    ``theta`` / ``phi``: shape names (module docstring); ``dtype``: both models' weights."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
    shape = {} if theta == "smollm2-135m" and dtype == "float32" else {"theta": theta, "phi": phi, "dtype": dtype}
    cases = [run_case_or_failure("taalm_dist.bench.plancheck", {"method": m, "inner": inner, "tokens": T, **shape,
                                                                 "threads": threads}, timeout_s)
             for T in tokens for m in methods]  # a case the profiler's bookkeeping runs out of memory on: recorded
    return {"bench": "plancheck", "machine": machine_info(), "cases": cases}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench plancheck", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--case", help="internal: measure one case given as JSON and print it")
    p.add_argument("--tokens", default="512,1024,2048", help="comma-separated document lengths")
    p.add_argument("--methods", default="fd,fd-ckpt", help=f"comma-separated, from {METHODS}")
    p.add_argument("--inner", default="sgd", choices=["sgd", "adamw"], help="inner step")
    p.add_argument("--theta-shape", default="smollm2-135m", help="θ's shape (random weights unless smollm2-135m; "
                   "NAME@N: its first N layers, e.g. llama2-7b@2)")
    p.add_argument("--phi-shape", default="smollm2-135m", help="φ's shape (e.g. tinyllama-1.1b)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="θ's and φ's weights")
    p.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(_measure(json.loads(args.case))))
        return
    res = bench_plancheck([int(t) for t in args.tokens.split(",")], args.methods.split(","), args.inner,
                          args.timeout, args.theta_shape, args.phi_shape, args.dtype, args.threads)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
