#!/usr/bin/env bash
# Run: bash launch/twiki_smollm2.sh [OUT_DIR]
# RESULTS.md's TemporalWiki-layout table on a CPU (SmolLM2-135M, taalm_dist/configs/twiki_smollm2_cpu.yaml): write the
# fictional world in TemporalWiki's layout (`taalm data twiki-synth`, or DATA_DIR=... for the official files), run
# finetune and kadapter over every period, make φ's meta-training pairs from the first period (`taalm twiki pairs
# --period 0809`: its lines and its changed probes, as TAALM made its TemporalWiki φ), meta-train φ on them (SEEDS,
# default "0"), run taalm and taalm+kadapter with each seed's φ, and compare. EXTRA_PHI="NAME=PHI_DIR ..." adds a
# row for each other φ (e.g. the demo's) and each of EXTRA_METHODS (default "taalm"; taalm+kadapter), named
# taalm_NAME / taalm_kadapter_NAME; EXTRA_ARGS="key=value ..." are given to those rows (e.g. twiki.phi_abstain=false),
# whose names then end in _EXTRA_TAG (default "args"). KADAPTER=0 leaves out the K-Adapter rows (kadapter,
# taalm+kadapter: a later RESUME=1 run adds them). Refuses an existing OUT_DIR
# unless RESUME=1 (a finished step is skipped, an interrupted one resumes).
set -euo pipefail
out="${1:-runs/twiki_smollm2}"
source "$(dirname "$0")/results_steps.bash"
results_out "$out"
config=taalm_dist/configs/twiki_smollm2_cpu.yaml
data="${DATA_DIR:-$out/data}"
[[ -n "${DATA_DIR:-}" || -e "$data/TWiki_Diffsets" ]] || timed data taalm data twiki-synth --out "$data"
row() {  # NAME METHOD [PHI [OVERRIDES...]]: one `twiki run`, skipped when its metrics.json exists
  local name=$1 method=$2 phi=()
  shift 2
  if [[ $# -ge 1 ]]; then phi=(--phi "$1"); shift; fi
  [[ -e "$out/$name/metrics.json" ]] || timed "$name" taalm twiki run --config "$config" --data-dir "$data" \
    --method "$method" "${phi[@]}" --out "$out/$name" --resume auto twiki.progress=false "$@"
}
kadapter=${KADAPTER:-1}
row finetune finetune
[[ $kadapter == 0 ]] || row kadapter kadapter
[[ -e "$out/pairs/meta_train.jsonl" ]] || timed pairs taalm twiki pairs --data-dir "$data" --period "${PHI_PERIOD:-0809}" \
  --out "$out/pairs"
read -ra seeds <<< "${SEEDS:-0}"
for seed in "${seeds[@]}"; do
  [[ -e "$out/phi_s$seed/phi/phi_config.json" ]] || timed "meta_train_s$seed" taalm meta-train --config "$config" \
    --resume auto data.train_file="$out/pairs/meta_train.jsonl" data.val_file="$out/pairs/meta_val.jsonl" \
    train.out_dir="$out/phi_s$seed" train.seed="$seed" train.progress=false
  row "taalm_s$seed" taalm "$out/phi_s$seed/phi"
  [[ $kadapter == 0 ]] || row "taalm_kadapter_s$seed" taalm+kadapter "$out/phi_s$seed/phi"
done
read -ra extra_args <<< "${EXTRA_ARGS:-}"
suffix=""
[[ ${#extra_args[@]} -gt 0 ]] && suffix="_${EXTRA_TAG:-args}"
read -ra extra_methods <<< "${EXTRA_METHODS:-taalm}"
for extra in ${EXTRA_PHI:-}; do
  for method in "${extra_methods[@]}"; do
    row "${method/+/_}_${extra%%=*}$suffix" "$method" "${extra#*=}" "${extra_args[@]}"
  done
done
rows=()
for r in "$out"/*/metrics.json; do rows+=("$(dirname "$r")"); done
taalm twiki compare "${rows[@]}" --plot "$out/probes.png" | tee "$out/table.md"
