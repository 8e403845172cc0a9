#!/usr/bin/env bash
# Run: bash launch/abstain_smollm2.sh LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]
# The rows of RESULTS.md's abstention section (issue 37): a φ applied to documents unlike its meta-training data,
# with and without its familiarity record's abstention (ckl.phi_abstain), against finetune and oracle on the same rows.
#   LAMA_RESULTS_DIR  the output of launch/ckl_smollm2_results.sh (tailored/, finetune/, oracle/, phi_new_sN/phi)
#   DEMO_DIR          the output of `taalm demo` (data/tailored, ckl/{finetune,oracle,taalm}, meta_train/phi)
#   OUT_DIR           default runs/abstain
# Each φ without a familiarity record gets one first (`taalm phi familiarity --run`: its meta-training run's own
# documents and split; added beside the φ, nothing replaced). Rows, each with abstention (the default) and without
# (ckl.phi_abstain=false): the LAMA-trained φs (each seed of SEEDS, default "0") on the synthetic rows, the
# synthetic-trained φ on LAMA-CKL and on its own rows; in-domain, each LAMA-trained φ without abstention on LAMA-CKL
# (its row with it is the results script's taalm_sN). RESUME=1 continues where it stopped (a finished row is skipped).
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
    --method taalm --data-dir "$lama/tailored" --phi "$phi" --out "$out/$name" --resume auto ckl.progress=false "$@"
}
on_synth() {  # RUN_NAME PHI [OVERRIDES...]: φ's weights on the synthetic rows of DEMO_DIR, with the demo's ckl settings
  local name=$1 phi=$2
  shift 2
  [[ -e "$out/$name/metrics.json" ]] || timed "$name" taalm ckl run --config taalm_dist/configs/demo_smollm2.yaml \
    --method taalm --data-dir "$demo/data/tailored" --phi "$phi" --out "$out/$name" --resume auto ckl.progress=false "$@"
}
for seed in "${seeds[@]}"; do
  phi="$lama/phi_new_s$seed/phi"
  [[ -e "$phi/familiarity.json" ]] || timed "familiarity_s$seed" taalm phi familiarity "$phi" --run "$lama/phi_new_s$seed"
done
synth_phi="$demo/meta_train/phi"
[[ -e "$synth_phi/familiarity.json" ]] || timed familiarity_synth taalm phi familiarity "$synth_phi" --run "$demo/meta_train"
for seed in "${seeds[@]}"; do  # transfer: the LAMA-trained φs on the synthetic rows
  on_synth "lama_phi_s${seed}_on_synth" "$lama/phi_new_s$seed/phi"
  on_synth "lama_phi_s${seed}_on_synth_no_abstain" "$lama/phi_new_s$seed/phi" ckl.phi_abstain=false
done
on_synth synth_phi_on_synth "$synth_phi"  # in-domain: the synthetic-trained φ on its own kind
on_synth synth_phi_on_synth_no_abstain "$synth_phi" ckl.phi_abstain=false
on_lama synth_phi_on_lama "$synth_phi"  # transfer: the synthetic-trained φ on LAMA-CKL
on_lama synth_phi_on_lama_no_abstain "$synth_phi" ckl.phi_abstain=false
for seed in "${seeds[@]}"; do  # in-domain: each LAMA-trained φ without the rule (its row with it: taalm_sN)
  on_lama "lama_phi_s${seed}_no_abstain" "$lama/phi_new_s$seed/phi" ckl.phi_abstain=false
done
existing() { for r in "$@"; do [[ -e "$r/metrics.json" ]] && echo "$r"; done; return 0; }
in_domain=() transfer=()
for seed in "${seeds[@]}"; do
  in_domain+=("$lama/taalm_s$seed" "$out/lama_phi_s${seed}_no_abstain")
  transfer+=("$out/lama_phi_s${seed}_on_synth" "$out/lama_phi_s${seed}_on_synth_no_abstain")
done
mapfile -t lama_rows < <(existing "$lama/finetune" "$lama/oracle" "$out/synth_phi_on_lama" "$out/synth_phi_on_lama_no_abstain" \
  "${in_domain[@]}")
mapfile -t synth_rows < <(existing "$demo/ckl/finetune" "$demo/ckl/oracle" "$out/synth_phi_on_synth" \
  "$out/synth_phi_on_synth_no_abstain" "${transfer[@]}")
{
  echo "## LAMA-CKL rows"; taalm ckl compare "${lama_rows[@]}"
  echo; echo "## synthetic rows"; taalm ckl compare "${synth_rows[@]}"
} | tee "$out/table.md"
