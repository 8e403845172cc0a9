"""Test helper: a single-process meta-training config on the toy task (tiny θ and φ, seconds per run)."""

from __future__ import annotations

from taalm_dist.config import load_config
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.programs.meta_train import MetaTrainer


def toy_config(tmp_path, *overrides):
    write_pairs(toy_rows(200, seed=0), tmp_path / "train.jsonl")
    write_pairs(toy_rows(16, seed=1, entity_offset=200), tmp_path / "val.jsonl")
    base = [
        "theta.model.tiny.hidden_size=64", "theta.trainable=full",
        "phi.model.tiny.hidden_size=64", "phi.model.tiny.seed=1", "phi.trainable=full",
        f"data.train_file={tmp_path / 'train.jsonl'}", f"data.val_file={tmp_path / 'val.jsonl'}",
        "meta.inner=sgd", "meta.inner_lr=0.1", "meta.method=fd",
        f"train.out_dir={tmp_path / 'run'}", "train.max_steps=30", "train.docs_per_step=8", "train.lr=3e-3",
        "train.val_every=15", "train.progress=false", "tracking.mlflow=false",
    ]
    return load_config(None, base + list(overrides))


def run_trainer(cfg):
    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        return trainer, trainer.train()
    finally:
        trainer.cleanup()


