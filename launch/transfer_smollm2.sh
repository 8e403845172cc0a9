#!/usr/bin/env bash
# Run: bash launch/transfer_smollm2.sh LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]
# The transfer rows of RESULTS.md: does a φ meta-trained on one kind of document help θ learn another kind?
#   LAMA_RESULTS_DIR  the output of launch/ckl_smollm2_results.sh (tailored/, finetune/, oracle/, phi_new_s0/phi)
#   DEMO_DIR          the output of `taalm demo` on the synthetic benchmark (data/tailored, ckl/{finetune,oracle,
#                     taalm}, meta_train/phi)
#   OUT_DIR           default runs/transfer
# Rows: the synthetic-trained φ (the demo's) on LAMA-CKL; the LAMA-trained φ (seed 0) on the synthetic benchmark;
# and the general φ of taalm_dist/configs/meta_train_mixture_smollm2_cpu.yaml (meta-trained on both sources, selected on
# both) on each, every one against finetune and oracle on the same rows (each benchmark's own `ckl run` config);
# and the LAMA-trained φ on the synthetic rows under the do-no-harm weight floor (ckl.phi_weight_floor=$FLOOR,
# default 1e-4) and under the scale-free uniform share (ckl.phi_uniform_share=$SHARE, default 0.5).
# About 1.5 hours on 2 CPU cores. RESUME=1 continues where it stopped (a finished row is skipped).
set -euo pipefail
lama="${1:?usage: $0 LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]}"
demo="${2:?usage: $0 LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]}"
out="${3:-runs/transfer}"
source "$(dirname "$0")/results_steps.bash"
results_out "$out"
on_lama() {  # RUN_NAME PHI: φ's weights on the LAMA-CKL rows of LAMA_RESULTS_DIR
  [[ -e "$out/$1/metrics.json" ]] || timed "$1" taalm ckl run --config taalm_dist/configs/ckl_smollm2_cpu.yaml --method taalm \
    --data-dir "$lama/tailored" --phi "$2" --out "$out/$1" ckl.progress=false
}
on_synth() {  # RUN_NAME PHI [OVERRIDES...]: φ's weights on the synthetic rows of DEMO_DIR, with the demo's ckl settings
  local name=$1 phi=$2
  shift 2
  [[ -e "$out/$name/metrics.json" ]] || timed "$name" taalm ckl run --config taalm_dist/configs/demo_smollm2.yaml \
    --method taalm --data-dir "$demo/data/tailored" --phi "$phi" --out "$out/$name" ckl.progress=false "$@"
}
lama_phi_on_synth() {
  if [[ -e "$lama/phi_new_s0/phi/phi_config.json" ]]; then
    on_synth lama_phi_on_synth "$lama/phi_new_s0/phi"
    on_synth lama_phi_on_synth_floor "$lama/phi_new_s0/phi" ckl.phi_weight_floor="${FLOOR:-1e-4}"
    on_synth lama_phi_on_synth_share "$lama/phi_new_s0/phi" ckl.phi_uniform_share="${SHARE:-0.5}"
  fi
  return 0
}

on_lama synth_phi_on_lama "$demo/meta_train/phi"
lama_phi_on_synth

# The general φ: meta-training pairs of both sources (the synthetic ones are the demo's, disjoint from its
# To-Learn people), validated on both (LAMA-CKL's meta_val + 16 synthetic pairs of another seed).
mix="$out/mixture"
[[ -e "$mix/synth_val/meta_train.jsonl" ]] || taalm data synth --out "$mix/synth_val" --seed 1 --n-to-learn 1 --n-meta 16
[[ -e "$mix/meta_train.jsonl" ]] || taalm data mix lama="$lama/tailored/meta_train.jsonl" \
  synth="$demo/data/tailored/meta_train.jsonl" --out "$mix/meta_train.jsonl"
[[ -e "$mix/val/meta_val.jsonl" ]] || taalm data mix lama="$lama/tailored/meta_val.jsonl" \
  synth="$mix/synth_val/meta_train.jsonl" --out "$mix/val/meta_val.jsonl"
[[ -e "$out/phi_mix/phi/phi_config.json" ]] || timed meta_train_mix taalm meta-train \
  --config taalm_dist/configs/meta_train_mixture_smollm2_cpu.yaml --resume auto data.train_file="$mix/meta_train.jsonl" \
  data.val_file="$mix/val/meta_val.jsonl" train.out_dir="$out/phi_mix" train.progress=false
on_lama mix_phi_on_lama "$out/phi_mix/phi"
on_synth mix_phi_on_synth "$out/phi_mix/phi"
lama_phi_on_synth

existing() { for r in "$@"; do [[ -e "$r/metrics.json" ]] && echo "$r"; done; return 0; }
mapfile -t lama_rows < <(existing "$lama/finetune" "$lama/oracle" "$lama/taalm_s0" "$out/synth_phi_on_lama" \
  "$out/mix_phi_on_lama")
mapfile -t synth_rows < <(existing "$demo/ckl/finetune" "$demo/ckl/oracle" "$demo/ckl/taalm" \
  "$out/lama_phi_on_synth" "$out/lama_phi_on_synth_floor" "$out/lama_phi_on_synth_share" "$out/mix_phi_on_synth")
{
  echo "## LAMA-CKL rows"; taalm ckl compare "${lama_rows[@]}"
  echo; echo "## synthetic rows"; taalm ckl compare "${synth_rows[@]}"
} | tee "$out/table.md"
