"""Test helper: a single-process meta-training config on the toy task (tiny θ and φ, seconds per run)."""

from __future__ import annotations

from taalm_dist.bench.gpu_check import toy_config  # the tests' toy config is the GPU check's
from taalm_dist.programs.meta_train import MetaTrainer

__all__ = ["toy_config", "run_trainer"]


def run_trainer(cfg):
    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        return trainer, trainer.train()
    finally:
        trainer.cleanup()


