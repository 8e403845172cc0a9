"""attn_implementation (auto / flash_attention_2 / sdpa) and 4-bit loading: chosen or refused clearly."""

import pytest
import torch

from taalm_dist.config import ModelSourceConfig, TinyModelConfig, load_config
from taalm_dist.errors import ConfigError
from taalm_dist.models import load_causal_lm
from taalm_dist.models import loading as L

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_is_flash_attention_only_on_cuda_in_bfloat16_with_flash_attn(monkeypatch):
    for installed in (False, True):
        monkeypatch.setattr(L, "flash_attn_installed", lambda: installed)
        assert L.resolve_attention(ModelSourceConfig(dtype="bfloat16"), CPU) == "sdpa"
        assert L.resolve_attention(ModelSourceConfig(dtype="float32"), GPU) == "sdpa"
        expect = "flash_attention_2" if installed else "sdpa"
        assert L.resolve_attention(ModelSourceConfig(dtype="bfloat16"), GPU) == expect
    assert L.resolve_attention(ModelSourceConfig(attn_implementation="taalm_eager"), CPU) == "taalm_eager"


def test_flash_attention_is_refused_with_the_reason(monkeypatch):
    flash = ModelSourceConfig(dtype="bfloat16", attn_implementation="flash_attention_2")
    monkeypatch.setattr(L, "flash_attn_installed", lambda: False)
    with pytest.raises(ConfigError, match="flash-attn is not installed: pip install flash-attn"):
        L.resolve_attention(flash, GPU)
    monkeypatch.setattr(L, "flash_attn_installed", lambda: True)
    assert L.resolve_attention(flash, GPU) == "flash_attention_2"
    with pytest.raises(ConfigError, match="runs on CUDA only"):
        L.resolve_attention(flash, CPU)
    with pytest.raises(ConfigError, match="the model is float32: set model.dtype: bfloat16"):
        L.resolve_attention(ModelSourceConfig(attn_implementation="flash_attention_2"), GPU)
    with pytest.raises(ConfigError, match="meta.method=jvp differentiates through θ's attention"):
        load_config(None, ["meta.method=jvp", "theta.model.attn_implementation=flash_attention_2"])


def test_the_tiny_model_loads_with_the_resolved_attention():
    model = load_causal_lm(ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)), device=CPU)
    assert model.config._attn_implementation == "sdpa"


def test_four_bit_loading_is_refused_off_cuda_and_for_the_tiny_model():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="quantization=4bit .* runs on CUDA only"):
            load_causal_lm(ModelSourceConfig(source="/no/such/model", quantization="4bit"), device=CPU)
    with pytest.raises(ConfigError, match="needs a pretrained checkpoint"):
        load_config(None, ["theta.model.quantization=4bit"])
