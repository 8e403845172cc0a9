#!/usr/bin/env bash
"true" r'''\'
# `taalm twiki run` with θ under DeepSpeed ZeRO-3 (data parallel), one process per GPU. Either command works, as written:
#   deepspeed launch/twiki_run.sh CONFIG.yaml --method taalm --phi PHI_DIR --data-dir TWIKI_DIR [--out DIR] [key.sub=value ...]
#   bash launch/twiki_run.sh CONFIG.yaml --method taalm --phi PHI_DIR --data-dir TWIKI_DIR [--out DIR] [key.sub=value ...]
# This file is both a bash script and a Python file. The DeepSpeed launcher runs its script argument with
# Python, once per process (the Python part at the end); run with bash, launch/deepspeed_self.bash starts the
# launcher on this same file: NUM_GPUS=N processes (default: every GPU, or 2 CPU processes with gloo on a
# machine without one), HOSTFILE=path for several hosts (lines "host slots=8"; passwordless ssh), MASTER_PORT.
# Flags and overrides after the config go to `taalm twiki run`. Resumes the newest epoch checkpoint of the output
# directory (--resume auto), so a restarted or requeued job continues the run in the period it stopped in.
source "$(dirname "$0")/deepspeed_self.bash" "CONFIG.yaml [--method M --phi DIR --data-dir TWIKI_DIR --out DIR] [key.sub=value ...]" "$@"
: <<'#'  the Python part, for bash a here-document that is never run
'''
from taalm_dist.cli import exit_process
from taalm_dist.launch import run_verb

exit_process(run_verb("twiki-run"))
#
