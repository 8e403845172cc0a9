"""The GPU check's bookkeeping: every stage leaves one JSON file, whatever happens to it, and the summary judges
the run from those files alone."""

import json

import pytest

from taalm_dist.bench import gpu_check


def test_a_stage_that_raises_or_skips_still_writes_its_file(tmp_path, monkeypatch):
    def boom():
        raise RuntimeError("the kernel failed")

    def absent():
        raise gpu_check.Skip("bitsandbytes is not installed")

    monkeypatch.setattr(gpu_check, "stage_loss", boom)
    monkeypatch.setattr(gpu_check, "stage_qlora", absent)
    assert gpu_check.main(["run", "loss", str(tmp_path)]) == 1
    assert gpu_check.main(["run", "qlora", str(tmp_path)]) == 0
    failed = json.loads((tmp_path / "loss.json").read_text())
    assert failed["status"] == "failed" and "the kernel failed" in failed["summary"]
    assert "RuntimeError" in failed["traceback"] and failed["budget_s"] == gpu_check.STAGES["loss"]
    assert {"machine", "packages", "seconds", "dry_run"} <= set(failed)
    assert json.loads((tmp_path / "qlora.json").read_text())["status"] == "skipped"


def test_the_summary_reads_the_files_and_a_missing_one_fails(tmp_path, capsys):
    for name, status in (("meta_bf16", "passed"), ("qlora", "skipped")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"status": status, "summary": f"{name} ok", "seconds": 3}))
    assert gpu_check.main(["summary", str(tmp_path), "meta_bf16", "qlora"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("meta_bf16") and "PASSED" in out[0] and "3/60 s" in out[0] and "qlora ok" in out[1]
    assert gpu_check.main(["summary", str(tmp_path)]) == 1  # every stage: the others have no file
    assert "no result (FileNotFoundError" in capsys.readouterr().out
    assert gpu_check.main(["timed-out", "loss", str(tmp_path), "80"]) == 0
    assert json.loads((tmp_path / "loss.json").read_text())["status"] == "timed_out"
    assert gpu_check.main(["summary", str(tmp_path), "loss"]) == 1


def test_budgets_come_in_order_scaled_and_unknown_stages_are_refused(capsys):
    assert gpu_check.main(["budgets", "--scale", "2", "zero3_nccl", "loss"]) == 0
    assert capsys.readouterr().out.split() == ["zero3_nccl", "120", "loss", "160"]
    gpu_check.main(["budgets"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(gpu_check.STAGES)
    assert sum(gpu_check.STAGES.values()) <= 8 * 60 - 30  # the kit's install and the imports fit in the rest
    with pytest.raises(SystemExit):
        gpu_check.main(["budgets", "warp_drive"])
    assert "unknown stages ['warp_drive']" in capsys.readouterr().err
