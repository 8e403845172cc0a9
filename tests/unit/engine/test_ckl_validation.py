"""The benchmark-like validation of φ: θ learns the validation documents, then answers their tasks."""

import json

import torch

from taalm_dist.weight_rules import oracle_weights, uniform_weights
from taalm_dist.engine.ckl_validation import ckl_validation
from taalm_dist.programs.meta_train import MetaTrainer
from toy_meta import run_trainer, toy_config

CKL = ["train.ckl_val_passes=2", "train.ckl_val_lr=0.05", "train.ckl_val_batch_size=4"]


def test_weighting_the_answer_scores_higher_than_uniform_and_theta_is_restored(tmp_path):
    trainer = MetaTrainer(toy_config(tmp_path))
    trainer.setup()
    try:
        before = trainer.view.snapshot()
        kw = dict(passes=2, lr=0.05, batch_size=4, seed=0)
        answer = ckl_validation(trainer.view, trainer.data.val, oracle_weights, trainer.pad_id, **kw)
        uniform = ckl_validation(trainer.view, trainer.data.val, uniform_weights, trainer.pad_id, **kw)
        again = ckl_validation(trainer.view, trainer.data.val, oracle_weights, trainer.pad_id, **kw)
        after = trainer.view.snapshot()
    finally:
        trainer.cleanup()
    assert answer["acc"] >= uniform["acc"] + 0.1, (answer, uniform)
    assert answer == again  # from θ₀ every time, same document order: comparable across φ updates
    assert set(answer) == {"acc", "top_acc", "acc_pass_1", "acc_pass_2"}
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None for p in trainer.view.params)


def _selection(path):
    return json.loads((path / "selection.json").read_text())


def test_best_phi_is_exported_with_its_step_and_the_last_one_beside_it(tmp_path):
    cfg = toy_config(tmp_path, *CKL, "train.ckl_val_every=5", "train.max_steps=20", "train.docs_per_step=4")
    trainer, summary = run_trainer(cfg)
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["ckl_val/top_acc"] for r in records if "ckl_val/top_acc" in r}
    assert sorted(scores) == [0, 5, 10, 15, 20]
    best_step = max(scores, key=lambda s: (scores[s], -s))  # highest, ties to the earlier
    chosen = _selection(run / "phi")
    assert chosen["rule"] == "ckl_val" and chosen["step"] == best_step and chosen["score"] == scores[best_step]
    assert _selection(run / "phi_last") == {"rule": "last", "step": 20}
    assert summary["selected"]["step"] == best_step
    assert (run / "phi" / "phi.safetensors").read_bytes() == \
        (run / "best_phi" / "phi.safetensors").read_bytes()
    first = summary["first"]
    assert first["ckl_val/acc_oracle"] > first["ckl_val/acc_uniform"]
    assert (run / "heatmaps" / "step_000020" / "heatmap.html").is_file()
    assert 0 < summary["last"]["train/share_on_object"] < 1


def test_a_resumed_run_selects_the_same_best_phi(tmp_path):
    common = [*CKL, "train.ckl_val_every=4", "train.docs_per_step=4", "train.save_every=4", "train.val_every=0"]
    run_trainer(toy_config(tmp_path, *common, "train.max_steps=12"))
    split = [*common, f"train.out_dir={tmp_path / 'split'}"]
    run_trainer(toy_config(tmp_path, *split, "train.max_steps=8"))
    run_trainer(toy_config(tmp_path, *split, "train.max_steps=12", "train.resume=auto"))
    whole, resumed = tmp_path / "run", tmp_path / "split"
    assert _selection(whole / "phi") == _selection(resumed / "phi")
    assert (whole / "phi" / "phi.safetensors").read_bytes() == (resumed / "phi" / "phi.safetensors").read_bytes()
    assert (whole / "phi_last" / "phi.safetensors").read_bytes() == (resumed / "phi_last" / "phi.safetensors").read_bytes()


def test_zero_updates_export_the_initial_near_uniform_phi(tmp_path):
    _, summary = run_trainer(toy_config(tmp_path, "train.max_steps=0", "train.val_every=0"))
    assert summary["steps"] == 0
    assert _selection(tmp_path / "run" / "phi") == {"rule": "last", "step": 0}


def test_a_validation_that_cannot_tell_weights_apart_hands_the_selection_to_the_objective(tmp_path, capsys):
    blind = ["train.ckl_val_passes=1", "train.ckl_val_lr=1e-12", "train.ckl_val_batch_size=4"]  # θ learns nothing
    cfg = toy_config(tmp_path, *blind, "train.ckl_val_every=4", "train.val_every=2", "train.max_steps=8",
                     "train.docs_per_step=4")
    _, summary = run_trainer(cfg)
    first = summary["first"]
    assert first["ckl_val/top_acc_oracle"] <= first["ckl_val/top_acc_uniform"]
    assert "the CKL validation cannot tell weights apart here" in capsys.readouterr().out
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    objective = {r["step"]: r["val/objective"] for r in records if "val/objective" in r}
    assert sorted(objective) == [0, 2, 4, 6, 8]
    best = min(objective, key=lambda s: (objective[s], s))
    chosen = _selection(tmp_path / "run" / "phi")
    assert chosen == {"rule": "objective", "step": best, "score": -objective[best], "metric": "-val/objective"}
    assert summary["selected"]["rule"] == "objective"
    # without the objective's validation: the last φ
    _, summary = run_trainer(toy_config(tmp_path, *blind, "train.ckl_val_every=4", "train.val_every=0",
                                        "train.max_steps=4", f"train.out_dir={tmp_path / 'last'}"))
    assert _selection(tmp_path / "last" / "phi") == {"rule": "last", "step": 4}
