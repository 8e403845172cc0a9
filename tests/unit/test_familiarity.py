"""φ's familiarity record: the distance, the thresholds calibrated on φ's own data, the abstention share, and a
record that refuses to serve another φ."""

import json

import pytest
import torch

from taalm_dist.errors import ModelError
from taalm_dist.familiarity import RECORD, TENSORS, Familiarity, fit_familiarity, shuffled_tokens
from taalm_dist.weight_rules import PhiWeights, applied_phi_weights, mix_uniform


def _features(n: int, shift: float = 0.0, seed: int = 0, h: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, h, generator=g) * torch.linspace(0.5, 2.0, h)
    return base + shift


def _record() -> Familiarity:
    return fit_familiarity(_features(200), _features(40, seed=1), _features(40, shift=3.0, seed=2), {"phi": "x"},
                           {"test": True})


def test_distance_is_the_shrunk_mahalanobis_distance_per_feature():
    train = _features(300)
    rec = _record()
    x = _features(5, seed=3)
    mu = train.double().mean(0)
    c = torch.cov(train.double().T)
    c = 0.9 * c + 0.1 * torch.diag(torch.diag(c))
    want = ((x.double() - mu) @ torch.linalg.inv(c) * (x.double() - mu)).sum(1).div(24).sqrt()
    rec = fit_familiarity(train, _features(40, seed=1), _features(40, shift=3.0, seed=2), {}, {})
    torch.testing.assert_close(rec.distance(x).double(), want, rtol=1e-3, atol=1e-4)


def test_thresholds_keep_phis_own_kind_and_give_up_on_the_shuffled():
    rec = _record()
    own, far = rec.distance(_features(500, seed=4)), rec.distance(_features(200, shift=3.0, seed=5))
    assert rec.known < rec.unknown
    assert (rec.share(own) == 0).float().mean() >= 0.97  # ~99 in 100 of φ's kind keep φ's weights whole
    assert (rec.share(far) >= 0.9).float().mean() >= 0.85  # ~9 in 10 of the unlike kind: (about) uniform weights
    mid = torch.tensor([(rec.known + rec.unknown) / 2])
    assert rec.share(mid).item() == pytest.approx(0.5)
    assert rec.source["own_kind"]["n"] == 240 and rec.source["shuffled"]["n"] == 40


def test_unknown_keeps_a_gap_when_shuffling_moves_nothing():
    rec = fit_familiarity(_features(200), _features(40, seed=1), _features(40, seed=2), {}, {})
    assert rec.unknown == pytest.approx(rec.known * 1.1)


def test_features_that_never_vary_are_refused_clearly_not_with_a_singular_matrix():
    same = torch.ones(30, 24)
    with pytest.raises(ModelError, match="do not tell documents apart"):
        fit_familiarity(same, same[:8], same[:8], {}, {})


def test_too_few_documents_are_refused():
    with pytest.raises(ModelError, match="needs ≥ 5 meta-training and ≥ 2 held-out"):
        fit_familiarity(_features(3), _features(1), _features(4), {}, {})


def test_shuffling_keeps_the_first_token_and_the_bag_of_tokens():
    docs = [[1, 5, 6, 7, 8, 9], [2, 3]]
    out = shuffled_tokens(docs)
    assert [d[0] for d in out] == [1, 2] and [sorted(d) for d in out] == [sorted(d) for d in docs]
    assert out[0] != docs[0] and shuffled_tokens(docs) == out  # seeded


def test_per_row_shares_move_each_row_toward_uniform_alone():
    w = torch.tensor([[0.9, 0.01, 0.5, 0.02, 0.0], [0.3, 0.8, 0.01, 0.6, 0.2]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    out = mix_uniform(w, mask, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[0], mask[0].float())  # abstained: fine-tuning's weights
    torch.testing.assert_close(out[1], mix_uniform(w[1:], mask[1:], 0.0 + 1e-30)[0])  # φ's shape, mean 1
    # the uniform share is a floor under the abstention share
    both = applied_phi_weights(w, mask, uniform_share=0.5, abstain_share=torch.tensor([0.2, 1.0]))
    torch.testing.assert_close(both, mix_uniform(w, mask, torch.tensor([0.5, 1.0])))


def test_the_corpus_rule_keeps_corpora_of_phis_kind_and_gives_up_on_a_foreign_one():
    rec = _record()
    # a corpus of φ's kind: its median is under known_n nine times in ten (the bootstrap's 90th percentile)
    kept = [rec.corpus(rec.distance(_features(50, seed=10 + k)))["share"] == 0 for k in range(20)]
    assert sum(kept) >= 15
    far = rec.corpus(rec.distance(_features(50, shift=1.0, seed=30)))
    assert far["share"] == 1.0 and far["n"] == 50
    # with more documents the median is surer: known_n falls toward the median of φ's kind
    known = [rec.corpus(rec.distance(_features(n, seed=40)))["known_n"] for n in (1, 10, 100)]
    assert known[0] > known[1] > known[2] > float(rec.own.median())
    q90 = float(rec.own.double().quantile(0.9))
    assert rec.known > q90 * 1.05  # the per-document rule keeps φ's weights on 99 in 100 of its kind ...
    assert known[0] == pytest.approx(q90, rel=0.05)  # ... a corpus of one is judged at 9 in 10 (erring to fine-tuning)
    assert rec.corpus(torch.zeros(0))["share"] == 0.0
    # the share is the median's place between the two thresholds
    c = rec.corpus(torch.full((30,), 0.5 * (q90 + rec.corpus(torch.ones(30))["known_n"])))
    assert 0 < c["share"] < 1
    assert c["share"] == pytest.approx((c["median"] - c["known_n"]) / (c["unknown_n"] - c["known_n"]), abs=1e-3)


class _Phi(torch.nn.Module):
    """A stand-in φ: weights from the ids, features = the mean id (a document 'far away' has large ids)."""

    def forward(self, ids, mask, features=False):
        w = torch.sigmoid(ids.float() - 3) * mask
        f = ((ids.float() * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)).repeat(1, 2)
        return (w, f) if features else w


def _toy_record() -> Familiarity:
    return Familiarity(torch.zeros(2), torch.eye(2), known=2.0, unknown=4.0, phi_fingerprint={}, source={},
                       own=torch.linspace(0.5, 2.5, 50))


def test_phi_weights_abstain_per_document_and_count_it():
    rule = PhiWeights(_Phi(), familiarity=_toy_record())
    doc = {"input_ids": torch.tensor([[1, 2, 1, 2], [9, 8, 9, 9]]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    w = rule(doc)
    assert rule.last_share.tolist() == [0.0, 1.0]
    torch.testing.assert_close(w[1], torch.ones(4))
    assert not torch.allclose(w[0], torch.ones(4))
    assert rule.abstained == {"docs": 2, "share_sum": 1.0, "full": 1}
    # a corpus share floors every document's share: φ's own kind of document gets it too
    c = rule.set_corpus(rule.distances(doc))
    assert c["n"] == 2 and rule.corpus is c
    rule.corpus = {**c, "share": 0.25}
    w = rule(doc)
    assert rule.last_share.tolist() == [0.25, 1.0]
    torch.testing.assert_close(w, applied_phi_weights(_Phi()(doc["input_ids"], doc["attention_mask"]),
                                                      doc["attention_mask"], abstain_share=torch.tensor([0.25, 1.0])))
    torch.testing.assert_close(PhiWeights(_Phi())(doc), applied_phi_weights(_Phi()(**{"ids": doc["input_ids"],
                                                                                      "mask": doc["attention_mask"]}),
                                                                            doc["attention_mask"]))


def test_the_record_round_trips_and_refuses_another_phi_or_damage(tmp_path):
    from taalm_dist.models.train_attention import PHI_CONFIG, PHI_WEIGHTS, phi_fingerprint

    (tmp_path / PHI_WEIGHTS).write_bytes(b"weights")
    (tmp_path / PHI_CONFIG).write_text("{}")
    assert Familiarity.load(tmp_path) is None
    rec = _record()
    rec.phi_fingerprint = phi_fingerprint(tmp_path)
    rec.save(tmp_path)
    back = Familiarity.load(tmp_path)
    torch.testing.assert_close(back.precision, rec.precision)
    torch.testing.assert_close(back.own, rec.own)
    assert (back.known, back.unknown, back.source["test"]) == (rec.known, rec.unknown, True)
    (tmp_path / PHI_WEIGHTS).write_bytes(b"other weights")  # φ changed in place
    with pytest.raises(ModelError, match="made for another φ"):
        Familiarity.load(tmp_path)
    (tmp_path / PHI_WEIGHTS).write_bytes(b"weights")
    (tmp_path / TENSORS).write_bytes((tmp_path / TENSORS).read_bytes()[:-8])
    with pytest.raises(ModelError, match="differs from what its record names"):
        Familiarity.load(tmp_path)
    rec.save(tmp_path)
    meta = json.loads((tmp_path / RECORD).read_text())
    for old in (1, 99):  # format 1 had no distances of φ's own kind (no corpus rule): made again, not guessed
        (tmp_path / RECORD).write_text(json.dumps({**meta, "format": old}))
        with pytest.raises(ModelError, match=f"format {old}.*taalm phi familiarity"):
            Familiarity.load(tmp_path)
    (tmp_path / RECORD).write_text("{not json")
    with pytest.raises(ModelError, match="unreadable familiarity record"):
        Familiarity.load(tmp_path)


def test_a_document_given_once_per_task_counts_once_in_phis_record(tmp_path):
    from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig, TinyModelConfig
    from taalm_dist.familiarity import make_familiarity
    from taalm_dist.models import build_phi, save_phi
    from taalm_dist.models.toy_tokenizer import ANSWERS, ENTITIES, toy_tokenizer

    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)),
                    lora=LoraConfig(rank=4, target_modules=["q_proj"]), head_init_std=0.5)
    phi_dir = save_phi(build_phi(cfg), cfg, tmp_path / "phi")
    tok = toy_tokenizer()
    texts = [f"the code of {ENTITIES[i % len(ENTITIES)]} is {ANSWERS[(i // len(ENTITIES)) % len(ANSWERS)]} ."
             for i in range(24)]
    docs = [tok(t)["input_ids"] for t in texts]
    once = make_familiarity(phi_dir, docs[:18], docs[18:], {"test": True})
    repeated = make_familiarity(phi_dir, [d for d in docs[:18] for _ in range(4)], docs[18:] * 2, {"test": True})
    assert repeated.source["train_docs"] == 18 and repeated.source["heldout_docs"] == 6
    assert (repeated.known, repeated.unknown) == (once.known, once.unknown)
    torch.testing.assert_close(repeated.own, once.own)
