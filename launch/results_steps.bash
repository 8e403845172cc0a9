# Shared by the results scripts (ckl_smollm2_results.sh, transfer_smollm2.sh); sourced, not run.
# results_out OUT: refuse an existing OUT unless RESUME=1, create it, and set $log to its times.tsv.
# timed NAME COMMAND...: run COMMAND and append "NAME<TAB>seconds<TAB>UTC date" to $log (the wall time of every
# step the script ran; a step stopped and resumed has a line per completed attempt only).
results_out() {
  if [[ -e "$1" && "${RESUME:-0}" != 1 ]]; then
    echo "$1 exists; remove it, pass another OUT_DIR, or RESUME=1 to resume it" >&2
    exit 2
  fi
  mkdir -p "$1"
  log="$1/times.tsv"
}
timed() {
  local name=$1 start
  shift
  start=$(date +%s)
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - start ))" "$(date -u +%FT%TZ)" >> "$log"
}
