"""Single-process meta-training of φ (no DeepSpeed): the contract setup / train / save / cleanup.

Per φ update: for each of ``docs_per_step`` documents, w = φ(D); θ is at θ₀ (the meta-gradient restores
it); dL/dw by the configured method; φ's gradient accumulates through the surrogate
``(w · dL/dw).sum() / docs_per_step`` (so one update = the mean over documents); clip; AdamW step.
A step whose loss or gradient is not finite is skipped and counted.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from taalm_dist.config import TaalmConfig, config_hash, save_config, to_dict
from taalm_dist.data import collate
from taalm_dist.engine.data_setup import PreparedData, prepare_data
from taalm_dist.errors import ConfigError
from taalm_dist.meta import InnerStep, meta_gradient, updated_objective
from taalm_dist.models import build_phi, check_same_tokenizer, load_causal_lm, load_tokenizer, make_trainable, save_phi
from taalm_dist.tracking import JsonlLogger


class DocOrder:
    """Deterministic shuffled order over ``n`` documents, reshuffled every epoch; has a state."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        perm = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(perm)
        return perm

    def next(self) -> int:
        if self.pos == self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        self.pos += 1
        return self._perm[self.pos - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}


def prepare_out_dir(out_dir: str, overwrite: bool) -> Path:
    """Create the run directory; refuse a non-empty one unless ``overwrite`` (nothing is lost silently)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"train.out_dir={out} already holds a run; choose a new directory or pass train.overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    return out


class MetaTrainer:
    """Meta-trains φ on one process. Use: ``t = MetaTrainer(cfg); t.setup(); t.train(); t.cleanup()``."""

    def __init__(self, cfg: TaalmConfig):
        self.cfg = cfg
        self.step = 0
        self.skipped_steps = 0

    # ---------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Load tokenizers (refusing a mismatch), θ, φ, the data; create the run directory and logger."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.theta.model)
        check_same_tokenizer(self.tokenizer, load_tokenizer(cfg.phi.model))
        self.data: PreparedData = prepare_data(cfg.data, self.tokenizer, cfg.train.val_docs, cfg.train.seed)
        self.out = prepare_out_dir(cfg.train.out_dir, cfg.train.overwrite)
        vocab = len(self.tokenizer)
        self.theta = make_trainable(load_causal_lm(cfg.theta.model, vocab), cfg.theta.trainable, cfg.theta.lora)
        self.phi = build_phi(cfg.phi, vocab, seed=cfg.train.seed)
        params = [p for p in self.phi.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        m = cfg.meta
        self.inner = InnerStep(m.inner, m.inner_lr, tuple(m.adam_betas), m.adam_eps, m.adam_weight_decay)
        self.order = DocOrder(len(self.data.train), cfg.train.seed)
        self.rng = random.Random(cfg.train.seed + 1)
        self.pad_id = self.tokenizer.pad_token_id or 0
        save_config(cfg, self.out / "config.yaml")
        self.log = JsonlLogger(self.out / "metrics.jsonl")
        self.log.log_params({**to_dict(cfg), "config_hash": config_hash(cfg)})
        self.log.log_metrics({"data/train_pairs": len(self.data.train), "data/val_pairs": len(self.data.val),
                              "data/skipped_rows": self.data.skipped_rows,
                              "data/truncated_docs": self.data.truncated_docs}, step=0)

    # ------------------------------------------------------------------------------------ one step
    def _document_step(self, idx: int, scale: float) -> dict:
        """Hypergradient of one document; accumulates φ's gradient; returns diagnostics."""
        cfg = self.cfg
        doc, task = collate([self.data.train[idx]], self.pad_id)
        restrict = None
        if cfg.meta.restrict_coef and len(self.data.train) > 1:
            j = self.rng.randrange(len(self.data.train) - 1)
            _, restrict = collate([self.data.train[j + (j >= idx)]], self.pad_id)
        self.phi.train()
        w = self.phi(doc["input_ids"], doc["attention_mask"])
        mg = meta_gradient(self.theta, doc, w.detach(), task, inner=self.inner, objective=cfg.meta.objective,
                           method=cfg.meta.method, fd_eps=cfg.meta.fd_eps, restrict_batch=restrict,
                           restrict_coef=cfg.meta.restrict_coef)
        (w * mg.grad.to(w.dtype)).sum().mul(scale).backward()
        return {"objective": float(mg.objective), **weight_stats(w.detach(), doc)}

    def train_step(self) -> dict:
        """One φ update over ``docs_per_step`` documents; returns its metrics."""
        n = self.cfg.train.docs_per_step
        self.opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        stats = [self._document_step(self.order.next(), 1.0 / n) for _ in range(n)]
        params = [p for p in self.phi.parameters() if p.requires_grad]
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        objective = sum(s["objective"] for s in stats) / n
        finite = math.isfinite(grad_norm) and math.isfinite(objective)
        if finite:
            self.opt.step()
        else:
            self.skipped_steps += 1
            self.opt.zero_grad(set_to_none=True)
        self.step += 1
        out = {"train/objective": objective, "train/grad_norm": grad_norm, "train/skipped_steps": self.skipped_steps,
               "time/step_s": time.perf_counter() - t0}
        for key in ("weight_mean", "weight_on_object", "weight_off_object"):
            vals = [s[key] for s in stats if s[key] is not None]
            out[f"train/{key}"] = sum(vals) / len(vals) if vals else None
        return out

    # ----------------------------------------------------------------------------------- validate
    @torch.no_grad()
    def _phi_weights(self, doc):
        self.phi.eval()
        return self.phi(doc["input_ids"], doc["attention_mask"])

    def validate(self, baselines: bool = False) -> dict:
        """Mean L(θ') on the validation pairs with φ's weights (and, once, uniform / no update)."""
        m = self.cfg.meta
        sums = {"val/objective": 0.0, "val/weight_on_object": 0.0, "val/weight_off_object": 0.0}
        if baselines:
            sums.update({"val/objective_uniform": 0.0})
        counted = {k: 0 for k in sums}
        for item in self.data.val:
            doc, task = collate([item], self.pad_id)
            w = self._phi_weights(doc)
            results = {"val/objective": updated_objective(self.theta, doc, w, task, inner=self.inner, objective=m.objective)}
            if baselines:
                ones = doc["attention_mask"].to(w.dtype)
                results["val/objective_uniform"] = updated_objective(self.theta, doc, ones, task, inner=self.inner,
                                                                     objective=m.objective)
            stats = weight_stats(w, doc)
            results["val/weight_on_object"] = stats["weight_on_object"]
            results["val/weight_off_object"] = stats["weight_off_object"]
            for k, v in results.items():
                if v is not None:
                    sums[k] += float(v)
                    counted[k] += 1
        return {k: (sums[k] / counted[k] if counted[k] else None) for k in sums}

    # -------------------------------------------------------------------------------------- train
    def train(self) -> dict:
        """Run ``max_steps`` φ updates with validation; save φ at the end. Returns the final metrics."""
        cfg = self.cfg.train
        first = self.validate(baselines=True) if cfg.val_every else {}
        self.log.log_metrics(first, step=0)
        bar = tqdm(total=cfg.max_steps, desc="meta-train φ", disable=not cfg.progress, dynamic_ncols=True)
        last: dict = {}
        while self.step < cfg.max_steps:
            metrics = self.train_step()
            if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.max_steps):
                metrics.update(self.validate())
            self.log.log_metrics(metrics, step=self.step)
            last.update(metrics)
            bar.update(1)
            bar.set_postfix(obj=f"{metrics['train/objective']:.3f}",
                            val=f"{last.get('val/objective', float('nan')):.3f}")
        bar.close()
        self.save_checkpoint()
        summary = {"steps": self.step, "skipped_steps": self.skipped_steps, "first": first, "last": last,
                   "phi_dir": str(self.out / "phi")}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def save_checkpoint(self) -> Path:
        """Export φ (safetensors + config, loadable with :func:`taalm_dist.models.load_phi`)."""
        return save_phi(self.phi, self.cfg.phi, self.out / "phi")

    def cleanup(self) -> None:
        """Close the logger."""
        if hasattr(self, "log"):
            self.log.close()


def weight_stats(w: torch.Tensor, doc: dict) -> dict:
    """Mean weight over predicted positions, on the object's tokens, and elsewhere (None if empty)."""
    from taalm_dist.losses import next_token_valid_mask

    valid = next_token_valid_mask(doc["attention_mask"])
    on = valid & doc["object_mask"].bool()
    off = valid & ~doc["object_mask"].bool()

    def mean(mask):
        return float(w[mask].mean()) if mask.any() else None

    return {"weight_mean": mean(valid), "weight_on_object": mean(on), "weight_off_object": mean(off)}
