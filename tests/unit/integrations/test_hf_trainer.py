"""TokenWeightedTrainer: a transformers Trainer whose loss is the token-weighted loss with φ's weights."""

import pytest
import torch

from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig, TinyModelConfig
from taalm_dist.errors import ConfigError
from taalm_dist.losses import eager_per_token_nll, token_weighted_ce
from taalm_dist.models import build_phi, load_causal_lm, make_trainable, save_phi
from taalm_dist.models.toy_tokenizer import ANSWERS, ENTITIES, toy_tokenizer

from transformers import TrainingArguments

from taalm_dist.integrations.hf import TokenWeightedTrainer
from taalm_dist.losses.lm_head import token_weighted_loss

TINY = ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64))


@pytest.fixture
def setup(tmp_path):
    cfg = PhiConfig(model=TINY, lora=LoraConfig(rank=4, target_modules=["q_proj"]), head_init_std=0.5)
    phi_dir = save_phi(build_phi(cfg), cfg, tmp_path / "phi")
    theta = make_trainable(load_causal_lm(TINY), "lora", LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]))
    tok = toy_tokenizer()
    e, a = ENTITIES, ANSWERS
    enc = tok([f"the code of {e[0]} is {a[0]} .", f"the code of {e[1]} is {a[1]} , and the code of {e[2]}"],
              padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, max_steps=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    return phi_dir, theta, tok, batch, args


def test_the_loss_is_the_spec_with_phis_weights(setup):
    phi_dir, theta, tok, batch, args = setup
    trainer = TokenWeightedTrainer(model=theta, args=args, processing_class=tok, phi=phi_dir)
    w = trainer.weigher.weights(batch["input_ids"], batch["attention_mask"])
    assert len({round(float(x), 5) for x in w[batch["attention_mask"].bool()]}) > 1
    got = trainer.compute_loss(theta, dict(batch))
    logits = theta(**batch).logits
    want = token_weighted_ce(logits, batch["input_ids"], w, batch["attention_mask"]).loss
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # labels with -100 drop those positions (HF's convention), exactly as a zero weight would
    labels = batch["input_ids"].clone()
    labels[:, -2:] = -100
    masked = token_weighted_loss(theta, {**batch, "labels": labels}, w, eager_per_token_nll)
    w0 = w.clone()
    w0[:, -2:] = 0
    torch.testing.assert_close(masked, token_weighted_ce(logits, batch["input_ids"], w0, batch["attention_mask"]).loss)


def test_it_trains_and_refuses_a_tokenizer_other_than_phis(setup):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    phi_dir, theta, tok, batch, args = setup
    rows = [{k: v[b] for k, v in batch.items()} for b in range(2)]
    trainer = TokenWeightedTrainer(model=theta, args=args, train_dataset=rows, processing_class=tok, phi=phi_dir)
    before = {n: p.detach().clone() for n, p in theta.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in theta.named_parameters() if p.requires_grad)
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(Exception, match="do not share a tokenizer"):
        TokenWeightedTrainer(model=theta, args=args, processing_class=other, phi=phi_dir)
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        TokenWeightedTrainer(model=theta, args=args, phi=phi_dir)


def test_the_training_set_is_the_corpus_of_phis_abstention(setup):
    from taalm_dist.familiarity import make_familiarity

    phi_dir, theta, tok, batch, args = setup
    texts = [f"the code of {ENTITIES[i % len(ENTITIES)]} is {ANSWERS[i % len(ANSWERS)]} ." for i in range(24)]
    docs = [tok(t)["input_ids"] for t in texts]
    make_familiarity(phi_dir, docs[:18], docs[18:], {"test": True}).save(phi_dir)
    rows = [{k: v[b] for k, v in batch.items()} for b in range(2)]
    trainer = TokenWeightedTrainer(model=theta, args=args, train_dataset=rows, processing_class=tok, phi=phi_dir)
    assert trainer.corpus["n"] == 2 and trainer.weigher.rule.corpus is trainer.corpus
    trainer.weigher.weights(batch["input_ids"], batch["attention_mask"])
    assert (trainer.weigher.rule.last_share >= trainer.corpus["share"]).all()
    assert TokenWeightedTrainer(model=theta, args=args, processing_class=tok, phi=phi_dir).corpus is None  # no set

