"""`taalm learn --phi from-docs`: pairs from the documents, φ meta-trained on them, θ learning the documents with it
— one command, each stage skipped when done, overrides routed to the stages that read them."""

import json

import yaml

from taalm_dist.cli import main as cli_main
from taalm_dist.data.doc_pairs import facts, make_pick
from taalm_dist.data.synth import synth_benchmark
from taalm_dist.phi_from_docs import phi_dir_of

TINY = {"model": {"tiny": {"hidden_size": 32, "intermediate_size": 64}}}


def test_one_command_makes_pairs_meta_trains_phi_and_learns_and_resumes_stage_by_stage(tmp_path, capsys):
    rows = synth_benchmark(n_to_learn=2, n_meta=24, seed=2)["meta_train"]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": r["evidence"]}) + "\n" for r in rows))
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "theta": {**TINY, "trainable": "lora", "lora": {"rank": 4}},
        "phi": {**TINY, "trainable": "lora", "lora": {"rank": 4, "target_modules": ["q_proj"]}},
        "data": {"task_field": "task_schematic", "max_doc_tokens": 96, "skip_bad_rows": True},
        "meta": {"inner": "sgd", "inner_lr": 0.1, "method": "fd"},
        "train": {"docs_per_step": 2, "val_every": 0, "progress": False},
        "learn": {"batch_size": 4, "progress": False}, "tracking": {"mlflow": False}}))
    out = tmp_path / "run"
    cmd = ["learn", "--config", str(config), "--docs", str(docs), "--phi", "from-docs", "--out", str(out),
           "learn.pairs_method=rare", "train.max_steps=2", "learn.epochs=1", "theta.lora.alpha=8"]
    assert cli_main(cmd) == 0
    text = capsys.readouterr().out
    assert "[1/3] pairs from the documents:" in text and "[2/3] meta-train φ on them:" in text
    where = phi_dir_of(out)
    assert where == tmp_path / "run.phi" and (where / "pairs" / "meta_train.jsonl").is_file()
    made = [json.loads(x) for f in ("meta_train.jsonl", "meta_val.jsonl") for x in (where / "pairs" / f).open()]
    rare = make_pick("rare", [r["evidence"] for r in rows])  # learn.pairs_method chose how the pairs were made
    assert sorted(r["object"] for r in made) == sorted(f.object for r in rows for f in facts(r["evidence"], rare))
    assert json.loads((where / "meta_train" / "summary.json").read_text())["steps"] == 2  # train.* went to meta-train
    learned = json.loads((out / "summary.json").read_text())
    assert learned["phi"] == str(where / "meta_train" / "phi") and len(learned["epochs"]) == 2  # learn.epochs=1
    assert set(json.loads((where / "stages.json").read_text())) == {
        "pairs from the documents", "meta-train φ on them", "learn the documents"}
    assert cli_main([*cmd, "--resume", "auto"]) == 0  # the same command again: the φ stages are done
    text = capsys.readouterr().out
    assert "[1/3] pairs from the documents: done before, skipped" in text
    assert "[2/3] meta-train φ on them: done before, skipped" in text
    assert cli_main([*cmd[:-3], "nope.key=1"]) == 2  # a key no stage reads is refused
    assert cli_main([*cmd[:-4], "learn.pairs_method=salient"]) == 2
    assert "learn.pairs_method='salient' is not one of" in capsys.readouterr().err
