#!/usr/bin/env bash
"true" r'''\'
# Meta-train φ under DeepSpeed ZeRO-3, one process per GPU. Either command works, as written:
#   deepspeed launch/meta_train.sh taalm_dist/configs/zero3_llama2_tinyllama.yaml [key.sub=value ...]
#   bash launch/meta_train.sh taalm_dist/configs/zero3_llama2_tinyllama.yaml [key.sub=value ...]
# This file is both a bash script and a Python file. The DeepSpeed launcher runs its script argument with
# Python, once per process (the Python part at the end); run with bash, launch/deepspeed_self.bash starts the
# launcher on this same file: NUM_GPUS=N processes (default: every GPU, or 2 CPU processes with gloo on a
# machine without one), HOSTFILE=path for several hosts (lines "host slots=8"; passwordless ssh), MASTER_PORT.
# Resumes the newest complete checkpoint of train.out_dir (--resume auto).
source "$(dirname "$0")/deepspeed_self.bash" "CONFIG.yaml [key.sub=value ...]" "$@"
: <<'#'  the Python part, for bash a here-document that is never run
'''
from taalm_dist.cli import exit_process
from taalm_dist.launch import run_verb

exit_process(run_verb("meta-train"))
#
