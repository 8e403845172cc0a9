import pytest
import torch

from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig, TinyModelConfig
from taalm_dist.errors import ConfigError, ModelError
from taalm_dist.models import build_phi, check_same_tokenizer, load_causal_lm, load_phi, load_tokenizer, make_trainable, save_phi
from taalm_dist.models.toy_tokenizer import toy_tokenizer


def _ids():
    ids = torch.randint(4, 300, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def test_ta_head_official_init_and_padding():
    phi = build_phi(PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64))))
    assert phi.head.bias.item() == 4.0
    assert 0.5e-3 < phi.head.weight.std().item() < 2e-3
    ids, mask = _ids()
    w = phi(ids, mask)
    assert w.shape == ids.shape
    assert torch.allclose(w[mask == 1], torch.full_like(w[mask == 1], torch.sigmoid(torch.tensor(4.0)).item()), atol=5e-3)
    assert (w[mask == 0] == 0).all()


def test_phi_lora_trains_only_adapters_and_head():
    phi = build_phi(PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)),
                              lora=LoraConfig(rank=2, target_modules=["q_proj"])))
    names = [n for n, p in phi.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert any(n.startswith("head.") for n in names)


def test_phi_truncation_keeps_first_layers():
    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(num_layers=3, hidden_size=32, intermediate_size=64)),
                    num_layers=1, trainable="full")
    phi = build_phi(cfg)
    assert len(phi.backbone.layers) == 1 and phi.backbone.config.num_hidden_layers == 1
    with pytest.raises(ModelError, match="only 3 layers"):
        build_phi(PhiConfig(model=cfg.model, num_layers=5))


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_phi_save_load_roundtrip(tmp_path, trainable):
    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)), trainable=trainable,
                    lora=LoraConfig(rank=2, target_modules=["q_proj", "v_proj"]))
    phi = build_phi(cfg)
    with torch.no_grad():
        for p in phi.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_phi(phi, cfg, tmp_path / "phi")
    again = load_phi(tmp_path / "phi")
    ids, mask = _ids()
    assert torch.equal(phi(ids, mask), again(ids, mask))
    with pytest.raises(ModelError, match="is not a saved φ"):
        load_phi(tmp_path)


def test_tiny_model_roundtrips_through_a_local_directory(tmp_path):
    spec = ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64))
    model = load_causal_lm(spec)
    model.save_pretrained(tmp_path / "m")
    toy_tokenizer().save_pretrained(tmp_path / "m")
    local = ModelSourceConfig(source=str(tmp_path / "m"))
    again = load_causal_lm(local)
    ids, mask = _ids()
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, again(input_ids=ids, attention_mask=mask).logits)
    assert load_tokenizer(local).get_vocab() == toy_tokenizer().get_vocab()


def test_float64_mode_keeps_float64_in_norms_and_attention():
    spec = ModelSourceConfig(dtype="float64", attn_implementation="taalm_eager",
                             tiny=TinyModelConfig(hidden_size=32, intermediate_size=64))
    model = load_causal_lm(spec)
    ids, mask = _ids()
    a = model(input_ids=ids, attention_mask=mask).logits
    # the same model evaluated again after a 1e-12 nudge changes by ~1e-12, not by fp32 rounding (~1e-7)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1e-12)
    b = model(input_ids=ids, attention_mask=mask).logits
    diff = (a - b).abs().max().item()
    assert 0 < diff < 1e-9


def test_tokenizer_mismatch_is_refused_clearly():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    other = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "[PAD]": 1, "hello": 2}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other_tok = PreTrainedTokenizerFast(tokenizer_object=other, unk_token="[UNK]", pad_token="[PAD]")
    check_same_tokenizer(toy_tokenizer(), toy_tokenizer())
    with pytest.raises(ModelError, match="do not share a tokenizer"):
        check_same_tokenizer(toy_tokenizer(), other_tok)


def test_bad_sources_and_lora_targets_are_clear(tmp_path):
    with pytest.raises(ModelError, match="GGUF file"):
        load_causal_lm(ModelSourceConfig(source=str(tmp_path / "x.gguf")))
    with pytest.raises(ModelError, match="not installed"):
        load_causal_lm(ModelSourceConfig(source="pkg:no_such_pkg_xyz/model.gguf"))
    with pytest.raises(ModelError, match="cannot load a causal LM"):
        load_causal_lm(ModelSourceConfig(source=str(tmp_path / "empty_dir")))
    model = load_causal_lm(ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)))
    with pytest.raises(ConfigError, match="not module names"):
        make_trainable(model, "lora", LoraConfig(target_modules=["qkv"]))


def test_floor_weights_raises_real_tokens_below_the_floor_and_keeps_padding_zero():
    from taalm_dist.models.train_attention import floor_weights

    w = torch.tensor([[0.9, 1e-6, 0.02, 0.0], [1e-4, 0.5, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert floor_weights(w, mask, 0.0) is w
    want = torch.tensor([[0.9, 0.01, 0.02, 0.0], [0.01, 0.5, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(floor_weights(w, mask, 0.01), want, rtol=0, atol=0)
