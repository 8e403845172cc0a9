#!/usr/bin/env bash
# Run: bash launch/abstain_smollm2.sh LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]
# The rows of RESULTS.md's abstention section (issue 37): a φ applied to documents unlike its meta-training data,
# with and without its familiarity record's abstention (ckl.phi_abstain), against finetune and oracle on the same rows.
#   LAMA_RESULTS_DIR  the output of launch/ckl_smollm2_results.sh (tailored/, finetune/, oracle/, phi_new_sN/phi)
#   DEMO_DIR          the output of `taalm demo` (data/tailored, ckl/{finetune,oracle,taalm}, meta_train/phi)
#   OUT_DIR           default runs/abstain
# Each LAMA-trained φ without a familiarity record gets one first (`taalm phi familiarity`: its meta-training pairs
# against its validation pairs; added beside the φ, nothing replaced). Rows: the synthetic-trained φ on LAMA-CKL and
# the LAMA-trained φ (each seed of SEEDS, default "0") on the synthetic rows, each with abstention (the default) and
# without; and in-domain, each LAMA-trained φ on LAMA-CKL with abstention (its row without is the results script's
# taalm_sN). RESUME=1 continues where it stopped (a finished row is skipped).
set -euo pipefail
lama="${1:?usage: $0 LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]}"
demo="${2:?usage: $0 LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]}"
out="${3:-runs/abstain}"
source "$(dirname "$0")/results_steps.bash"
results_out "$out"
read -ra seeds <<< "${SEEDS:-0}"
on_lama() {  # RUN_NAME PHI [OVERRIDES...]: φ's weights on the LAMA-CKL rows of LAMA_RESULTS_DIR
  local name=$1 phi=$2
  shift 2
  [[ -e "$out/$name/metrics.json" ]] || timed "$name" taalm ckl run --config taalm_dist/configs/ckl_smollm2_cpu.yaml \
    --method taalm --data-dir "$lama/tailored" --phi "$phi" --out "$out/$name" ckl.progress=false "$@"
}
on_synth() {  # RUN_NAME PHI [OVERRIDES...]: φ's weights on the synthetic rows of DEMO_DIR, with the demo's ckl settings
  local name=$1 phi=$2
  shift 2
  [[ -e "$out/$name/metrics.json" ]] || timed "$name" taalm ckl run --config taalm_dist/configs/demo_smollm2.yaml \
    --method taalm --data-dir "$demo/data/tailored" --phi "$phi" --out "$out/$name" ckl.progress=false "$@"
}
for seed in "${seeds[@]}"; do
  phi="$lama/phi_new_s$seed/phi"
  [[ -e "$phi/familiarity.json" ]] || timed "familiarity_s$seed" taalm phi familiarity "$phi" \
    --train "$lama/tailored/meta_train.jsonl" --heldout "$lama/tailored/meta_val.jsonl"
done
on_synth lama_phi_s0_on_synth "$lama/phi_new_s0/phi"
on_synth lama_phi_s0_on_synth_no_abstain "$lama/phi_new_s0/phi" ckl.phi_abstain=false
on_lama synth_phi_on_lama "$demo/meta_train/phi"
on_lama synth_phi_on_lama_no_abstain "$demo/meta_train/phi" ckl.phi_abstain=false
for seed in "${seeds[@]}"; do
  on_lama "lama_phi_s${seed}_abstain" "$lama/phi_new_s$seed/phi"
done
existing() { for r in "$@"; do [[ -e "$r/metrics.json" ]] && echo "$r"; done; return 0; }
in_domain=()
for seed in "${seeds[@]}"; do in_domain+=("$lama/taalm_s$seed" "$out/lama_phi_s${seed}_abstain"); done
mapfile -t lama_rows < <(existing "$lama/finetune" "$lama/oracle" "$out/synth_phi_on_lama" "$out/synth_phi_on_lama_no_abstain" \
  "${in_domain[@]}")
mapfile -t synth_rows < <(existing "$demo/ckl/finetune" "$demo/ckl/oracle" "$demo/ckl/taalm" "$out/lama_phi_s0_on_synth" \
  "$out/lama_phi_s0_on_synth_no_abstain")
{
  echo "## LAMA-CKL rows"; taalm ckl compare "${lama_rows[@]}"
  echo; echo "## synthetic rows"; taalm ckl compare "${synth_rows[@]}"
} | tee "$out/table.md"
