"""Single-process meta-training on the toy task: φ learns where the answer is."""

import json

import pytest
import torch

from taalm_dist.programs.meta_train import DocOrder, MetaTrainer
from taalm_dist.errors import ConfigError, DataError
from taalm_dist.models import load_phi
from toy_meta import toy_config as _config
from toy_meta import run_trainer as _run


def test_phi_objective_decreases_on_the_toy_task(tmp_path):
    trainer, summary = _run(_config(tmp_path))
    first, last = summary["first"], summary["last"]
    assert first["val/objective"] == pytest.approx(first["val/objective_uniform"], abs=0.02)  # φ starts ~uniform
    assert last["val/objective"] < first["val/objective"] - 0.2
    assert last["val/weight_on_object"] > 2 * last["val/weight_off_object"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "params" and any("train/objective" in r for r in records)
    phi = load_phi(tmp_path / "run" / "phi")
    ids = torch.tensor([[4, 5, 6, 7]])
    assert torch.allclose(phi(ids, torch.ones_like(ids)), trainer.phi.module.eval()(ids, torch.ones_like(ids)))


def test_restrict_term_and_adamw_jvp_path_run(tmp_path):
    cfg = _config(tmp_path, "meta.inner=adamw", "meta.inner_lr=1e-3", "meta.method=jvp",
                  "theta.model.attn_implementation=taalm_eager", "meta.restrict_coef=0.5",
                  "train.max_steps=2", "train.docs_per_step=2", "train.val_every=0")
    _, summary = _run(cfg)
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0


def test_non_empty_out_dir_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="already holds files; continue it with --resume auto"):
        MetaTrainer(_config(tmp_path)).setup()
    assert (tmp_path / "run" / "keep.txt").read_text() == "user data"


def test_data_problems_are_reported_before_training(tmp_path):
    cfg = _config(tmp_path, "data.max_doc_tokens=8", "data.on_long_doc=error")
    with pytest.raises(DataError, match="data.max_doc_tokens=8"):
        MetaTrainer(cfg).setup()
    cfg = _config(tmp_path, "data.max_doc_tokens=8")
    trainer = MetaTrainer(cfg)
    trainer.setup()
    assert trainer.data.truncated_docs == len(trainer.data.train) + len(trainer.data.val)
    trainer.cleanup()


def test_doc_order_covers_every_document_each_epoch():
    order = DocOrder(5, seed=3)
    first = [order.next() for _ in range(5)]
    second = [order.next() for _ in range(5)]
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    assert order.state_dict() == {"epoch": 1, "pos": 5}


def test_single_process_exact_resume(tmp_path):
    short = ["train.max_steps=4", "train.docs_per_step=2", "train.val_every=0"]
    _run(_config(tmp_path, *short, "train.save_every=2"))
    whole = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cfg = _config(tmp_path, *short, "train.max_steps=2", f"train.out_dir={tmp_path / 'split'}")
    _run(cfg)
    cfg = _config(tmp_path, *short, f"train.out_dir={tmp_path / 'split'}", "train.resume=auto")
    trainer, summary = _run(cfg)
    split = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    a = {r["step"]: r["train/objective"] for r in whole if "train/objective" in r}
    b = {r["step"]: r["train/objective"] for r in split if "train/objective" in r}
    assert a == b and sorted(a) == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"other settings \(meta.inner_lr: 0.1 → 0.5\)"):
        MetaTrainer(_config(tmp_path, *short, f"train.out_dir={tmp_path / 'split'}", "train.resume=auto",
                            "meta.inner_lr=0.5")).setup()


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    from taalm_dist.errors import TrainingError

    blowup = ["meta.inner_lr=1e38", "train.docs_per_step=2", "train.val_every=0"]
    cfg = _config(tmp_path, *blowup, "train.max_steps=3", "train.max_consecutive_skips=10")
    trainer = MetaTrainer(cfg)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.phi.export_state().items()}
    summary = trainer.train()
    trainer.cleanup()
    assert summary["skipped_steps"] == 3
    assert all(torch.equal(before[k], v) for k, v in trainer.phi.export_state().items())
    cfg = _config(tmp_path, *blowup, "train.max_steps=5", "train.max_consecutive_skips=2",
                  f"train.out_dir={tmp_path / 'stop'}")
    with pytest.raises(TrainingError, match="3 φ updates in a row"):
        _run(cfg)


def test_keeping_phi_graph_gives_the_same_update_as_recomputing_it(tmp_path):
    short = ["train.max_steps=3", "train.docs_per_step=4", "train.docs_per_inner_step=2", "train.val_every=0"]
    runs = {}
    for mode in ("keep", "recompute"):
        trainer, summary = _run(_config(tmp_path, *short, f"train.phi_graph={mode}", f"train.out_dir={tmp_path / mode}"))
        runs[mode] = (load_phi(summary["phi_dir"]), summary["last"]["train/objective"])
    keep, recompute = (dict(runs[m][0].named_parameters()) for m in ("keep", "recompute"))
    for name, p in keep.items():
        torch.testing.assert_close(p, recompute[name], rtol=1e-5, atol=1e-7)
    assert runs["keep"][1] == pytest.approx(runs["recompute"][1], rel=1e-6)


def test_time_limit_stops_early_validates_and_exports_phi(tmp_path):
    trainer, summary = _run(_config(tmp_path, "train.time_limit_s=0.001", "train.docs_per_step=2"))
    assert summary["steps"] == 1 and summary["stopped_by_time_limit"]
    assert "val/objective" in summary["last"] and (tmp_path / "run" / "phi" / "phi.safetensors").is_file()
    from taalm_dist.familiarity import Familiarity

    for exported in ("phi", "phi_last"):  # each with the familiarity record of its own weights
        record = Familiarity.load(tmp_path / "run" / exported)
        assert record is not None and record.source["train_docs"] == 200 and record.known < record.unknown
    # a record made again later from the run (`taalm phi familiarity --run`) is the one the export made
    from taalm_dist.cli import main as cli_main

    phi = tmp_path / "run" / "phi"
    exported = Familiarity.load(phi)
    assert cli_main(["phi", "familiarity", str(phi), "--run", str(tmp_path / "run")]) == 2  # exists: never replaced
    assert cli_main(["phi", "familiarity", str(phi), "--run", str(tmp_path / "run"), "--train", "x"]) == 2
    assert cli_main(["phi", "familiarity", str(phi), "--run", str(tmp_path), "--overwrite"]) == 2  # no config.yaml
    assert cli_main(["phi", "familiarity", str(phi), "--run", str(tmp_path / "run"), "--overwrite"]) == 0
    again = Familiarity.load(phi)
    assert (again.known, again.unknown, again.source["train_docs"]) == (exported.known, exported.unknown, 200)
    torch.testing.assert_close(again.own, exported.own)
    with pytest.raises(ConfigError, match="time_limit_s"):
        _config(tmp_path, "train.time_limit_s=0")


def test_weight_stats_shares_count_only_positions_whose_loss_counts():
    from taalm_dist.programs.meta_train import WeightStats

    doc = {"attention_mask": torch.tensor([[1, 1, 1, 1, 0]]), "object_mask": torch.tensor([[0, 0, 1, 1, 0]])}
    w = torch.tensor([[9.0, 1.0, 2.0, 4.0, 7.0]])  # position 0 and padding never count
    stats = WeightStats()
    stats.add(w, doc)
    out = stats.reduced("x")
    assert out["x/share_on_object"] == pytest.approx(6 / 7) and out["x/share_on_first"] == pytest.approx(1 / 7)
    assert out["x/weight_position0"] == 9.0 and out["x/weight_on_object"] == 3.0 and out["x/weight_off_object"] == 1.0


def test_per_document_passes_give_the_phi_of_documents_one_at_a_time(tmp_path):
    # train.docs_per_pass batches the documents' own inner steps; the φ updates must be those of the sequential run
    base = ["theta.trainable=lora", "meta.method=jvp", "theta.model.attn_implementation=taalm_eager", "loss.impl=eager",
            "train.max_steps=3", "train.docs_per_step=4", "train.val_every=0"]
    runs = {}
    for per_pass in (1, 4):
        _, summary = _run(_config(tmp_path, *base, f"train.docs_per_pass={per_pass}",
                                  f"train.out_dir={tmp_path / f'pass{per_pass}'}"))
        runs[per_pass] = (dict(load_phi(summary["phi_dir"]).named_parameters()), summary["last"]["train/objective"])
    sequential, batched = runs[1][0], runs[4][0]
    moved = [n for n, p in sequential.items() if p.requires_grad]
    assert moved
    for name in moved:
        torch.testing.assert_close(batched[name], sequential[name], rtol=1e-4, atol=1e-6)
    assert runs[4][1] == pytest.approx(runs[1][1], rel=1e-5)


def test_per_document_passes_need_lora_and_one_shared_setting(tmp_path):
    with pytest.raises(ConfigError, match="docs_per_pass=2 gives every document its own copy.*theta.trainable=lora"):
        _config(tmp_path, "train.docs_per_pass=2", "train.docs_per_step=4")
    with pytest.raises(ConfigError, match="docs_per_step=6 must be a multiple of train.docs_per_pass=4"):
        _config(tmp_path, "theta.trainable=lora", "train.docs_per_pass=4", "train.docs_per_step=6")


def test_validation_in_per_document_passes_equals_documents_one_at_a_time(tmp_path):
    # the validation runs in passes like training; with per-document inner steps a last partial pass still runs (each
    # document has its own θ'), so 5 validation documents in passes of 2 are all scored, as one at a time
    base = ["theta.trainable=lora", "train.val_docs=5", "train.docs_per_step=4"]
    values = {}
    for per_pass in (1, 2):
        trainer = MetaTrainer(_config(tmp_path, *base, f"train.docs_per_pass={per_pass}",
                                      f"train.out_dir={tmp_path / f'pass{per_pass}'}"))
        try:
            trainer.setup()
            values[per_pass] = trainer.validate(baselines=True)
            passes = trainer.validation_passes(5)
        finally:
            trainer.cleanup()
        assert passes == ([[0], [1], [2], [3], [4]] if per_pass == 1 else [[0, 1], [2, 3], [4]])
    for key in ("val/objective", "val/objective_uniform", "val/share_on_object"):
        assert values[2][key] == pytest.approx(values[1][key], rel=1e-5), key
