"""TokenWeigher: a saved φ's weights for any text, aligned with the tokens; its tokenizer check."""

import pytest
import torch

from taalm_dist import TokenWeigher
from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig, TinyModelConfig
from taalm_dist.errors import ModelError
from taalm_dist.models import build_phi, save_phi
from taalm_dist.models.toy_tokenizer import ANSWERS, ENTITIES


@pytest.fixture
def phi_dir(tmp_path):
    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)),
                    lora=LoraConfig(rank=4, target_modules=["q_proj"]), head_init_std=0.5)
    phi = build_phi(cfg)
    return save_phi(phi, cfg, tmp_path / "phi"), phi


def test_weights_are_phi_on_the_tokens_of_each_text(phi_dir):
    path, phi = phi_dir
    weigher = TokenWeigher.load(path, device="cpu")
    e, a = ENTITIES[0], ANSWERS[0]
    texts = [f"the code of {e} is {a} .", f"the code of {e}"]
    out = weigher.weigh(texts, batch_size=1)
    assert [d.tokens for d in out] == [["the", "code", "of", e, "is", a, "."], ["the", "code", "of", e]]
    ids = torch.tensor([out[0].ids])
    want = phi.eval()(ids, torch.ones_like(ids))[0]
    torch.testing.assert_close(torch.tensor(out[0].weights), want.float())
    assert out[1].weights == pytest.approx(weigher.weigh([out[1].ids])[0].weights)  # token ids in, same weights
    assert len({round(w, 6) for w in out[0].weights}) > 1  # head std 0.5: not all equal


def test_a_foreign_tokenizer_and_empty_text_are_refused(phi_dir):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    weigher = TokenWeigher.load(phi_dir[0], device="cpu")
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(ModelError, match="do not share a tokenizer"):
        weigher.check_tokenizer(other, "the model")
    with pytest.raises(ModelError, match="cannot weigh an empty text"):
        weigher.weigh([[]])


def test_the_floor_raises_only_the_weights_below_it(phi_dir):
    path, _ = phi_dir
    plain = TokenWeigher.load(path, device="cpu")
    e, a = ENTITIES[0], ANSWERS[0]
    w = torch.tensor(plain.weigh([f"the code of {e} is {a} ."])[0].weights)
    floor = float(w.median())
    floored = torch.tensor(TokenWeigher.load(path, device="cpu", floor=floor).weigh([f"the code of {e} is {a} ."])[0]
                           .weights)
    torch.testing.assert_close(floored, torch.maximum(w, torch.tensor(floor)))
    assert (floored > w).any() and (floored == w).any()
    with pytest.raises(ModelError, match="floor=1.5 must be in"):
        TokenWeigher.load(path, device="cpu", floor=1.5)


def test_the_uniform_share_mixes_each_texts_weights_with_uniform_ones(phi_dir):
    path, _ = phi_dir
    text = f"the code of {ENTITIES[0]} is {ANSWERS[0]} ."
    w = torch.tensor(TokenWeigher.load(path, device="cpu").weigh([text])[0].weights)
    mixed = torch.tensor(TokenWeigher.load(path, device="cpu", uniform_share=0.5).weigh([text])[0].weights)
    n = len(w) - 1  # position 0 is never predicted
    torch.testing.assert_close(mixed[1:], 0.5 + 0.5 * n * w[1:] / w[1:].sum())
    assert mixed[0] == 0.5
    with pytest.raises(ModelError, match="uniform_share=-0.1 must be in"):
        TokenWeigher.load(path, device="cpu", uniform_share=-0.1)


# ------------------------------------------------------------- `taalm weigh`: nothing silently wrong (second probe)


@pytest.fixture
def docs(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"text": "{e} likes {a}"}}\n' for e, a in zip(ENTITIES[:3], ANSWERS[:3])))
    return path


def _weigh(phi_path, docs, out, *extra):
    from taalm_dist.cli import main

    return main(["weigh", "--phi", str(phi_path), "--docs", str(docs), "--out", str(out), "--device", "cpu", *extra])


def test_weigh_never_writes_over_its_input(phi_dir, docs, capsys):
    # before: --overwrite with --out equal to --docs replaced the user's input file
    before = docs.read_text()
    assert _weigh(phi_dir[0], docs, docs, "--overwrite") == 2
    assert "is (inside) --docs" in capsys.readouterr().err and docs.read_text() == before
    assert _weigh(phi_dir[0], docs.parent, docs.parent / "w.jsonl", "--overwrite") == 2  # inside a --docs folder
    assert docs.read_text() == before


def test_an_interrupted_weigh_leaves_no_partial_file(phi_dir, docs, tmp_path, monkeypatch):
    # before: weigh wrote its output in place; SIGINT left a partial file that blocked the rerun
    import taalm_dist.integrity as integrity

    out = tmp_path / "w.jsonl"
    real = integrity.write_atomic

    def interrupted(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(integrity, "write_atomic", interrupted)
    assert _weigh(phi_dir[0], docs, out) == 130  # Ctrl-C while the output is written
    monkeypatch.setattr(integrity, "write_atomic", real)
    assert not out.exists() and not list(tmp_path.glob(".w.jsonl*"))
    assert _weigh(phi_dir[0], docs, out) == 0 and len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),
    (["--batch-size", "-1"], "argument --batch-size: -1 must be >= 1"),
    (["--html-docs", "-1"], "argument --html-docs: -1 must be >= 0"),
])
def test_weigh_options_out_of_range_are_named(phi_dir, docs, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        _weigh(phi_dir[0], docs, tmp_path / "w.jsonl", *args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_device_is_named(phi_dir, docs, tmp_path, capsys):
    from taalm_dist.cli import main

    assert main(["weigh", "--phi", str(phi_dir[0]), "--docs", str(docs), "--out", str(tmp_path / "w.jsonl"),
                 "--device", "bogus"]) == 2
    assert "device 'bogus' is not one of auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_weigh_with_a_nan_phi_exits_2_and_writes_nothing(phi_dir, docs, tmp_path, capsys):
    # before: `taalm weigh` with a φ holding one NaN wrote `NaN` into its JSON (not valid JSON), exit 0
    from safetensors.torch import load_file, save_file

    from taalm_dist import integrity

    path = phi_dir[0]
    state = load_file(str(path / "phi.safetensors"))
    state["head.bias"][0] = float("nan")
    save_file(state, str(path / "phi.safetensors"))
    integrity.write_record(path)
    assert _weigh(path, docs, tmp_path / "w.jsonl") == 2
    assert "non-finite values in head.bias" in capsys.readouterr().err and not (tmp_path / "w.jsonl").exists()


class _CountingPhi(torch.nn.Module):
    """A stand-in φ with a familiarity feature (the mean id: large ids are 'far away') that counts its forwards."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, ids, mask, features=False):
        self.calls += 1
        w = torch.sigmoid(ids.float() - 3) * mask
        f = ((ids.float() * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)).repeat(1, 2)
        return (w, f) if features else w


class _IdTokenizer:
    pad_token_id = 0

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_weighing_a_corpus_sets_its_rule_from_the_same_phi_pass(phi_dir):
    from taalm_dist.familiarity import Familiarity

    record = Familiarity(torch.zeros(2), torch.eye(2), known=2.0, unknown=4.0, phi_fingerprint={}, source={},
                         own=torch.linspace(0.5, 2.5, 50))
    docs = [[1, 2, 1, 2], [9, 8, 9], [2, 3, 2, 2, 1], [8, 9, 9, 9], [9, 9, 8]]  # a mostly foreign corpus
    one = TokenWeigher(_CountingPhi(), _IdTokenizer(), familiarity=record)
    got = one.weigh(docs, batch_size=2, corpus=True)
    assert one.phi.calls == 3  # one forward per batch of 2
    two = TokenWeigher(_CountingPhi(), _IdTokenizer(), familiarity=record)
    verdict = two.set_corpus(docs, batch_size=2)
    want = two.weigh(docs, batch_size=2)
    assert two.phi.calls == 6 and one.rule.corpus == verdict and verdict["share"] > 0
    for g, w in zip(got, want):
        assert g.weights == pytest.approx(w.weights) and g.meta == pytest.approx(w.meta)
    assert TokenWeigher(_CountingPhi(), _IdTokenizer()).weigh(docs, corpus=True)[0].meta == {}  # no record: no rule
