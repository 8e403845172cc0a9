"""`taalm learn` on a tiny model: every input format, the saved adapter and merged model, exact resume, agreement
with `ckl run` and with TokenWeightedTrainer, and the refusals."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from taalm_dist.cli import main as cli_main
from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig, TinyModelConfig, load_config
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist import integrity
from taalm_dist.errors import ConfigError, DataError, ModelError, TrainingError
from taalm_dist.programs.learn import Learner, run_learn
from taalm_dist.models import build_phi, save_phi

TINY = ["theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Toy evidence as to_learn.jsonl (field ``evidence``), questions about it, and a tiny φ."""
    d = tmp_path_factory.mktemp("learn")
    rows = toy_rows(6, seed=0, filler_words=6)
    write_pairs(rows, d / "to_learn.jsonl")
    write_pairs(toy_rows(4, seed=1, filler_words=6, entity_offset=50), d / "not_to_forget.jsonl")
    with (d / "qa.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"question": r["task_descriptive"][: -len(r["object"])], "answer": r["object"]}) + "\n")
    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)),
                    lora=LoraConfig(rank=4, target_modules=["q_proj"]), head_init_std=0.5)
    save_phi(build_phi(cfg), cfg, d / "phi")
    return d


def _cfg(data, out, *extra, phi=True):
    return load_config(None, TINY + [f"learn.docs={data / 'to_learn.jsonl'}", "learn.text_field=evidence",
                                     f"learn.out_dir={out}", f"learn.phi_path={data / 'phi' if phi else 'null'}",
                                     "learn.epochs=2", "learn.batch_size=2", "learn.progress=false",
                                     "tracking.mlflow=false", *extra])


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_adapter_and_merged_model_reload_with_the_same_logits(data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from taalm_dist.models import load_causal_lm

    learner, summary = run_learn(_cfg(data, tmp_path / "run", f"learn.eval_qa={data / 'qa.jsonl'}",
                                      "learn.merge=true", "learn.lr=1e-2"))
    out = tmp_path / "run"
    for name in ("summary.json", "metrics.jsonl", "curves.png", "heatmap.html", "heatmap.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert [r["epoch"] for r in summary["epochs"]] == [0, 1, 2] and "qa_acc" in summary["epochs"][-1]
    ids = torch.tensor([learner.to_learn[0].doc_ids])
    trained = _logits(learner.theta.eval(), ids)
    base = load_causal_lm(learner.cfg.theta.model, vocab_size=len(learner.tokenizer))
    assert not torch.allclose(_logits(base, ids), trained, atol=1e-4)  # the adapter changed θ
    reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.testing.assert_close(_logits(reloaded, ids), trained, rtol=0, atol=1e-6)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    torch.testing.assert_close(_logits(merged, ids), trained, rtol=1e-5, atol=1e-5)
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert steps == list(range(1, summary["updates"] + 1))


@pytest.mark.parametrize("fmt", ["text_dir", "save_to_disk", "parquet"])
def test_every_input_format_learns_the_same_windows(data, tmp_path, fmt):
    import datasets

    texts = [json.loads(x)["evidence"] for x in (data / "to_learn.jsonl").read_text().splitlines()]
    if fmt == "text_dir":
        src = tmp_path / "docs"
        src.mkdir()
        for i, t in enumerate(texts):
            (src / f"doc{i}.txt").write_text(t)
    elif fmt == "save_to_disk":
        src = tmp_path / "ds"
        datasets.Dataset.from_dict({"evidence": texts}).save_to_disk(str(src))
    else:
        src = tmp_path / "docs.parquet"
        datasets.Dataset.from_dict({"evidence": texts}).to_parquet(str(src))
    reference = Learner(_cfg(data, tmp_path / "ref"))
    reference._start()
    reference._load_data()
    learner, summary = run_learn(_cfg(data, tmp_path / "run", f"learn.docs={src}", "learn.epochs=1"))
    assert [t.doc_ids for t in learner.to_learn] == [t.doc_ids for t in reference.to_learn]
    assert summary["windows"] == len(texts) and (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_long_documents_are_learned_in_windows_whose_context_loss_is_masked(data, tmp_path):
    learner, summary = run_learn(_cfg(data, tmp_path / "run", "learn.window_tokens=6", "learn.window_overlap=2",
                                      "learn.epochs=1"))
    assert summary["windows"] > summary["documents"]
    later = [t for t in learner.to_learn if t.doc_loss_mask is not None]
    assert later and all(t.doc_loss_mask[:2] == [0, 0] and all(t.doc_loss_mask[2:]) for t in later)


def test_resume_after_a_stop_mid_epoch_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    full, _ = run_learn(_cfg(data, tmp_path / "full", "learn.epochs=3", "theta.lora.dropout=0.1"))
    calls = {"n": 0}
    original = Learner._theta_update

    def stop_in_epoch_two(self, items):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 updates an epoch: the 2nd of epoch 2
            raise KeyboardInterrupt
        return original(self, items)

    monkeypatch.setattr(Learner, "_theta_update", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_learn(_cfg(data, tmp_path / "cut", "learn.epochs=3", "theta.lora.dropout=0.1"))
    monkeypatch.setattr(Learner, "_theta_update", original)
    resumed, summary = run_learn(_cfg(data, tmp_path / "cut", "learn.epochs=3", "theta.lora.dropout=0.1",
                                      "learn.resume=auto"))
    assert resumed.losses == full.losses and summary["updates"] == 9
    for (n, a), (_, b) in zip(full.theta.named_parameters(), resumed.theta.named_parameters()):
        assert torch.equal(a, b), n
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, 10))  # the interrupted epoch's rows were dropped, none is duplicated


def test_learn_and_ckl_run_take_the_same_steps(data, tmp_path):
    from taalm_dist.programs.ckl_run import run_ckl

    learner, _ = run_learn(_cfg(data, tmp_path / "learn"))
    cfg = load_config(None, TINY + [f"ckl.data_dir={data}", "ckl.method=taalm", f"ckl.phi_path={data / 'phi'}",
                                    f"ckl.out_dir={tmp_path / 'ckl'}", "ckl.epochs=2", "ckl.batch_size=2",
                                    "ckl.progress=false", "tracking.mlflow=false"])
    runner, _ = run_ckl(cfg)
    assert len(learner.losses) == 6
    assert learner.losses == pytest.approx(runner.losses, rel=1e-6, abs=0)


def test_activation_checkpointing_changes_no_loss(data, tmp_path):
    plain, _ = run_learn(_cfg(data, tmp_path / "plain", "learn.epochs=1"))
    ckpt, _ = run_learn(_cfg(data, tmp_path / "ckpt", "learn.epochs=1", "engine.gradient_checkpointing=true"))
    assert ckpt.theta.get_base_model().is_gradient_checkpointing
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-6)


def test_token_weighted_trainer_computes_learns_loss(data, tmp_path):
    from transformers import TrainingArguments

    from taalm_dist.data import collate
    from taalm_dist.integrations.hf import TokenWeightedTrainer
    from taalm_dist.losses.lm_head import token_weighted_loss

    learner = Learner(_cfg(data, tmp_path / "run"))
    try:
        learner.setup()
        doc = collate(learner.to_learn[:3], learner.pad_id)[0]
        want = token_weighted_loss(learner.theta, doc, learner.rule(doc), learner.per_token_loss)
        args = TrainingArguments(output_dir=str(tmp_path / "hf"), report_to=[], use_cpu=True)
        trainer = TokenWeightedTrainer(model=learner.theta, args=args, processing_class=learner.tokenizer,
                                       phi=data / "phi")
        got = trainer.compute_loss(learner.theta, {"input_ids": doc["input_ids"], "attention_mask":
                                                   doc["attention_mask"], "labels": doc["input_ids"]})
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    finally:
        learner.cleanup()


def test_phi_none_is_plain_fine_tuning(data, tmp_path):
    learner, summary = run_learn(_cfg(data, tmp_path / "run", "learn.epochs=1", phi=False))
    assert summary["method"] == "finetune" and summary["phi"] is None
    doc = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    assert torch.equal(learner.rule(doc), torch.ones(2, 5))


def test_a_run_directory_is_never_overwritten_or_mixed(data, tmp_path):
    out = tmp_path / "run"
    run_learn(_cfg(data, out, "learn.epochs=1"))
    with pytest.raises(ConfigError, match="already holds a `taalm learn` run; continue it with --resume auto"):
        run_learn(_cfg(data, out, "learn.epochs=1"))
    with pytest.raises(ConfigError, match=r"other settings \(learn.lr: 0.0001 → 0.001"):
        run_learn(_cfg(data, out, "learn.epochs=1", "learn.lr=1e-3", "learn.resume=auto"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files but no `taalm learn` run"):
        run_learn(_cfg(data, foreign, "learn.resume=auto"))
    # before (second probe): --overwrite moved any non-empty folder aside, a user's own included
    with pytest.raises(ConfigError, match="holds files but no taalm run .* moves only runs aside, so nothing was moved"):
        run_learn(_cfg(data, foreign, "learn.epochs=1", "learn.overwrite=true"))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and not list(tmp_path.glob("foreign.replaced-*"))
    run_learn(_cfg(data, out, "learn.epochs=1", "learn.overwrite=true"))  # a run is moved aside, not deleted
    [aside] = tmp_path.glob("run.replaced-*")
    assert (aside / "adapter").is_dir() and (out / "adapter").is_dir()


def test_changed_documents_are_not_resumed(data, tmp_path):
    docs = tmp_path / "docs.jsonl"
    shutil.copy(data / "to_learn.jsonl", docs)
    run_learn(_cfg(data, tmp_path / "run", f"learn.docs={docs}", "learn.epochs=1"))
    docs.write_text(docs.read_text().replace("code", "name"))
    with pytest.raises(ConfigError, match="the content of learn.docs changed"):
        run_learn(_cfg(data, tmp_path / "run", f"learn.docs={docs}", "learn.epochs=1", "learn.resume=auto"))


def test_a_phi_with_another_tokenizer_is_refused(data, tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    import taalm_dist.programs.document_training as runner

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    monkeypatch.setattr(runner, "load_phi_tokenizer", lambda path: other)
    with pytest.raises(ModelError, match=r"do not share a tokenizer.*") as e:
        run_learn(_cfg(data, tmp_path / "run"))
    assert str(data / "phi") in str(e.value)
    assert not (tmp_path / "run").exists()  # the corrected command can use the same --out


def test_bad_questions_are_named(data, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "who?"}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:1: field 'answer' must be a non-empty string"):
        run_learn(_cfg(data, tmp_path / "run", f"learn.eval_qa={qa}"))


def test_cli_learn_and_weigh(data, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["learn", "--model", "tiny", "--phi", "none", "--docs", str(data / "to_learn.jsonl"),
                     "--text-field", "evidence", "--out", str(out), "--eval-qa", str(data / "qa.jsonl"), *TINY,
                     "learn.epochs=1", "learn.progress=false", "tracking.mlflow=false"])
    assert code == 0 and "adapter:" in capsys.readouterr().out
    assert cli_main(["learn", "--model", "tiny", "--phi", "none", "--docs", str(data / "to_learn.jsonl"), "--text-field",
                     "evidence", "--out", str(out), *TINY, "tracking.mlflow=false"]) == 2
    assert "already holds" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli_main(["weigh", "--phi", str(data / "phi"), "--docs", str(empty), "--out", str(tmp_path / "w.jsonl")]) == 2
    assert "empty.jsonl is empty" in capsys.readouterr().err
    weights, page = tmp_path / "w.jsonl", tmp_path / "w.html"
    assert cli_main(["weigh", "--phi", str(data / "phi"), "--docs", str(data / "to_learn.jsonl"), "--text-field",
                     "evidence", "--out", str(weights), "--html", str(page), "--device", "cpu"]) == 0
    rows = [json.loads(x) for x in weights.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["id"] == "to_learn.jsonl:1" and len(rows[0]["tokens"]) == len(rows[0]["weights"])
    assert page.read_text().count("<span") == sum(len(r["tokens"]) for r in rows)


# ------------------------------------------------------------- nothing silently wrong (second reliability probe)


def test_a_learning_rate_that_diverges_stops_with_an_error_and_exports_nothing(data, tmp_path):
    # before: `learn --phi none learn.lr=1e30` reported "learned N documents" with every adapter tensor NaN, exit 0
    with pytest.raises(TrainingError, match=r"θ update \d+ \(epoch \d\): the token-weighted loss is not finite"):
        run_learn(_cfg(data, tmp_path / "run", "learn.lr=1e30", "learn.epochs=3", phi=False))
    assert not (tmp_path / "run" / "adapter").exists()
    assert cli_main([*_cli_learn(data, tmp_path / "cli"), "learn.lr=1e30", "learn.epochs=3"]) == 2


def _cli_learn(data, out):
    return ["learn", "--phi", "none", "--docs", str(data / "to_learn.jsonl"), "--out", str(out), *TINY, "learn.text_field=evidence",
            "learn.progress=false", "tracking.mlflow=false", "learn.batch_size=2"]


def test_a_phi_with_a_nan_is_refused_before_learning(data, tmp_path):
    # before: a φ with one NaN in its head made `learn` and `ckl run` write NaN θ with exit 0
    phi = tmp_path / "phi"
    shutil.copytree(data / "phi", phi)
    state = load_file(str(phi / "phi.safetensors"))
    state["head.bias"][0] = float("nan")
    save_file(state, str(phi / "phi.safetensors"))
    integrity.write_record(phi)
    with pytest.raises(ModelError, match=r"non-finite values in head.bias \(nan"):
        run_learn(_cfg(data, tmp_path / "run", f"learn.phi_path={phi}"))


@pytest.mark.parametrize("change", ["weights", "config"])
def test_a_phi_changed_in_place_is_not_resumed_with(data, tmp_path, change):
    # before: learn recorded no hash of φ (a φ with flipped signs at the same path resumed silently), and ckl run
    # hashed phi.safetensors but not phi_config.json (another backbone seed resumed)
    phi = tmp_path / "phi"
    shutil.copytree(data / "phi", phi)
    run_learn(_cfg(data, tmp_path / "run", f"learn.phi_path={phi}", "learn.epochs=1"))
    if change == "weights":
        state = load_file(str(phi / "phi.safetensors"))
        save_file({k: -v for k, v in state.items()}, str(phi / "phi.safetensors"))
    else:
        meta = json.loads((phi / "phi_config.json").read_text())
        meta["phi"]["model"]["tiny"]["seed"] = 7
        (phi / "phi_config.json").write_text(json.dumps(meta))
    integrity.write_record(phi)  # re-exported as a whole: intact, yet another φ
    name = "phi.safetensors" if change == "weights" else "phi_config.json"
    with pytest.raises(ConfigError, match=f"the content of learn.phi_path/{name} changed"):
        run_learn(_cfg(data, tmp_path / "run", f"learn.phi_path={phi}", "learn.epochs=2", "learn.resume=auto"))


def test_a_run_directory_reached_through_a_symlink_is_the_same_locked_directory(data, tmp_path):
    # before: the lock was taken on the path as typed: a second `learn --resume auto` through a symlink took its own
    # lock and deleted the first run's in-progress save as a leftover
    from taalm_dist.engine.run_dir import RunDirLock

    out = tmp_path / "run"
    run_learn(_cfg(data, out, "learn.epochs=1"))
    (tmp_path / "alias").symlink_to(out)
    held = RunDirLock(out).acquire("learn")
    try:
        with pytest.raises(ConfigError, match="is in use by another run"):
            run_learn(_cfg(data, tmp_path / "alias", "learn.epochs=2", "learn.resume=auto"))
        with pytest.raises(ConfigError, match="is in use by another run"):  # a path through a linked parent
            (tmp_path / "parent_alias").symlink_to(tmp_path)
            run_learn(_cfg(data, tmp_path / "parent_alias" / "run", "learn.epochs=2", "learn.resume=auto"))
    finally:
        held.release()
    run_learn(_cfg(data, tmp_path / "alias", "learn.epochs=2", "learn.resume=auto"))


# ------------------------------------------------------------- φ abstains where it does not know (issue 37)
def test_a_familiarity_record_is_made_once_weighed_with_and_learned_with(data, tmp_path, capsys):
    phi = tmp_path / "phi"
    shutil.copytree(data / "phi", phi)
    made = ["phi", "familiarity", str(phi), "--train", str(data / "to_learn.jsonl"), "--heldout",
            str(data / "not_to_forget.jsonl")]
    assert cli_main(made) == 0 and "uniform from" in capsys.readouterr().out
    record = (phi / "familiarity.json").read_bytes()
    assert cli_main(made) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert (phi / "familiarity.json").read_bytes() == record  # never replaced unasked
    weights, page = tmp_path / "w.jsonl", tmp_path / "w.html"
    assert cli_main(["weigh", "--phi", str(phi), "--docs", str(data / "to_learn.jsonl"), "--text-field", "evidence",
                     "--out", str(weights), "--html", str(page), "--device", "cpu"]) == 0
    rows = [json.loads(x) for x in weights.read_text().splitlines()]
    assert all(0 <= r["abstain_share"] <= 1 and r["familiarity_distance"] > 0 for r in rows)
    assert f"φ's familiarity: the {len(rows)} documents' median distance" in capsys.readouterr().out  # one corpus
    from taalm_dist.weigh import TokenWeigher

    weigher = TokenWeigher.load(phi, device="cpu")
    corpus = weigher.set_corpus(["Mira Olsen was born in Tallinn.", "Ola Berg lives in Oslo."])
    assert corpus["n"] == 2 and weigher.rule.corpus is corpus
    [one] = weigher.weigh(["Mira Olsen was born in Tallinn."])
    assert one.meta["abstain_share"] >= corpus["share"]  # the corpus share floors every text's share
    assert page.read_text().count("familiarity distance") == len(rows)
    assert cli_main(["weigh", "--phi", str(phi), "--docs", str(data / "to_learn.jsonl"), "--text-field", "evidence",
                     "--out", str(weights), "--overwrite", "--no-abstain", "--device", "cpu"]) == 0
    assert "abstain_share" not in json.loads(weights.read_text().splitlines()[0])
    _, summary = run_learn(_cfg(data, tmp_path / "on", "learn.epochs=1", f"learn.phi_path={phi}"))
    abstained = summary["setup"]["phi_abstained"]
    assert abstained["docs_weighed"] >= 6 and 0 <= abstained["mean_share"] <= 1
    _, summary = run_learn(_cfg(data, tmp_path / "off", "learn.epochs=1", f"learn.phi_path={phi}",
                                "learn.phi_abstain=false"))
    assert summary["setup"]["phi_abstained"] is None
    (phi / "phi.safetensors").write_bytes((data / "phi" / "phi.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelError):  # φ changed in place: its record (and φ) refused
        run_learn(_cfg(data, tmp_path / "changed", "learn.epochs=1", f"learn.phi_path={phi}"))
