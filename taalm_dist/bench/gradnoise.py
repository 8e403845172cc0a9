"""``taalm bench gradnoise``: each meta-gradient method's φ gradient against the exact one and the update spread.

How far one method's (or step's) φ update is from another's, against how far two φ updates on different documents
are from each other: whether a cheaper or less exact method changes anything φ's optimizer can notice.

The run is the product's one-process :class:`taalm_dist.programs.meta_train.MetaTrainer` on a config (default: the
demo's) and the synthetic meta-training pairs (:func:`taalm_dist.bench.metatrain.bench_trainer`). For each of
``updates`` φ updates (their documents drawn as the trainer draws them) and each method, the θ side runs exactly as in
training and φ's gradient of the update (``∂/∂φ Σ w·dL/dw``, summed over the update's passes with the trainer's
scale) is taken, without stepping φ: every method sees the same φ, θ₀ and documents. The first method is the
reference. Per method:

* ``rel_err``: ``‖g_m − g_ref‖ / ‖g_ref‖`` per update (and the token-level ``dL/dw``'s
  ``meta_grad_rel_err``);
* ``error_to_noise``: ``rms_k ‖g_m,k − g_ref,k‖ / rms_k ‖g_ref,k − ḡ_ref‖`` (with K/(K−1)): the method's deviation
  against the update-to-update spread of the reference's gradients (the noise of a stochastic gradient). Far below
  1: the optimizer cannot tell the methods apart update by update;
* ``bias_rel``: ``‖mean_k (g_m,k − g_ref,k)‖ / ‖ḡ_ref‖``: the part that does not average out over updates.

For the reference: ``noise_rel`` = ``rms_k ‖g_ref,k − ḡ_ref‖ / ‖ḡ_ref‖`` and the mean cosine between two
updates' gradients.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time
from pathlib import Path

import torch

from taalm_dist.bench.common import machine_info
from taalm_dist.bench.metatrain import DEMO_CONFIG, add_trainer_arguments, bench_trainer, print_result

METHODS = ("jvp", "fd", "fd1")
"""The compared meta-gradient methods. A difference may name its step: ``fd1:3e-4`` (``meta.fd_eps``; without it the
config's, by default per dtype). ``jvp`` (exact) needs θ loaded for forward-mode AD: run with the overrides
``theta.model.attn_implementation=taalm_eager loss.impl=eager``."""


def parse_method(spec: str) -> tuple[str, float | None]:
    """``"fd"`` → ``("fd", None)``, ``"fd1:3e-4"`` → ``("fd1", 3e-4)``; refuses other methods and steps <= 0."""
    method, _, eps = spec.partition(":")
    try:
        step = float(eps) if eps else None
    except ValueError:
        step = -1.0
    if method not in METHODS or (step is not None and not step > 0):
        raise ValueError(f"method {spec!r} must be one of {list(METHODS)}, optionally with a step > 0 (e.g. fd1:3e-4)")
    return method, step


def update_gradient(trainer, passes: list[list[int]], method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """φ's gradient of one update on the documents ``passes`` (indices per batched pass), with ``meta.method`` (and
    ``meta.fd_eps``) from ``method`` (:func:`parse_method`), φ not stepped. Returns ``(flat φ gradient [P] float64,
    dL/dw of all passes flattened float64)``."""
    if not hasattr(trainer.phi, "params"):
        raise ValueError("taalm bench gradnoise runs on one process (φ without DeepSpeed): set engine.deepspeed=false")
    saved_cfg, saved_rng = trainer.cfg, trainer.rng.getstate()  # the same restrict-term documents for every method
    name, eps = parse_method(method)
    meta = dataclasses.replace(saved_cfg.meta, method=name, fd_eps=eps if eps is not None else saved_cfg.meta.fd_eps)
    trainer.cfg = dataclasses.replace(saved_cfg, meta=meta)
    try:
        scale = trainer.phi.surrogate_scale(trainer.update_layout()[2])
        total = [torch.zeros_like(p, dtype=torch.float64) for p in trainer.phi.params]
        token_grads = []
        for idx in passes:
            doc, w, mg = trainer.micro_step_meta_gradient(idx)
            if w.grad_fn is None:  # φ's graph not kept (train.phi_graph=recompute)
                w = trainer.phi.weights(doc, grad=True)
            grads = torch.autograd.grad((w * mg.grad.to(w.dtype)).sum() * scale, trainer.phi.params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t.add_(g.double())
            token_grads.append(mg.grad.double().flatten())
    finally:
        trainer.cfg = saved_cfg
        trainer.rng.setstate(saved_rng)
    return torch.cat([t.flatten() for t in total]), torch.cat(token_grads)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def summarize(grads: dict[str, list[torch.Tensor]], token_grads: dict[str, list[torch.Tensor]],
              seconds: dict[str, list[float]]) -> list[dict]:
    """The cases of the JSON object (module docstring) from each method's per-update φ gradients ``[P]``, dL/dw and
    seconds; the first method of ``grads`` is the reference. Needs at least 2 updates."""
    methods = list(grads)
    ref = torch.stack(grads[methods[0]])  # [K, P]
    k = ref.shape[0]
    if k < 2:
        raise ValueError(f"updates={k} must be >= 2 to measure the spread between updates")
    mean = ref.mean(dim=0)
    rms_noise = math.sqrt(float((ref - mean).pow(2).sum()) / (k - 1))
    pairs = [torch.nn.functional.cosine_similarity(ref[i], ref[j], dim=0).item()
             for i, j in itertools.combinations(range(k), 2)]
    cases = []
    for m in methods:
        g = torch.stack(grads[m])
        err = g - ref
        case = {"method": m, "reference": methods[0], "updates": k,
                "s_per_update": sum(seconds[m]) / k,
                "rel_err": [_rel(a, b) for a, b in zip(g, ref)],
                "cos_vs_reference": [torch.nn.functional.cosine_similarity(a, b, dim=0).item() for a, b in zip(g, ref)],
                "meta_grad_rel_err": [_rel(a, b) for a, b in zip(token_grads[m], token_grads[methods[0]])],
                "error_to_noise": math.sqrt(float(err.pow(2).sum()) / k) / max(rms_noise, 1e-300),
                "bias_rel": float(err.mean(dim=0).norm() / mean.norm().clamp_min(1e-300))}
        case["rel_err_mean"] = sum(case["rel_err"]) / k
        case["rel_err_max"] = max(case["rel_err"])
        if m == methods[0]:
            case["noise_rel"] = rms_noise / max(float(mean.norm()), 1e-300)
            case["cos_between_updates_mean"] = sum(pairs) / len(pairs)
        cases.append(case)
    return cases


def bench_gradnoise(config: str | Path = DEMO_CONFIG, overrides: list[str] | tuple[str, ...] = (),
                    methods: tuple[str, ...] = METHODS, updates: int = 8, warm_updates: int = 0,
                    threads: int | None = None, n_meta: int = 200) -> dict:
    """Compare ``methods`` (the first is the reference) over ``updates`` φ updates after ``warm_updates`` real ones
    (φ trained a little first, with the config's own method); returns ``{"bench", "machine", "config",
    "overrides", "warm_updates", "cases"}`` (fields of the cases in the module docstring)."""
    for m in methods:
        parse_method(m)
    if len(methods) < 2 or len(set(methods)) != len(methods):
        raise ValueError(f"methods={list(methods)} must be two or more different ones (of {list(METHODS)})")
    if updates < 2 or warm_updates < 0:
        raise ValueError(f"updates={updates} must be >= 2 and warm_updates={warm_updates} >= 0")
    grads = {m: [] for m in methods}
    token_grads = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    with bench_trainer(config, overrides, warm_updates + 1, threads, n_meta) as (trainer, _):
        for _ in range(warm_updates):
            trainer.train_step()
        passes, docs_each_pass, _ = trainer.update_layout()
        for _ in range(updates):
            docs = [[trainer.order.next() for _ in range(docs_each_pass)] for _ in range(passes)]
            for m in methods:
                t0 = time.perf_counter()
                g, tg = update_gradient(trainer, docs, m)
                seconds[m].append(time.perf_counter() - t0)
                grads[m].append(g)
                token_grads[m].append(tg)
        cfg = trainer.cfg
    return {"bench": "gradnoise", "machine": machine_info(), "config": str(config), "overrides": list(overrides),
            "inner": cfg.meta.inner, "docs_per_step": cfg.train.docs_per_step, "docs_per_pass": cfg.train.docs_per_pass,
            "warm_updates": warm_updates, "cases": summarize(grads, token_grads, seconds)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench gradnoise", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS}, each "
                   "optionally with its step (fd1:3e-4); the first is the reference")
    p.add_argument("--updates", type=int, default=8, help="φ updates compared (their documents differ)")
    p.add_argument("--warm-updates", type=int, default=0, help="real φ updates run first (φ trained a little)")
    add_trainer_arguments(p, "meta.inner=sgd")
    args = p.parse_args(argv)
    print_result(lambda: bench_gradnoise(args.config, args.overrides, tuple(args.methods.split(",")), args.updates,
                                         args.warm_updates, args.threads, args.n_meta))


if __name__ == "__main__":
    main()
