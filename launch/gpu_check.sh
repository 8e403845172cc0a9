#!/usr/bin/env bash
# Run: bash launch/gpu_check.sh OUT_DIR
# The GPU check as one command for a GPU machine without network (docs/cluster.md, "GPU check"): installs the offline kit
# (`make gpu-kit` made .gpu-kit/ beside this script's repository; GPU_KIT=DIR names another) into a temporary
# target, then runs every stage of taalm_dist/bench/gpu_check.py in its own process under its own time budget
# (stage list and budgets: STAGES there; the whole fits 8 minutes on one H100), writes OUT_DIR/STAGE.json for
# each (a stage its budget stops gets a `timed_out` file) and prints one line per stage. Exit 0 when every stage
# passed or was skipped (flash-attn, QLoRA: only where their packages are), 1 otherwise, 2 on bad usage.
# Without CUDA it is the dry run: tiny shapes on the CPU, Triton interpreted (the test suite runs it).
# Without a kit the installed packages are used as they are (a machine with `make install` done).
# PYTHON=python3 (default) picks the interpreter; GPU_CHECK_STAGES="loss zero3_nccl" runs only those stages;
# GPU_CHECK_BUDGET_SCALE=2 multiplies every budget (a slower card).
set -euo pipefail
out="${1:?usage: bash launch/gpu_check.sh OUT_DIR (a new or empty directory)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
kit="${GPU_KIT:-$root/.gpu-kit}"
if [[ -e "$out" && -n "$(ls -A "$out" 2>/dev/null)" ]]; then
  echo "gpu_check: $out is not empty; give a new directory (nothing in it is overwritten)" >&2
  exit 2
fi
mkdir -p "$out"
start=$SECONDS
if [[ -d "$kit" ]]; then
  [[ -f "$kit/MANIFEST.json" ]] || { echo "gpu_check: $kit has no MANIFEST.json: remake it with make gpu-kit" >&2; exit 2; }
  target="$(mktemp -d "${TMPDIR:-/tmp}/taalm-gpu-kit.XXXXXX")"
  trap 'rm -rf "$target"' EXIT
  if "$py" -m pip --version > /dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$target" "$kit"/*.whl
  else  # no pip: a wheel is a zip archive of what goes on the path
    for wheel in "$kit"/*.whl; do "$py" -m zipfile -e "$wheel" "$target"; done
  fi
  export PYTHONPATH="$target:$root${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_check: kit $kit installed into $target ($((SECONDS - start)) s)"
else
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_check: no kit at $kit; using the installed packages"
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
plan="$("$py" -m taalm_dist.bench.gpu_check budgets --scale "${GPU_CHECK_BUDGET_SCALE:-1}" ${GPU_CHECK_STAGES:-})"
stages=()
while read -r stage budget; do
  stages+=("$stage")
  rc=0
  timeout --kill-after=10 "$budget" "$py" -m taalm_dist.bench.gpu_check run "$stage" "$out" \
    > "$out/$stage.log" 2>&1 || rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    "$py" -m taalm_dist.bench.gpu_check timed-out "$stage" "$out" "$budget"
  fi
  echo "gpu_check: $stage done ($((SECONDS - start)) s so far)"
done <<< "$plan"
echo "gpu_check: $((SECONDS - start)) s in all; results in $out"
"$py" -m taalm_dist.bench.gpu_check summary "$out" "${stages[@]}"
