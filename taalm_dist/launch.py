"""The Python side of the launch scripts (``launch/meta_train.sh``, ``launch/ckl_run.sh``, ``launch/learn.sh``,
``launch/twiki_run.sh``).

Each script is both a bash script and a Python file. ``bash launch/meta_train.sh CONFIG [overrides]`` runs its bash
part, which starts the DeepSpeed launcher on the script itself; ``deepspeed launch/meta_train.sh CONFIG
[overrides]`` (the launcher runs its script argument with Python, once per process, adding
``--local_rank=N``) runs its Python part, which calls :func:`run_verb`. So both commands start the same
processes.
"""

from __future__ import annotations

import os
import sys

from taalm_dist.cli import main as cli_main

VERBS = {
    "meta-train": ["meta-train"],
    "ckl-run": ["ckl", "run"],
    "learn": ["learn"],
    "twiki-run": ["twiki", "run"],
}
"""Launch-script verb → ``taalm`` command words."""


def strip_local_rank(argv: list[str]) -> tuple[list[str], int | None]:
    """``argv`` without the launcher's ``--local_rank=N`` / ``--local_rank N``, and N (``None`` if absent)."""
    out, local_rank, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--local_rank="):
            local_rank = int(a.split("=", 1)[1])
        elif a == "--local_rank" and i + 1 < len(argv):
            local_rank, i = int(argv[i + 1]), i + 1
        else:
            out.append(a)
        i += 1
    return out, local_rank


def command_line(verb: str, argv: list[str]) -> list[str]:
    """The ``taalm`` arguments a launch script runs: ``CONFIG [args...]`` → ``<verb words> --config CONFIG
    --resume auto args...`` (every verb resumes the newest complete checkpoint, so a requeued
    job continues)."""
    if verb not in VERBS:
        raise ValueError(f"unknown launch verb {verb!r}; one of {sorted(VERBS)}")
    args, _ = strip_local_rank(argv)
    if not args or args[0].startswith("-"):
        raise SystemExit(f"usage: deepspeed launch/{verb.replace('-', '_')}.sh CONFIG.yaml [key.sub=value ...]")
    config, rest = args[0], args[1:]
    resume = ["--resume", "auto"]
    return [*VERBS[verb], "--config", config, *resume, *rest]


def run_verb(verb: str, argv: list[str] | None = None) -> int:
    """Run ``verb`` in this process as a launcher started it (``LOCAL_RANK`` from ``--local_rank`` when the
    environment lacks it)."""
    argv = sys.argv[1:] if argv is None else argv
    _, local_rank = strip_local_rank(argv)
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    return cli_main(command_line(verb, argv))
