"""`taalm demo`: the step budget decides how long φ trains, not the machine's speed; a run cut short says so."""

from pathlib import Path

import pytest

from taalm_dist import demo
from taalm_dist.cli import build_parser
from taalm_dist.config import load_config


def test_the_default_time_box_is_a_safety_far_above_the_step_budget():
    cfg = load_config(demo.DEMO_CONFIG, [])
    plan = demo.DemoPlan(out=Path("unused"))
    # 60 φ updates took 4.2 min on the 2-core development machine and 36 fit in 240 s on a slower one (~6.7 s
    # each): the box must leave a machine several times slower than that the whole budget.
    assert plan.meta_time_s >= 5 * 6.7 * cfg.train.max_steps
    args = build_parser().parse_args(["demo"])
    assert args.meta_time_s == plan.meta_time_s


@pytest.mark.parametrize("stopped", [False, True])
def test_the_report_says_when_the_safety_box_stopped_meta_training(tmp_path, monkeypatch, capsys, stopped):
    summary = {"steps": 7 if stopped else 60, "max_steps": 60, "stopped_by_time_limit": stopped,
               "first": {"val/objective": 8.0}, "last": {"val/objective": 5.0, "val/weight_on_object": 0.5,
                                                         "val/weight_off_object": 0.01}}
    seen = {}

    def fake_run(cfg):
        seen["time_limit_s"] = cfg.train.time_limit_s
        return None, summary

    monkeypatch.setattr("taalm_dist.programs.meta_train.run_meta_training", fake_run)
    plan = demo.DemoPlan(out=tmp_path, meta_time_s=123.0)
    got = demo._meta_train(plan, tmp_path)
    printed = capsys.readouterr().out
    assert seen["time_limit_s"] == 123.0 and got is summary
    assert ("WARNING: the safety time box (123 s) stopped meta-training after 7 of train.max_steps=60" in printed) \
        == stopped
    results = {"meta_train": {"steps": summary["steps"], "max_steps": 60, "stopped_by_time_limit": stopped,
                              "val_objective_start": 8.0, "val_objective_end": 5.0},
               "data": "synthetic", "benchmark": "synthetic", "build": {"to_learn": 6, "not_to_forget": 6, "meta_train": 12},
               "stage_wall_s": {}, "total_wall_s": 1.0, "mlflow": "mlflow ui"}
    report = demo._report(results, "| table |")
    assert ("not the budget of docs/demo.md" in report) == stopped
    assert f"φ meta-trained for {summary['steps']} updates" in report
    assert "Table 1" not in report  # the paper columns are named only for runs that learned LAMA-CKL
    assert "Table 1" in demo._report({**results, "benchmark": "LAMA-CKL"}, "| table |")
