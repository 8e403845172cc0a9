"""The GPU check's dry run (`launch/gpu_check.sh` without CUDA, from a kit `tools/gpu_kit.py` built here for this
Python) and its refusals: proves the script and the kit long before a GPU machine is lent."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taalm_dist.bench.gpu_check import STAGES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _check(out: Path, kit: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_KIT": str(kit), "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(["bash", str(ROOT / "launch/gpu_check.sh"), str(out)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kit") / "gpu-kit"
    res = subprocess.run([sys.executable, str(ROOT / "tools/gpu_kit.py"), "--python", PYTHON, "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"for CPython {PYTHON}" in res.stdout and "MiB" in res.stdout
    return out


def test_the_kit_holds_deepspeed_without_ops_and_its_dependencies_under_the_limit(kit):
    manifest = json.loads((kit / "MANIFEST.json").read_text())
    names = {w["file"].split("-")[0].lower() for w in manifest["wheels"]}
    assert {"deepspeed", "pydantic", "pydantic_core", "hjson", "peft"} <= names
    assert sum(w["bytes"] for w in manifest["wheels"]) == sum(f.stat().st_size for f in kit.glob("*.whl"))
    assert manifest["mib"] <= manifest["max_mib"] == 60
    assert not any("torch" == n or "transformers" == n for n in names)  # the GPU machine's own


def test_the_dry_run_exercises_every_stage_from_the_kit(kit, tmp_path):
    out = tmp_path / "out"
    res = _check(out, kit)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in STAGES:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["dry_run"] is True and record["budget_s"] == STAGES[name]
        assert record["status"] in ("passed", "skipped"), (name, record["summary"], record.get("traceback"))
        assert record["seconds"] < record["budget_s"]
        line = next(x for x in res.stdout.splitlines() if x.startswith(name + " "))
        assert record["status"].upper() in line and record["summary"][:40] in line
    assert {json.loads((out / f"{n}.json").read_text())["status"] for n in ("flash_attn", "qlora")} == {"skipped"}
    deepspeed = json.loads((out / "zero3_nccl.json").read_text())["packages"]["deepspeed"]["path"]
    assert "taalm-gpu-kit." in deepspeed  # imported from the kit's temporary target, not the environment
    loss = json.loads((out / "loss.json").read_text())
    assert loss["triton"] and any(c["impl"] == "triton" and "skipped" not in c for c in loss["cases"])


def test_a_stage_stopped_by_its_budget_is_recorded_and_fails_the_check(tmp_path):
    out = tmp_path / "out"
    res = _check(out, tmp_path / "no-kit", GPU_CHECK_STAGES="metastep_7b", GPU_CHECK_BUDGET_SCALE="0.01")
    assert res.returncode == 1, res.stdout + res.stderr
    record = json.loads((out / "metastep_7b.json").read_text())
    assert record["status"] == "timed_out" and record["budget_s"] == 1
    assert "metastep_7b  TIMED_OUT" in res.stdout and "using the installed packages" in res.stdout
    assert not (out / "loss.json").exists()


def test_a_used_output_directory_is_refused_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "loss.json").write_text("mine")
    res = _check(out, tmp_path / "no-kit")
    assert res.returncode == 2 and "not empty" in res.stderr
    assert (out / "loss.json").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_a_kit_over_its_limit_or_over_a_folder_that_is_no_kit_is_refused(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "tools" / "gpu_kit.py")
    gpu_kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_kit)

    with pytest.raises(gpu_kit.KitError, match=r"over the 0.5 MiB limit"):
        gpu_kit.build_kit(tmp_path / "small", PYTHON, max_mib=0.5)
    assert not (tmp_path / "small").exists() and [p.name for p in tmp_path.iterdir()] == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(gpu_kit.KitError, match="not a GPU kit"):
        gpu_kit.build_kit(mine, PYTHON)
    assert (mine / "notes.txt").read_text() == "keep"


def test_a_python_without_pip_gets_the_kit_unpacked(kit, tmp_path):
    fake = tmp_path / "python3"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 1; fi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    res = _check(out, kit, PYTHON=str(fake), GPU_CHECK_STAGES="zero3_nccl")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "taalm-gpu-kit." in json.loads((out / "zero3_nccl.json").read_text())["packages"]["deepspeed"]["path"]
