"""The GPU check: the GPU acceptance checks and benchmarks as stages, each in its own process with its own time
budget, each writing one JSON file. ``launch/gpu_check.sh OUT_DIR`` runs them all (after installing the offline
kit, ``make gpu-kit``); this module is what it calls:

    python -m taalm_dist.bench.gpu_check run STAGE OUT_DIR      # one stage → OUT_DIR/STAGE.json
    python -m taalm_dist.bench.gpu_check timed-out STAGE OUT_DIR BUDGET_S   # the JSON of a stage its budget killed
    python -m taalm_dist.bench.gpu_check summary OUT_DIR [STAGE...]   # one line per stage; exit 1 unless all passed/skipped
    python -m taalm_dist.bench.gpu_check budgets [--scale X] [STAGE...]   # `STAGE BUDGET_S` lines, in order

Models are built from shapes (random weights: no model files travel). With CUDA the shapes are the real ones
(SmolLM2-135M for the precision checks, Llama-2-7B θ with a TinyLlama-1.1B φ for the meta-step, 4k/16k tokens at
vocabulary 32k and hidden 4096 for the loss); without CUDA the same code runs on tiny shapes (the **dry run**, in
the test suite: it proves the script and the kit long before a GPU is lent), with Triton under its interpreter.

Every stage file holds ``stage``, ``status`` (``passed`` / ``failed`` / ``skipped`` / ``timed_out``), ``summary``
(one line), ``dry_run``, ``seconds``, ``budget_s``, ``machine`` (:func:`taalm_dist.bench.common.machine_info`),
``packages`` (version and location of torch, transformers, peft, deepspeed, triton) and the stage's own results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

STAGES = {  # name → budget in seconds on one H100 (the whole check, kit install included, fits 8 minutes)
    "meta_bf16": 60,
    "loss": 80,
    "metastep_7b": 140,
    "zero3_nccl": 60,
    "placement": 45,
    "flash_attn": 30,
    "qlora": 30,
}
"""The stages in the order ``launch/gpu_check.sh`` runs them, with their time budgets (s)."""
COSINE_BAR = 0.99
"""A bf16 meta-gradient must point where the fp32 one does (cosine ≥ this)."""
REL_ERR_BAR = 1e-3
"""The 1-rank ZeRO-3 φ gradient against the one-process one: relative error ≤ this."""


class Skip(Exception):
    """A stage that cannot run here (a package missing), with the reason."""


def _device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def dry_run() -> bool:
    """True without CUDA: the stages run tiny shapes on the CPU."""
    return not torch.cuda.is_available()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _random_lm(shape: str, dtype: str, attn: str, device: torch.device, lora_targets: list[str] | None,
               quantization: str = "none", source: str = "tiny"):
    """θ of a named shape (:data:`taalm_dist.plan.SHAPES`, or ``tiny``) with random weights, made on ``device``
    (``source``: a saved model directory of that shape instead); with ``lora_targets`` LoRA r8 on them, its B
    factors drawn so the update is not zero, else trained in full."""
    from taalm_dist.bench.metastep import SHAPES
    from taalm_dist.config import LoraConfig, ModelSourceConfig, ThetaConfig, TinyModelConfig
    from taalm_dist.models import build_theta

    s = SHAPES[shape]
    tiny = TinyModelConfig(hidden_size=s.hidden, intermediate_size=s.intermediate, num_layers=s.layers,
                           num_heads=s.heads, num_kv_heads=s.kv_heads, seed=0)
    spec = ModelSourceConfig(source=source, tiny=tiny, dtype=dtype, attn_implementation=attn, quantization=quantization)
    cfg = ThetaConfig(model=spec, trainable="lora" if lora_targets else "full",
                      lora=LoraConfig(rank=8, target_modules=lora_targets or ["q_proj"]))
    # random weights are drawn where they run; a 4-bit model is placed by its loader (device_map)
    with torch.device(device) if quantization == "none" else contextlib.nullcontext():
        model = build_theta(cfg, s.vocab, seed=0, device=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.02)
    return model.to(device) if quantization == "none" else model


def _doc_and_task(vocab: int, tokens: int, device: torch.device):
    """Two documents of ``tokens`` tokens (the second padded by a quarter), their tasks (the object: the last 2
    tokens) and random weights, on ``device``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, tokens), generator=g)
    mask = torch.ones(2, tokens, dtype=torch.long)
    mask[1, tokens - tokens // 4:] = 0
    task_ids = torch.randint(5, vocab, (2, 12), generator=g)
    label = torch.zeros(2, 12, dtype=torch.long)
    label[:, -2:] = 1
    w = torch.rand(2, tokens, generator=g) * mask
    doc = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    task = {"input_ids": task_ids.to(device), "attention_mask": torch.ones_like(task_ids).to(device),
            "label_mask": label.to(device)}
    return doc, w.to(device), task


def _bf16_against_fp32(attn: str) -> dict:
    """fd meta-gradients of a bf16 θ (LoRA) against the same θ in fp32, SGD and AdamW inner steps."""
    from taalm_dist.meta import InnerStep, meta_gradient

    device, shape = _device(), ("tiny" if dry_run() else "smollm2-135m")
    targets = ["q_proj", "v_proj", "down_proj"]
    mixed = _random_lm(shape, "bfloat16", attn, device, targets)
    reference = _random_lm(shape, "float32", "sdpa", device, targets)
    reference.load_state_dict({k: v.float() for k, v in mixed.state_dict().items()})  # the same bf16-valued base
    vocab = mixed.get_output_embeddings().weight.shape[0]
    doc, w, task = _doc_and_task(vocab, 64 if dry_run() else 256, device)
    out = {"shape": shape, "attn": attn}
    for inner, lr in (("sgd", 1e-2), ("adamw", 1e-3)):
        step = InnerStep(inner, lr)
        want = meta_gradient(reference, doc, w, task, inner=step, objective="task_nll", method="fd", fd_eps=1e-3).grad
        got = meta_gradient(mixed, doc, w, task, inner=step, objective="task_nll", method="fd").grad
        out[f"cosine_{inner}"] = _cosine(got, want)
        out[f"norm_fp32_{inner}"] = float(want.norm())
    worst = min(out["cosine_sgd"], out["cosine_adamw"])
    out["status"] = "passed" if worst >= COSINE_BAR and out["norm_fp32_sgd"] > 0 else "failed"
    out["summary"] = f"bf16 vs fp32 fd meta-gradient ({attn}, {shape}): cosine sgd {out['cosine_sgd']:.4f}, " \
                     f"adamw {out['cosine_adamw']:.4f} (bar {COSINE_BAR})"
    return out


def stage_meta_bf16() -> dict:
    """A bf16-base θ's fd meta-gradient points where fp32's does (SDPA)."""
    return _bf16_against_fp32("sdpa")


def stage_flash_attn() -> dict:
    """The same with flash-attn 2 (CUDA and the ``flash_attn`` package only)."""
    from taalm_dist.models.loading import flash_attn_installed

    if dry_run():
        raise Skip("flash-attn needs CUDA")
    if not flash_attn_installed():
        raise Skip("flash-attn is not installed (pip install flash-attn)")
    return _bf16_against_fp32("flash_attention_2")


def stage_loss() -> dict:
    """The fused loss (chunked, Triton) against the eager spec: error, time and memory at 4k and 16k tokens."""
    import os

    from taalm_dist.bench.ce import bench_ce
    from taalm_dist.losses.fused_ce import triton_available

    impls = ["eager", "chunked"] + (["triton"] if triton_available() else [])
    if dry_run():
        os.environ["TRITON_INTERPRET"] = "1"  # the cases' processes inherit it: the kernel runs interpreted
        sizes = dict(tokens=[128], vocabs=[512], hiddens=[64], dtype="float32")
    else:
        sizes = dict(tokens=[4096, 16384], vocabs=[32000], hiddens=[4096], dtype="bfloat16")
    result = bench_ce(impls=impls, repeats=1 if dry_run() else 3, timeout_s=60, **sizes)
    bar = 1e-4 if sizes["dtype"] == "float32" else 2e-2  # bf16 inputs: the spec runs them in fp32
    bad = [c for c in result["cases"] if "skipped" not in c and not c["max_rel_err_vs_eager"] <= bar]
    ran = [c for c in result["cases"] if "skipped" not in c]
    parts = [f"{c['impl']}@{c['tokens']}: {c['wall_s'] * 1e3:.1f} ms, {c['peak_mb']:.0f} MB, err {c['max_rel_err_vs_eager']:.1e}"
             for c in ran]
    return {"status": "failed" if bad or not ran else "passed", "cases": result["cases"], "rel_err_bar": bar,
            "triton": "triton" in impls,
            "summary": ("" if "triton" in impls else "triton not installed; ") + "; ".join(parts)}


def stage_metastep_7b() -> dict:
    """A Llama-2-7B-shaped θ (bf16 base, LoRA r16) with a TinyLlama-1.1B-shaped φ: one fd1 meta-step against a
    plain fine-tuning step (time), and θ's side's peak memory against ``taalm plan`` for the same shape."""
    from taalm_dist.bench.metastep import bench_metastep
    from taalm_dist.config import load_config
    from taalm_dist.plan import plan_memory

    theta, phi, tokens = ("tiny", "tiny", 64) if dry_run() else ("llama2-7b", "tinyllama-1.1b", 512)
    result = bench_metastep([tokens], methods=("fd1",), inners=("sgd",), theta=theta, phi=phi, real_weights=False,
                            dtype="bfloat16", task_tokens=24, repeats=1 if dry_run() else 2, timeout_s=120)
    cases = {c["method"]: c for c in result["cases"]}
    failed = [f"{m}: {c['failed'][-300:]}" for m, c in cases.items() if "failed" in c]
    if failed:
        return {"status": "failed", "cases": result["cases"], "summary": "; ".join(failed)}
    fd1, plain = cases["fd1"], cases["plain"]
    overrides = ["theta.trainable=lora", "theta.lora.rank=16", "theta.model.dtype=bfloat16", "phi.trainable=lora",
                 "phi.lora.rank=16", "phi.model.dtype=bfloat16", "theta.model.attn_implementation=sdpa",
                 "meta.method=fd1", "meta.inner=sgd", "train.phi_graph=keep"]
    shapes = {} if dry_run() else {"theta_shape": theta, "phi_shape": phi}
    if dry_run():  # the tiny shape's vocabulary is the toy tokenizer's: give plan the bench's tiny model instead
        from taalm_dist.bench.metastep import SHAPES

        s = SHAPES["tiny"]
        overrides += [f"theta.model.tiny.hidden_size={s.hidden}", f"theta.model.tiny.intermediate_size={s.intermediate}",
                      f"phi.model.tiny.hidden_size={s.hidden}", f"phi.model.tiny.intermediate_size={s.intermediate}"]
    p = plan_memory(load_config(None, overrides), 1, tokens=tokens, docs=1, **shapes)
    plan_theta = p.meta_step_copies_mb + p.theta_activations_mb + p.loss_mb
    measured = fd1["theta_peak_mb"]
    out = {"theta": theta, "phi": phi, "tokens": tokens, "cases": result["cases"],
           "ratio_time_fd1_vs_plain": fd1["wall_s"] / plain["wall_s"],
           "theta_side_peak_mb": measured, "plan_theta_side_mb": plan_theta,
           "plan_error": plan_theta / measured - 1 if measured > 0 else None, "plan_mb": p.as_dict(),
           "memory_measure": "CPU peak RSS (not comparable with the plan)" if dry_run() else "max_memory_allocated"}
    ok = all(torch.isfinite(torch.tensor(c["meta_grad_norm"])) for c in result["cases"] if "meta_grad_norm" in c)
    out["status"] = "passed" if ok else "failed"
    if dry_run():
        memory = f"θ side peak RSS {measured:.0f} MB (dry run: RSS is not what the plan predicts, {plan_theta:.1f} MB)"
    else:
        memory = f"θ side peak {measured:.0f} MB, plan {plan_theta:.0f} MB ({out['plan_error']:+.0%})"
    out["summary"] = (f"{theta} θ + {phi} φ at {tokens} tokens: fd1 meta-step {fd1['wall_s']:.2f} s = "
                      f"{out['ratio_time_fd1_vs_plain']:.1f}× a plain step; {memory}")
    return out


def toy_config(tmp: Path, *overrides: str):
    """A single-process meta-training config on the toy task (tiny θ and φ, seconds per run), its data written
    under ``tmp`` (also the test suite's toy config)."""
    from taalm_dist.config import load_config
    from taalm_dist.data import toy_rows, write_pairs

    write_pairs(toy_rows(200, seed=0), tmp / "train.jsonl")
    write_pairs(toy_rows(16, seed=1, entity_offset=200), tmp / "val.jsonl")
    return load_config(None, [
        "theta.model.tiny.hidden_size=64", "theta.trainable=full", "phi.model.tiny.hidden_size=64",
        "phi.model.tiny.seed=1", "phi.trainable=full", f"data.train_file={tmp / 'train.jsonl'}",
        f"data.val_file={tmp / 'val.jsonl'}", "meta.inner=sgd", "meta.inner_lr=0.1", "meta.method=fd",
        f"train.out_dir={tmp / 'run'}", "train.max_steps=30", "train.docs_per_step=8", "train.lr=3e-3",
        "train.val_every=15", "train.progress=false", "tracking.mlflow=false", *overrides])


def phi_gradient(cfg, ckl_val: dict | None = None) -> tuple[torch.Tensor, str]:
    """φ's gradient (flat, float32, on the CPU) of the meta-trainer's pass over documents [0, 1] for ``cfg``, and
    the device it ran on; with ``ckl_val`` (a dict), the CKL validation's scores are put into it first."""
    from taalm_dist.programs.meta_train import MetaTrainer

    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        if ckl_val is not None:
            ckl_val.update(trainer.ckl_validate(baselines=True))
        doc, w, mg = trainer.micro_step_meta_gradient([0, 1])
        w = trainer.phi.weights(doc, grad=True)
        loss = (w * mg.grad).sum() * trainer.phi.surrogate_scale(1)
        if trainer.distributed:
            from deepspeed.utils import safe_get_full_grad

            trainer.phi.engine.backward(loss)
            grads = {n: safe_get_full_grad(p).float().cpu() for n, p in trainer.phi.module.named_parameters()
                     if p.requires_grad}
        else:
            loss.backward()
            grads = {n: p.grad.float().cpu() for n, p in trainer.phi.module.named_parameters() if p.requires_grad}
        return torch.cat([grads[k].flatten() for k in sorted(grads)]), str(doc["input_ids"].device)
    finally:
        trainer.cleanup()


def stage_zero3_nccl() -> dict:
    """A 1-rank DeepSpeed ZeRO-3 meta-step (NCCL; gloo in the dry run) gives φ the one-process gradient."""
    import deepspeed

    common = ["train.docs_per_step=2", "train.docs_per_inner_step=2", "phi.trainable=lora", "phi.lora.rank=4",
              "theta.trainable=lora", "theta.lora.rank=4", "engine.param_persistence_threshold=0", "train.val_every=0"]
    with tempfile.TemporaryDirectory() as tmp:
        single, _ = phi_gradient(toy_config(Path(tmp) / "one", *common, "engine.backend=single"))
        zero3, device = phi_gradient(toy_config(Path(tmp) / "zero3", *common, "engine.backend=deepspeed"))
    rel = float((zero3 - single).norm() / single.norm()) if single.norm() > 0 else float("inf")
    backend = "gloo" if dry_run() else "nccl"
    return {"status": "passed" if rel <= REL_ERR_BAR else "failed", "rel_err": rel, "bar": REL_ERR_BAR,
            "device": device, "backend": backend, "deepspeed": deepspeed.__version__,
            "summary": f"1-rank ZeRO-3 ({backend}, deepspeed {deepspeed.__version__}) φ gradient vs one process: "
                       f"relative error {rel:.1e} (bar {REL_ERR_BAR:g}) on {device}"}


def stage_placement() -> dict:
    """Every batch θ and φ see during a short meta-training run came through the runtime's placement function
    and is on the run's device."""
    from taalm_dist.bench.placement import PlacementRecorder
    from taalm_dist.programs.meta_train import MetaTrainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = toy_config(Path(tmp), "train.max_steps=2", "train.docs_per_step=2", "train.val_every=1",
                          "train.val_docs=2", "train.ckl_val_every=2", "train.ckl_val_docs=2", "train.ckl_val_passes=1")
        trainer = MetaTrainer(cfg)
        try:
            trainer.setup()
            device = str(trainer.rt.device)
            params_on_device = all(p.device == trainer.rt.device for p in trainer.view.params) and all(
                p.device == trainer.rt.device for p in trainer.phi.module.parameters())
            rec = PlacementRecorder(trainer.rt, {"theta": trainer.view.model, "phi": trainer.phi.module})
            trainer.train()
        finally:
            trainer.cleanup()
    ok = params_on_device and rec.calls["theta"] > 10 and rec.calls["phi"] > 4 and not rec.unplaced
    expected = "cpu" if dry_run() else "cuda"
    ok = ok and device.startswith(expected)
    return {"status": "passed" if ok else "failed", "device": device, "calls": rec.calls,
            "unplaced": rec.unplaced[:20], "params_on_device": params_on_device,
            "summary": f"on {device}: θ called {rec.calls['theta']}×, φ {rec.calls['phi']}×, "
                       f"{len(rec.unplaced)} inputs not placed by the runtime"}


def stage_qlora() -> dict:
    """A QLoRA θ (NF4 base computing in bf16, fp32 adapters) gives a finite, non-zero meta-gradient (CUDA and
    bitsandbytes only)."""
    import importlib.util

    from taalm_dist.meta import InnerStep, meta_gradient

    if dry_run():
        raise Skip("QLoRA (bitsandbytes NF4) needs CUDA")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed (pip install bitsandbytes)")
    device = _device()
    with tempfile.TemporaryDirectory() as tmp:  # a SmolLM2-shaped model saved as a directory, loaded in 4 bits
        _random_lm("smollm2-135m", "bfloat16", "sdpa", torch.device("cpu"), None).save_pretrained(tmp)
        model = _random_lm("smollm2-135m", "bfloat16", "sdpa", device, ["q_proj", "v_proj"], "4bit", source=tmp)
    four_bit = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    doc, w, task = _doc_and_task(model.get_output_embeddings().weight.shape[0], 128, device)
    grad = meta_gradient(model, doc, w, task, inner=InnerStep("adamw", 1e-3), objective="task_nll", method="fd").grad
    ok = four_bit and bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
    return {"status": "passed" if ok else "failed", "linear4bit": four_bit, "meta_grad_norm": float(grad.norm()),
            "summary": f"QLoRA fd meta-gradient: Linear4bit {four_bit}, norm {float(grad.norm()):.3e}"}


def packages() -> dict:
    """Version and location of the packages the check depends on (where the kit's copies were found)."""
    import importlib

    out = {}
    for name in ("torch", "transformers", "peft", "deepspeed", "triton", "pydantic"):
        try:
            m = importlib.import_module(name)
            out[name] = {"version": getattr(m, "__version__", None), "path": str(Path(m.__file__).parent)}
        except Exception as e:  # noqa: BLE001 — a package that does not import is reported, not fatal
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def _write(path: Path, record: dict) -> None:
    from taalm_dist.integrity import write_atomic

    write_atomic(path, json.dumps(record, indent=1, default=str) + "\n")


def run_stage(name: str, out_dir: Path) -> dict:
    """Run stage ``name`` in this process, write ``out_dir/name.json`` and return it (a stage that raises is
    ``failed`` with the error's tail; one that cannot run here is ``skipped`` with the reason)."""
    from taalm_dist.bench.common import machine_info

    t0 = time.perf_counter()
    try:
        result = globals()[f"stage_{name}"]()
    except Skip as e:
        result = {"status": "skipped", "summary": str(e)}
    except Exception as e:  # noqa: BLE001 — the check goes on to the next stage; the JSON keeps the traceback
        tb = traceback.format_exc()
        result = {"status": "failed", "summary": f"{type(e).__name__}: {str(e)[:300]}", "traceback": tb[-4000:]}
    record = {"stage": name, **result, "dry_run": dry_run(), "seconds": round(time.perf_counter() - t0, 2),
              "budget_s": STAGES[name], "machine": machine_info(), "packages": packages()}
    _write(out_dir / f"{name}.json", record)
    return record


def summary_lines(out_dir: Path, stages: list[str]) -> tuple[list[str], bool]:
    """One line per stage of ``stages`` from ``out_dir``'s JSON files (a missing file is a failure), and whether
    every one passed or was skipped."""
    lines, ok = [], True
    for name in stages:
        path = out_dir / f"{name}.json"
        try:
            r = json.loads(path.read_text())
            status, text, secs = r["status"], r.get("summary", ""), r.get("seconds")
        except (OSError, ValueError, KeyError) as e:
            status, text, secs = "failed", f"no result ({type(e).__name__}: {path})", None
        ok &= status in ("passed", "skipped")
        took = f"{secs:.0f}/{STAGES[name]} s" if isinstance(secs, (int, float)) else f"-/{STAGES[name]} s"
        lines.append(f"{name:12s} {status.upper():9s} {took:>9s}  {text}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taalm_dist.bench.gpu_check", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run one stage, write OUT_DIR/STAGE.json")
    r.add_argument("stage", choices=list(STAGES))
    r.add_argument("out_dir", type=Path)
    t = sub.add_parser("timed-out", help="write the JSON of a stage that its budget stopped")
    t.add_argument("stage", choices=list(STAGES))
    t.add_argument("out_dir", type=Path)
    t.add_argument("budget_s", type=float)
    s = sub.add_parser("summary", help="one line per stage; exit 1 unless every stage passed or was skipped")
    s.add_argument("out_dir", type=Path)
    s.add_argument("stages", nargs="*", help="these stages only (default: all)")
    b = sub.add_parser("budgets", help="print `STAGE BUDGET_S` lines, in the order to run them")
    b.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a slower card)")
    b.add_argument("stages", nargs="*", help="these stages only (default: all)")
    args = p.parse_args(argv)
    unknown = [x for x in getattr(args, "stages", None) or [] if x not in STAGES]
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {list(STAGES)}")
    if args.verb == "budgets":
        for name in args.stages or STAGES:
            print(name, round(STAGES[name] * args.scale))
        return 0
    if args.verb == "run":
        record = run_stage(args.stage, args.out_dir)
        return 0 if record["status"] in ("passed", "skipped") else 1
    if args.verb == "timed-out":
        _write(args.out_dir / f"{args.stage}.json", {
            "stage": args.stage, "status": "timed_out", "dry_run": dry_run(), "seconds": args.budget_s,
            "budget_s": args.budget_s, "summary": f"stopped at its budget of {args.budget_s:g} s"})
        return 0
    lines, ok = summary_lines(args.out_dir, args.stages or list(STAGES))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
