"""``taalm bench zero3``: per-rank θ+φ parameter and optimizer memory, and meta-step throughput, at 1 vs N
ranks of DeepSpeed ZeRO-3 on CPU (gloo, one thread per rank).

Each world size is a fresh ``torchrun`` of the real meta-trainer (:class:`taalm_dist.programs.meta_train.MetaTrainer`,
``engine.backend=deepspeed``, every tensor partitioned) on the toy task with random θ and φ of the given
shape. Every rank reports the bytes it holds: θ's and φ's parameter partitions (``ds_tensor``), φ's
optimizer state (the fp32 partitions and AdamW moments of its ZeRO-3 optimizer); then ``steps`` φ updates
are timed (after one warm-up update) and throughput is documents per second over all ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from taalm_dist.bench.common import machine_info


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _optimizer_bytes(engine) -> int:
    """Bytes of a ZeRO-3 engine's optimizer on this rank: its fp32 partitions and the AdamW state."""
    zero = engine.optimizer
    flats = getattr(zero, "fp32_partitioned_groups_flat", [])
    basic = getattr(zero, "optimizer", zero)
    state = [t for s in basic.state.values() for t in s.values()]
    return _tensor_bytes(flats) + _tensor_bytes(state)


def _shape(case: dict):
    """θ's and φ's shape: ``case["shape"]`` (a name of :data:`taalm_dist.plan.SHAPES`, ``NAME@N`` truncated; the toy
    tokenizer's vocabulary) or ``hidden`` × ``layers`` with 4× MLPs and 64-wide heads."""
    from taalm_dist.plan import Shape, named_shape

    if case.get("shape"):
        return named_shape(case["shape"])
    h = case["hidden"]
    return Shape(h, 4 * h, case["layers"], max(1, h // 64), max(1, h // 64), 0, False)


def _overrides(case: dict) -> list[str]:
    """The meta-trainer's config for a case: random θ and φ of :func:`_shape`, every tensor partitioned."""
    s = _shape(case)
    shape = [f"{m}.model.tiny.{k}={v}" for m in ("theta", "phi") for k, v in
             (("hidden_size", s.hidden), ("intermediate_size", s.intermediate), ("num_layers", s.layers),
              ("num_heads", s.heads), ("num_kv_heads", s.kv_heads))]
    dtype = case.get("dtype", "float32")
    return shape + [
        f"data.train_file={case['data']}/train.jsonl", f"data.val_file={case['data']}/val.jsonl",
        "data.max_doc_tokens=64", f"theta.trainable={case.get('theta_trainable', 'full')}", "phi.trainable=lora",
        "phi.model.tiny.seed=1", f"theta.model.dtype={dtype}", f"phi.model.dtype={dtype}",
        "meta.inner=sgd", "meta.inner_lr=0.1", "meta.method=fd", "engine.backend=deepspeed",
        "engine.param_persistence_threshold=0", f"train.out_dir={case['out']}/run", "train.overwrite=true",
        f"train.docs_per_step={case['docs_per_step']}", f"train.docs_per_inner_step={case['docs_per_step']}",
        f"train.max_steps={case['steps'] + 1}", "train.val_every=0", "train.progress=false", "tracking.mlflow=false",
    ]


def _rank_main(case: dict) -> None:
    """Runs on every rank under torchrun; rank r writes ``<out>/rank<r>.json``."""
    from taalm_dist.config import load_config
    from taalm_dist.engine import distributed as D
    from taalm_dist.programs.meta_train import MetaTrainer

    from taalm_dist.plan import plan_memory

    torch.set_num_threads(1)
    cfg = load_config(None, _overrides(case))
    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        theta_engine, phi_engine = trainer.view.engine, trainer.phi.engine
        theta_b = _tensor_bytes(p.ds_tensor for p in theta_engine.module.parameters())
        phi_b = _tensor_bytes(p.ds_tensor for p in phi_engine.module.parameters())
        trainer.train_step()  # warm-up (the first pass builds DeepSpeed's buffers)
        opt_b = _optimizer_bytes(phi_engine)
        D.barrier()
        t0 = time.perf_counter()
        for _ in range(case["steps"]):
            trainer.train_step()
        D.barrier()
        wall = time.perf_counter() - t0
        plan = plan_memory(cfg, D.world_size())
        gathered = 2 * _shape(case).layer_params() * (2 if case.get("dtype") == "bfloat16" else 4) / 2**20
        report = {"rank": D.rank(), "world_size": D.world_size(), "theta_param_mb": theta_b / 2**20,
                  "plan_theta_param_mb": plan.theta_base_mb - gathered + plan.theta_trainable_mb,
                  "plan_phi_param_mb": plan.phi_params_mb, "plan_phi_optimizer_mb": plan.phi_optimizer_mb,
                  "phi_param_mb": phi_b / 2**20, "phi_optimizer_mb": opt_b / 2**20,
                  "param_mb": (theta_b + phi_b) / 2**20, "param_and_optimizer_mb": (theta_b + phi_b + opt_b) / 2**20,
                  "wall_s": wall, "docs": case["steps"] * case["docs_per_step"]}
        Path(case["out"], f"rank{D.rank()}.json").write_text(json.dumps(report))
    finally:
        trainer.cleanup()


def bench_zero3(world_sizes=(1, 2), hidden: int = 256, layers: int = 4, steps: int = 3, docs_per_step: int = 4,
                timeout_s: float = 1800, shape: str | None = None, dtype: str = "float32",
                theta_trainable: str = "full") -> dict:
    """Run the meta-trainer at each world size (module docstring); returns ``{"bench", "machine", "cases"}``.

    Case fields (rank 0's figures; every rank holds the same share): ``world_size``, ``theta_param_mb``,
    ``phi_param_mb``, ``phi_optimizer_mb``, ``param_mb`` (θ+φ parameters on one rank), ``param_and_optimizer_mb``,
    ``docs_per_s`` (all ranks together), and, against world size 1, ``ratio_param_mem_vs_1_rank``,
    ``ratio_param_and_optimizer_mem_vs_1_rank`` and ``ratio_throughput_vs_1_rank``; and ``taalm plan``'s per-rank
    figures for the same config (``plan_theta_param_mb``: its θ base less the two gathered layers plus θ's
    trainable tensors; ``plan_phi_param_mb``, ``plan_phi_optimizer_mb``) with ``plan_error`` of their sum against
    the measured ``param_and_optimizer_mb``. ``shape``/``dtype``/``theta_trainable``: see :func:`_shape`."""
    from taalm_dist.data import toy_rows, write_pairs

    cases = []
    with tempfile.TemporaryDirectory(prefix="taalm_bench_zero3_") as tmp:
        data = Path(tmp) / "data"
        write_pairs(toy_rows(64, seed=0), data / "train.jsonl")
        write_pairs(toy_rows(8, seed=1, entity_offset=64), data / "val.jsonl")
        for n in world_sizes:
            out = Path(tmp) / f"world{n}"
            out.mkdir()
            case = {"hidden": hidden, "layers": layers, "steps": steps, "docs_per_step": docs_per_step,
                    "data": str(data), "out": str(out), "shape": shape, "dtype": dtype,
                    "theta_trainable": theta_trainable}
            _torchrun(n, case, timeout_s)
            ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]
            r0 = ranks[0]
            planned = r0["plan_theta_param_mb"] + r0["plan_phi_param_mb"] + r0["plan_phi_optimizer_mb"]
            cases.append({k: r0[k] for k in ("world_size", "theta_param_mb", "phi_param_mb", "phi_optimizer_mb",
                                             "param_mb", "param_and_optimizer_mb", "plan_theta_param_mb",
                                             "plan_phi_param_mb", "plan_phi_optimizer_mb")} |
                         {"plan_error": planned / r0["param_and_optimizer_mb"] - 1, "shape": shape, "dtype": dtype,
                          "theta_trainable": theta_trainable, "hidden": _shape(case).hidden,
                          "layers": _shape(case).layers, "docs_per_step": docs_per_step,
                          "max_rank_param_mb": max(r["param_mb"] for r in ranks),
                          "docs_per_s": r0["docs"] / max(r["wall_s"] for r in ranks)})
    one = next((c for c in cases if c["world_size"] == 1), None)
    for c in cases:
        c["ratio_param_mem_vs_1_rank"] = c["max_rank_param_mb"] / one["param_mb"] if one else None
        c["ratio_param_and_optimizer_mem_vs_1_rank"] = (c["param_and_optimizer_mb"] / one["param_and_optimizer_mb"]
                                                        if one else None)
        c["ratio_throughput_vs_1_rank"] = c["docs_per_s"] / one["docs_per_s"] if one else None
    return {"bench": "zero3", "machine": machine_info(), "cases": cases}


def _torchrun(nproc: int, case: dict, timeout_s: float) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "taalm_dist.bench.zero3", "--case", json.dumps(case)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} rank(s) failed ({res.returncode}); stderr tail:\n{res.stderr[-3000:]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench zero3", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--case", help="internal: one rank's part of a case (JSON)")
    p.add_argument("--world-sizes", default="1,2", help="comma-separated numbers of ranks")
    p.add_argument("--hidden", type=int, default=256, help="hidden size of the random θ and φ")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of θ and φ")
    p.add_argument("--steps", type=int, default=3, help="timed φ updates (after one warm-up)")
    p.add_argument("--docs-per-step", type=int, default=4, help="documents per φ update (split over ranks)")
    p.add_argument("--shape", default=None, help="θ's and φ's widths and depth from a named shape instead of "
                   "--hidden/--layers (NAME@N: its first N layers, e.g. llama2-7b@2; the toy vocabulary)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="θ's and φ's weights")
    p.add_argument("--theta-trainable", default="full", choices=["full", "lora"], help="what of θ trains")
    args = p.parse_args(argv)
    if args.case:
        _rank_main(json.loads(args.case))
        return
    res = bench_zero3([int(n) for n in args.world_sizes.split(",")], args.hidden, args.layers, args.steps,
                      args.docs_per_step, shape=args.shape, dtype=args.dtype, theta_trainable=args.theta_trainable)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
