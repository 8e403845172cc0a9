"""``taalm bench metatrain``: meta-training throughput of the real trainer on a config — documents per second and
seconds per φ update — so a change to the meta-step is judged in one command.

The run is the product's :class:`taalm_dist.programs.meta_train.MetaTrainer` on one process (or on every rank under a
launcher: ``torchrun --nproc_per_node N -m taalm_dist.cli bench metatrain ...`` runs it under ZeRO-3, document
parallel), with the config given
(default: the demo's, ``taalm_dist/configs/demo_smollm2.yaml``: SmolLM2-135M θ with LoRA, a 4-layer φ, AdamW
inner step) on the synthetic meta-training pairs of ``taalm data synth`` (written to a temporary directory unless
``data.train_file`` is overridden). Validation and checkpoints are off; ``warmup`` φ updates are run and not
counted, then ``steps`` φ updates are timed from the trainer's own per-update clock (``time/step_s`` of
metrics.jsonl). Overrides (``key.sub=value``) go to the config, e.g. ``meta.method=fd1`` to compare methods.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from taalm_dist.bench.common import machine_info
from taalm_dist.config import SHIPPED_CONFIGS

DEMO_CONFIG = SHIPPED_CONFIGS / "demo_smollm2.yaml"


@contextlib.contextmanager
def bench_trainer(config: str | Path, overrides: list[str] | tuple[str, ...], max_steps: int,
                  threads: int | None = None, n_meta: int = 200):
    """A set-up one-process :class:`~taalm_dist.programs.meta_train.MetaTrainer` of ``config`` for a benchmark: run
    directory in a temporary directory, validation, checkpoints, time limit and MLflow off, ``max_steps`` φ updates
    allowed; on the synthetic meta-training pairs of ``taalm data synth`` (``n_meta`` of them) unless
    ``data.train_file`` is among ``overrides``. Yields ``(trainer, setup_s)``; cleans up after."""
    from taalm_dist.config import load_config
    from taalm_dist.data.synth import write_synth
    from taalm_dist.programs.meta_train import MetaTrainer

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="taalm_bench_") as tmp:
        data = Path(tmp) / "data"
        base = [f"train.out_dir={Path(tmp) / 'run'}", "train.val_every=0", "train.ckl_val_every=0",
                "train.select=last", "train.save_every=0", "train.save_every_s=null", "train.progress=false",
                "train.time_limit_s=null", f"train.max_steps={max_steps}", "tracking.mlflow=false"]
        if not any(o.startswith("data.train_file=") for o in overrides):
            write_synth(data, overwrite=True, n_to_learn=8, n_meta=n_meta, seed=0, distractors=4)
            base += [f"data.train_file={data / 'meta_train.jsonl'}", "data.val_file=null"]
        trainer = MetaTrainer(load_config(config, base + list(overrides)))
        t0 = time.perf_counter()
        try:
            trainer.setup()
            yield trainer, time.perf_counter() - t0
        finally:
            trainer.cleanup()


def bench_metatrain(config: str | Path = DEMO_CONFIG, overrides: list[str] | tuple[str, ...] = (), steps: int = 5,
                    warmup: int = 1, threads: int | None = None, n_meta: int = 200, val_every: int = 0) -> dict:
    """Time ``steps`` φ updates of the meta-trainer after ``warmup`` ones; returns the ``{"bench", "machine",
    "cases"}`` JSON object with one case: ``method``, ``inner``, ``docs_per_step``, ``docs_per_inner_step``,
    ``steps``, ``s_per_update`` (median over the timed updates, s), ``s_per_update_mean``, ``docs_per_s``
    (``docs_per_step / s_per_update``), ``setup_s`` (models and data), ``config`` and ``overrides``.

    ``val_every`` > 0 also records φ's learning curve: ``curve`` = ``[[update, held-out L(θ')], ...]`` before the
    first update and after every ``val_every`` updates (warm-up ones counted), on the ``train.val_docs`` pairs held
    out of the training file (:meth:`MetaTrainer.validate`: the objective after an inner step with φ's weights,
    evaluated exactly, whatever ``meta.method``); validation is not timed. ``train.seed=N`` picks another
    held-out set and document order."""
    if steps < 1 or warmup < 0 or val_every < 0:
        raise ValueError(f"steps={steps} must be >= 1, warmup={warmup} >= 0 and val_every={val_every} >= 0")
    curve = []
    with bench_trainer(config, overrides, warmup + steps, threads, n_meta) as (trainer, setup_s):
        cfg = trainer.cfg
        if val_every and not trainer.data.val:
            raise ValueError("val_every needs validation pairs: train.val_docs > 0 (or data.val_file)")
        times = []
        for update in range(warmup + steps + 1):
            if val_every and update % val_every == 0:
                curve.append([update, trainer.validate()["val/objective"]])
            if update < warmup + steps:
                times.append(trainer.train_step()["time/step_s"])
        times = times[warmup:]
        n_val = min(len(trainer.data.val), cfg.train.val_docs)
    t = cfg.train
    median = statistics.median(times)
    case = {"config": str(config), "overrides": list(overrides), "method": cfg.meta.method, "inner": cfg.meta.inner,
            "theta": cfg.theta.model.source, "phi_layers": cfg.phi.num_layers, "max_doc_tokens": cfg.data.max_doc_tokens,
            "docs_per_step": t.docs_per_step, "docs_per_inner_step": t.docs_per_inner_step,
            "docs_per_pass": t.docs_per_pass, "processes": trainer.world, "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
            "setup_s": setup_s, "s_per_update": median, "s_per_update_mean": statistics.fmean(times),
            "s_per_update_all": times, "docs_per_s": t.docs_per_step / median,
            **({"curve": curve, "val_docs": n_val} if val_every else {})}
    return {"bench": "metatrain", "machine": machine_info(), "cases": [case]}


def add_trainer_arguments(p: argparse.ArgumentParser, override_example: str) -> None:
    """The options of a benchmark run on :func:`bench_trainer`: ``--config``, ``--threads``, ``--n-meta`` and the
    config overrides (``override_example`` shows one in the help)."""
    p.add_argument("--config", default=str(DEMO_CONFIG), help="meta-training config (default: the demo's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--n-meta", type=int, default=200, help="synthetic meta-training pairs written (without "
                   "data.train_file)")
    p.add_argument("overrides", nargs="*", help=f"config overrides key.sub=value, e.g. {override_example}")


def print_result(run) -> None:
    """Print the JSON object ``run()`` returns; the trainer's own messages go to stderr, so stdout is the JSON.
    Under a launcher (several ranks, the trainer under DeepSpeed ZeRO-3) rank 0 alone prints it."""
    from taalm_dist.engine import distributed as D

    with contextlib.redirect_stdout(sys.stderr):
        res = run()
    if D.is_main():
        print(json.dumps(res, indent=2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench metatrain", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed φ updates")
    p.add_argument("--warmup", type=int, default=1, help="φ updates run first and not timed")
    p.add_argument("--val-every", type=int, default=0, help="also record φ's learning curve: held-out L(θ') before "
                   "the first update and after every N updates (0: off)")
    add_trainer_arguments(p, "meta.method=fd")
    args = p.parse_args(argv)
    print_result(lambda: bench_metatrain(args.config, args.overrides, args.steps, args.warmup, args.threads,
                                         args.n_meta, args.val_every))


if __name__ == "__main__":
    main()
