"""Meta-training of φ on one process or document-parallel under DeepSpeed ZeRO-3.

Contract: ``t = MetaTrainer(cfg); t.setup(); t.train(); t.cleanup()`` (plus ``save_checkpoint`` /
``load_checkpoint``). One φ update = ``docs_per_step`` documents in passes of θ. A pass is either one inner step of
``docs_per_inner_step`` documents jointly, or (``docs_per_pass`` > 1) that many documents each with its own inner
step, batched with one LoRA copy of θ per document (:mod:`taalm_dist.meta.per_document`). In a pass θ (at θ₀) takes
the inner step(s), the closed-form meta-gradient gives dL/dw, and θ is restored. With N ranks each rank holds 1/N of
the pass's documents and θ's partitions (per-document passes: its documents' LoRA copies, gathered from the
partitions, and the frozen base still partitioned); the global document order is the same on every rank, so the
result does not depend on N.

[skip agreement note] A micro-step whose objective, dL/dw or φ's weights are not finite on any rank
makes every rank skip the whole φ update together (an all-reduce), before φ's backward: so under
DeepSpeed the first pass computes w without a graph and, once all ranks agree, a second φ forward builds
the graph for the surrogate ``(w · dL/dw).sum()``. On one process φ's graph from the first pass is kept
instead (``train.phi_graph``: one φ forward fewer). More than ``max_consecutive_skips`` in a row stop the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from taalm_dist import integrity, weight_rules
from taalm_dist.config import MetaTrainConfig, TaalmConfig, config_hash, for_program, resumable_keys, to_dict
from taalm_dist.data import collate
from taalm_dist.data.jsonl_file import file_sha256
from taalm_dist.data.order import DOC_STRIDE, shuffled
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine.callbacks import CheckpointCadence, Every, StepEnd, run_callbacks
from taalm_dist.engine import distributed as D
from taalm_dist.engine.ckl_validation import ckl_validation
from taalm_dist.engine.data_setup import PreparedData, prepare_data
from taalm_dist.engine.ds_config import docs_per_pass_unit
from taalm_dist.engine.phi_update import DeepSpeedPhi, LocalPhi
from taalm_dist.engine.preemption import run_to_end
from taalm_dist.engine.run_dir import load_on_every_rank, resume_settings
from taalm_dist.engine.session import RunSession, SessionProgram
from taalm_dist.errors import ConfigError, TrainingError
from taalm_dist.losses import next_token_valid_mask
from taalm_dist.losses.lm_head import per_token_loss_fn
from taalm_dist.meta import InnerStep, meta_gradient, updated_objective
from taalm_dist.meta.functional import ThetaView
from taalm_dist.meta.per_document import per_document_lora
from taalm_dist.models import build_phi, check_same_tokenizer, load_tokenizer, save_phi
from taalm_dist.models.theta import build_theta, enable_gradient_checkpointing
from taalm_dist.tracking.heatmap import heatmap

_LEGACY_RESUMABLE = {"train": ("max_steps", "resume", "overwrite", "progress", "save_every", "keep_checkpoints",
                               "val_every"), "tracking": None}


class DocOrder:
    """Deterministic shuffled order over ``n`` documents, reshuffled every epoch; has a state."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        return shuffled(range(self.n), self.seed, self.epoch, DOC_STRIDE)

    def next(self) -> int:
        if self.pos == self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        self.pos += 1
        return self._perm[self.pos - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._perm = self._permutation()


def data_fingerprint(cfg: MetaTrainConfig) -> dict:
    """SHA-256 of the data files' content (a file changed in place must not resume at its old position)."""
    return {k: file_sha256(v) for k, v in (("data.train_file", cfg.data.train_file),
                                           ("data.val_file", cfg.data.val_file)) if v}


def legacy_resume_hash(cfg: MetaTrainConfig) -> str:
    """The config hash checkpoints of earlier versions carry (``resume_hash``; they stored no settings): of the one
    config every program had then, the other programs' sections at their defaults."""
    d = {**to_dict(TaalmConfig()), **to_dict(cfg)}
    d["train"].pop("save_every_s", None)  # added later
    for section, keys in _LEGACY_RESUMABLE.items():
        if keys is None:
            d.pop(section, None)
        else:
            for k in keys:
                d[section].pop(k, None)
    return config_hash(d)


@dataclass
class MetaTrainState:
    """What meta-training has done so far, saved in every checkpoint as one value (with the data order's position):
    φ updates made (``step``), skipped (``skipped_steps``; ``consecutive_skips`` of them in a row, the last), the
    first validation's metrics (``first_val``) and the best φ so far (``best``: its step, score and metric)."""

    step: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    first_val: dict = field(default_factory=dict)
    best: dict = field(default_factory=lambda: {"step": None, "score": None, "metric": None})

    @classmethod
    def from_checkpoint(cls, state: dict) -> "MetaTrainState":
        """The state a checkpoint's ``state.json`` holds (``best`` absent in early checkpoints)."""
        return cls(state["step"], state["skipped_steps"], state["consecutive_skips"], state["first_val"],
                   state.get("best", cls().best))


class MetaTrainer(SessionProgram):
    """Meta-trains φ; see the module docstring. The story: :meth:`setup` → :meth:`train` (the loop) →
    :meth:`train_step` (one φ update) → the callbacks after it (validation, CKL validation, best-φ selection) →
    checkpoints and :meth:`export_phi`."""

    def __init__(self, cfg: MetaTrainConfig | TaalmConfig):
        self.cfg = for_program(MetaTrainConfig, cfg)
        t = self.cfg.train
        self.session = RunSession("meta-train")
        self.state = MetaTrainState()
        self.select = t.select if t.select != "auto" else ("ckl_val" if t.ckl_val_every else "last")
        """How the exported φ is chosen: ``last``, ``objective`` or ``ckl_val`` (:class:`BestPhi`)."""
        self.callbacks = [Validation(Every(t.val_every), MetaTrainer.validate),
                          Validation(Every(t.ckl_val_every), MetaTrainer.ckl_validate), BestPhi(self.select)]
        """Run after every φ update, in order (:mod:`taalm_dist.engine.callbacks`)."""
        self.cadence = CheckpointCadence(t.save_every, t.save_every_s)
        # built by setup()
        self.keep_phi_graph = False
        """φ's graph of the first pass is kept for its backward (one process, ``train.phi_graph``)."""
        self.tokenizer = self.data = self.view = self.phi = self.inner = self.order = self.rng = None
        self.pad_id = 0
        self.settings: dict = {}
        self.data_sha256: dict = {}

    step = property(lambda self: self.state.step, lambda self, v: setattr(self.state, "step", v),
                    doc="φ updates made (:class:`MetaTrainState`).")
    best = property(lambda self: self.state.best, doc="The best φ so far: its step, score and metric.")

    # ------------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Process group, tokenizers (a mismatch is refused), data, θ and φ, run directory, trackers,
        and the checkpoint to resume from, if any."""
        cfg = self.cfg
        self.session.start(cfg.engine, theta=cfg.theta.model, phi=cfg.phi.model)
        cfg.validate(self.world)
        self.keep_phi_graph = cfg.train.phi_graph == "keep" or (cfg.train.phi_graph == "auto" and not self.distributed)
        torch.manual_seed(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.theta.model)
        check_same_tokenizer(self.tokenizer, load_tokenizer(cfg.phi.model))
        self.data: PreparedData = prepare_data(cfg.data, self.tokenizer, cfg.train.val_docs, cfg.train.seed)
        if cfg.train.ckl_val_every and not self.data.val:
            raise ConfigError("train.ckl_val_every needs validation pairs: give data.val_file or train.val_docs > 0")
        if cfg.train.docs_per_step > len(self.data.train):
            raise ConfigError(f"train.docs_per_step={cfg.train.docs_per_step} is more than the {len(self.data.train)} "
                              f"training pairs of {cfg.data.train_file}: every φ update would repeat documents (and hold "
                              f"all their graphs); use at most {len(self.data.train)}, or more data")
        # what a checkpoint must share with the run that resumes it (the data hashed once, not at every checkpoint)
        self.settings, self.data_sha256 = resume_settings(cfg, ("",), resumable_keys(cfg)), data_fingerprint(cfg)
        self.session.open(cfg.train.out_dir, overwrite=cfg.train.overwrite, resume=cfg.train.resume,
                          settings=self.settings, data_sha256=self.data_sha256, legacy_hashes=(legacy_resume_hash(cfg),),
                          defaults=resume_settings(MetaTrainConfig(), ("",), resumable_keys(cfg)))
        with self.session.building():
            self._build(self.session.resume_from)
        if self.session.open_trackers(cfg, metrics_step=self.step,
                                      params={"config_hash": config_hash(cfg), "world_size": self.world}):
            self.log.log_metrics({"data/train_pairs": len(self.data.train), "data/val_pairs": len(self.data.val),
                                  "data/skipped_rows": self.data.skipped_rows,
                                  "data/truncated_docs": self.data.truncated_docs}, step=0)

    def _build(self, resume_from: Path | None) -> None:
        """Models, inner step, data order and RNG, then the checkpoint's state when resuming."""
        cfg = self.cfg
        saved_world = self.run_dir.resume_state.get("world_size", self.world)
        if saved_world != self.world:
            raise ConfigError(f"checkpoint {resume_from} was written by {saved_world} process(es), this run has "
                              f"{self.world}: ZeRO-3 partitions cannot be re-split; relaunch with {saved_world}, or "
                              "start from the exported φ")
        self._build_models()
        low = {p.dtype for p in self.view.params} - {torch.float32, torch.float64}
        if low and D.is_main():
            print(f"taalm: warning: θ's trainable tensors are {sorted(map(str, low))}: the meta-gradient loses "
                  "accuracy (see [bf16 fd note] in taalm_dist.meta.hypergradient); fp32 trainable tensors are exact")
        m = cfg.meta
        self.inner = InnerStep(m.inner, m.inner_lr, tuple(m.adam_betas), m.adam_eps, m.adam_weight_decay)
        self.order = DocOrder(len(self.data.train), cfg.train.seed)
        self.rng = random.Random(cfg.train.seed * 7919 + self.rank)
        self.pad_id = self.tokenizer.pad_token_id or 0
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    def _build_models(self) -> None:
        cfg = self.cfg
        vocab = len(self.tokenizer)
        if self.distributed:
            from taalm_dist.engine.ds_config import ds_configs, save_ds_configs
            from taalm_dist.engine.zero3 import partition_while_loading

            configs = ds_configs(cfg, self.world)
            if D.is_main():
                save_ds_configs(configs, self.out / "ds_config.json")
            if "tiny" not in (cfg.theta.model.source, cfg.phi.model.source):
                # real checkpoints load partitioned; tiny random models are built whole (their random init
                # would differ under zero.Init) and partitioned by deepspeed.initialize
                self._zero_init = partition_while_loading(configs["theta"])
        device = self.rt.device
        theta = build_theta(cfg.theta, vocab, seed=cfg.train.seed, device=device,
                            gradient_checkpointing=cfg.engine.gradient_checkpointing)
        phi = build_phi(cfg.phi, vocab, seed=cfg.train.seed, device=device)
        if cfg.engine.gradient_checkpointing:
            enable_gradient_checkpointing(phi.backbone)
        loss_fn = per_token_loss_fn(cfg.loss, cfg.meta.method)
        if not self.distributed:
            self.view = ThetaView(self.rt.place(theta), loss_fn)
            self.phi = LocalPhi(self.rt.place(phi), cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip)
            return
        from taalm_dist.engine.zero3 import Zero3ThetaView, build_phi_engine, build_theta_engine

        self.view = Zero3ThetaView(build_theta_engine(self.rt, theta, configs["theta"]), loss_fn)
        self.phi = DeepSpeedPhi(build_phi_engine(self.rt, phi, configs["phi"]))

    # ---------------------------------------------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run until ``max_steps`` φ updates, validating and checkpointing; export φ. Returns a summary.

        Raises:
            Preempted: after a SIGTERM/SIGINT, once the φ update in progress is done and checkpointed.
        """
        with self.session.stop_signals(then="finishing the φ update in progress, then writing a checkpoint"):
            return self._train()

    def _train(self) -> dict:
        cfg = self.cfg.train
        if self.step == 0 and (cfg.val_every or cfg.ckl_val_every):
            self.state.first_val = run_callbacks(self.callbacks, self, StepEnd(0, baselines=True))
            self.log.log_metrics(self.state.first_val, step=0)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="meta-train φ", dynamic_ncols=True,
                   disable=not (cfg.progress and D.is_main()))
        last: dict = {}
        start = last_save = time.monotonic()
        stop = False
        while self.step < cfg.max_steps and not stop:
            metrics = self.train_step()
            stop, signalled, save_due = self._agree_on_stop(start, last_save)
            if signalled:
                bar.close()
                self.log.log_metrics(metrics, step=self.step)
                path = self.save_checkpoint()
                self.session.stop(f"stopped by {self.signals.requested or 'a request on another rank'} after φ "
                                  f"update {self.step}; checkpoint {path}; continue with --resume auto")
            run_callbacks(self.callbacks, self, StepEnd(self.step, self.step == cfg.max_steps or stop, False, metrics))
            self.log.log_metrics(metrics, step=self.step)
            last.update(metrics)
            bar.update(1)
            bar.set_postfix(obj=f"{metrics['train/objective']:.3f}", val=f"{last.get('val/objective', math.nan):.3f}")
            if self.cadence.due(self.step, save_due) and self.step < cfg.max_steps and not stop:
                self.save_checkpoint()
                last_save = time.monotonic()
        bar.close()
        if stop and D.is_main():
            print(f"time limit train.time_limit_s={cfg.time_limit_s:g} reached after {self.step} φ updates")
        self.save_checkpoint()
        phi_dir = self.export_phi()
        st = self.state
        summary = {"steps": st.step, "max_steps": cfg.max_steps, "skipped_steps": st.skipped_steps,
                   "first": st.first_val, "last": last, "phi_dir": str(phi_dir),
                   "selected": {"rule": self.selection_rule(), **st.best}, "world_size": self.world,
                   "stopped_by_time_limit": stop}
        if D.is_main():
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            for name in ("config.yaml", "ds_config.json", "summary.json"):
                if (self.out / name).is_file():
                    self.log.log_artifact(self.out / name)
            for f in sorted(phi_dir.iterdir()):
                self.log.log_artifact(f, "phi")
        return summary

    def _agree_on_stop(self, start: float, last_save: float) -> tuple[bool, bool, bool]:
        """``(time limit reached, stop signal received, time-based checkpoint due)`` after a φ update, the same on
        every rank (one all-reduce): the clocks are rank 0's, a signal on any rank counts."""
        t = self.cfg.train
        now = time.monotonic()
        main = D.is_main()
        flags = [main and t.time_limit_s is not None and now - start >= t.time_limit_s,
                 self.signals.requested is not None,
                 main and t.save_every_s is not None and now - last_save >= t.save_every_s]
        if self.distributed:
            flags = [v > 0 for v in D.all_reduce_sum([float(f) for f in flags])]
        return flags[0], flags[1], flags[2]

    # ------------------------------------------------------------------------------------------------ one φ update
    def update_layout(self) -> tuple[int, int, int]:
        """``(passes, docs_each_pass, micro_steps)`` of one φ update: the batched passes of θ its documents take, the
        documents each pass draws, and the inner steps (θ' of their own) they make."""
        cfg = self.cfg.train
        micro_steps = cfg.docs_per_step // cfg.docs_per_inner_step  # one θ' each (per document with docs_per_pass)
        passes = cfg.docs_per_step // docs_per_pass_unit(self.cfg)
        return passes, cfg.docs_per_step // passes, micro_steps

    def train_step(self) -> dict:
        """One φ update (see [skip agreement note]); returns its metrics (reduced over ranks)."""
        cfg = self.cfg.train
        passes, docs_each_pass, micro_steps = self.update_layout()
        t0 = time.perf_counter()
        pending, objective, finite = [], 0.0, True
        stats = WeightStats()
        for _ in range(passes):
            idx = [self.order.next() for _ in range(docs_each_pass)]
            doc, w, mg = self.micro_step_meta_gradient(idx)
            finite &= bool(torch.isfinite(mg.objective)) and bool(torch.isfinite(mg.grad).all()) and bool(torch.isfinite(w).all())
            objective += float(mg.objective) / passes
            stats.add(w.detach(), doc)
            pending.append((doc, mg.grad, w if self.keep_phi_graph else None))
        skip = D.any_rank(not finite)
        grad_norm = float("nan")
        st = self.state
        if skip:
            st.skipped_steps += 1
            st.consecutive_skips += 1
            if st.consecutive_skips > cfg.max_consecutive_skips:
                raise TrainingError(f"{st.consecutive_skips} φ updates in a row had a non-finite objective, "
                                    f"meta-gradient or weight (step {self.step + 1}); lower meta.inner_lr or "
                                    "train.lr, or check the data")
        else:
            st.consecutive_skips = 0
            scale = self.phi.surrogate_scale(micro_steps)
            for doc, grad, kept in pending:
                w = kept if kept is not None else self.phi.weights(doc, grad=True)
                self.phi.micro_step((w * grad.to(w.dtype)).sum() * scale)
            grad_norm = self.phi.finish_step()
        self.step += 1
        obj = D.all_reduce_mean([objective])[0]
        return {"train/objective": obj, "train/grad_norm": grad_norm, "train/skipped_steps": st.skipped_steps,
                "time/step_s": time.perf_counter() - t0, **stats.reduced("train")}

    def micro_step_meta_gradient(self, global_idx: list[int]):
        """One pass of θ on the training documents ``global_idx`` (this rank takes its slice; with
        ``train.docs_per_pass`` > 1 each document has its own inner step, all in one batched pass):
        ``(doc batch, φ's weights w, MetaGradient)``; w has φ's graph only when φ's graph is kept
        (``train.phi_graph``), θ is back at θ₀."""
        doc, task, restrict = self._local_batch(global_idx, self.data.train)
        w = self.phi.weights(doc, grad=self.keep_phi_graph)
        m = self.cfg.meta
        kw = dict(inner=self.inner, objective=m.objective, method=m.method, fd_eps=m.fd_eps, restrict_batch=restrict,
                  restrict_coef=m.restrict_coef, compute_float32=m.compute_float32)
        with self._theta_for(doc) as view:
            return doc, w, meta_gradient(view, doc, w, task, **kw)

    def _local_batch(self, global_idx: list[int], items) -> tuple[dict, dict, dict | None]:
        """This rank's slice of a pass's documents (1/N of them): (doc, task, restrict task or None)."""
        local = len(global_idx) // self.world
        mine = global_idx[self.rank * local : (self.rank + 1) * local]
        doc, task = collate([items[i] for i in mine], self.pad_id)
        restrict = None
        if self.cfg.meta.restrict_coef and len(items) > 1:
            others = []
            for i in mine:
                j = self.rng.randrange(len(items) - 1)
                others.append(items[j + (j >= i)])
            _, restrict = collate(others, self.pad_id)
        return self.rt.to_device(doc), self.rt.to_device(task), self.rt.to_device(restrict)

    def _theta_for(self, doc: dict):
        """θ's view for a pass over ``doc``: with per-document inner steps, one LoRA copy per document of this
        rank (gathered from the partitions under ZeRO-3), else θ itself."""
        if self.cfg.train.docs_per_pass > 1:
            return per_document_lora(self.view, doc["input_ids"].shape[0])
        return contextlib.nullcontext(self.view)

    # --------------------------------------------------------------------------- validation (run by the callbacks)
    def validate(self, baselines: bool = False) -> dict:
        """Mean L(θ') over the first ``train.val_docs`` validation documents with φ's weights (and, with ``baselines``, with
        uniform weights), in passes like training (:meth:`validation_passes`)."""
        val = self.data.val[: self.cfg.train.val_docs]
        passes = self.validation_passes(len(val))
        if not passes:
            return {}
        sums, stats = [0.0, 0.0], WeightStats()
        for idx in passes:
            doc, task, _ = self._local_batch(idx, val)
            w = self.phi.weights(doc, grad=False)
            kw = dict(inner=self.inner, objective=self.cfg.meta.objective, compute_float32=self.cfg.meta.compute_float32)
            with self._theta_for(doc) as view:
                sums[0] += float(updated_objective(view, doc, w, task, **kw)) * len(idx)
                if baselines:
                    sums[1] += float(updated_objective(view, doc, doc["attention_mask"].to(w.dtype), task, **kw)) * len(idx)
            stats.add(w, doc)
        n = sum(len(idx) for idx in passes)
        mean = D.all_reduce_mean([v / n for v in sums])
        out = {"val/objective": mean[0], **stats.reduced("val")}
        if baselines:
            out["val/objective_uniform"] = mean[1]
        return out

    def validation_passes(self, n: int) -> list[list[int]]:
        """The passes over ``n`` validation documents: as training's (``docs_per_inner_step`` sharing a θ', or
        ``docs_per_pass`` with one θ' each). A last partial pass is left out when its documents would share a θ' (a
        smaller joint inner step is another computation); with per-document inner steps it runs, as many of its
        documents as the ranks can share evenly."""
        unit = docs_per_pass_unit(self.cfg)
        passes = [list(range(s, s + unit)) for s in range(0, n - unit + 1, unit)]
        rest = (n % unit) // self.world * self.world
        if self.cfg.train.docs_per_pass > 1 and rest:
            start = n - n % unit
            passes.append(list(range(start, start + rest)))
        return passes

    def ckl_validate(self, baselines: bool = False) -> dict:
        """The benchmark-like validation (:func:`taalm_dist.engine.ckl_validation.ckl_validation`) with φ's
        weights (and, with ``baselines``, uniform and oracle weights); writes φ's heatmap on the first
        validation documents to ``heatmaps/step_<N>/``."""
        t, m = self.cfg.train, self.cfg.meta
        kw = dict(passes=t.ckl_val_passes, lr=t.ckl_val_lr or m.inner_lr, batch_size=t.ckl_val_batch_size,
                  seed=t.seed)
        t0 = time.perf_counter()
        rules = {"": lambda doc: self.phi.weights(doc, grad=False)}
        if baselines and t.ckl_val_baselines:
            rules.update({"_uniform": weight_rules.uniform_weights, "_oracle": weight_rules.oracle_weights})
        out = {}
        for suffix, rule in rules.items():
            res = ckl_validation(self.view, self.data.val[: t.ckl_val_docs], rule, self.pad_id, place=self.rt.to_device,
                                 **kw)
            out[f"ckl_val/acc{suffix}"], out[f"ckl_val/top_acc{suffix}"] = res["acc"], res["top_acc"]
        out["time/ckl_val_s"] = time.perf_counter() - t0
        self._write_heatmap()
        return out

    def _write_heatmap(self, docs: int = 4) -> None:
        """φ's weights on the first ``docs`` validation documents (every rank runs φ: its forward gathers ZeRO-3
        partitions), drawn by rank 0."""
        items = self.data.val[:docs]
        doc, _ = collate(items, self.pad_id)
        w = self.phi.weights(self.rt.to_device(doc), grad=False).cpu()
        if not D.is_main():
            return
        rows = [([self.tokenizer.decode([i]) for i in it.doc_ids], w[b, : len(it.doc_ids)].tolist(), it.doc_object_mask)
                for b, it in enumerate(items)]
        folder = self.out / "heatmaps" / f"step_{self.step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        heatmap(rows, f"φ's token weights after {self.step} updates (validation documents)", folder)

    # -------------------------------------------------------------------------------------- checkpoints and export
    def save_checkpoint(self) -> Path:
        """A resumable checkpoint (atomic: see :mod:`taalm_dist.engine.checkpoint`); every rank calls it."""
        state = {**dataclasses.asdict(self.state), "order": self.order.state_dict(), "world_size": self.world,
                 "settings": self.settings, "data_sha256": self.data_sha256, "config_hash": config_hash(self.cfg)}
        return self.session.checkpoint(self.step, lambda tmp: self.phi.save(tmp / "phi"), state,
                                       self.cfg.train.keep_checkpoints, rng=self.rng)

    def load_checkpoint(self, directory: Path) -> None:
        """Restore φ, its optimizer, the data position and every rank's RNG from ``directory``."""
        state = ckpt.read_state(directory)  # its settings, data and world size were checked by open_run_dir
        load_on_every_rank(directory, lambda: self.phi.load(directory / "phi"))
        state_now = self.phi.export_state()
        bad = D.broadcast_object(integrity.nonfinite(state_now) if D.is_main() else None)
        if bad:  # [finiteness policy] in taalm_dist.integrity
            raise ConfigError(f"checkpoint {directory} holds a φ with non-finite values ({', '.join(bad[:3])}); it is "
                              "not resumed: resume from an earlier checkpoint (--resume PATH) or start a new run")
        ckpt.load_rng(directory, self.rng)
        self.order.load_state_dict(state["order"])
        self.state = MetaTrainState.from_checkpoint(state)
        if D.is_main():
            print(f"resumed from {directory} at step {self.step}")

    def selection_rule(self, first_val: dict | None = None) -> str:
        """``train.select`` as it applies (:class:`BestPhi`): ``ckl_val`` becomes ``objective`` (``last`` without
        ``train.val_every``) when the first CKL validation's baselines (``first_val``, default the run's) show it
        cannot tell weights apart — the oracle's Top Acc no higher than uniform weights'."""
        v = self.state.first_val if first_val is None else first_val
        oracle, uniform = v.get("ckl_val/top_acc_oracle"), v.get("ckl_val/top_acc_uniform")
        if self.select != "ckl_val" or oracle is None or uniform is None or oracle > uniform:
            return self.select
        return "objective" if self.cfg.train.val_every else "last"

    def export_phi(self) -> Path:
        """The last φ as ``phi_last/`` and the selected one (``train.select``) as ``phi/``, each safetensors +
        config (loadable in one process without DeepSpeed) + ``selection.json``; every rank calls it."""
        state = self.phi.export_state()
        path = self.out / "phi"
        if D.is_main():
            last = {"rule": "last", "step": self.step}
            save_phi(state, self.cfg.phi, self.out / "phi_last", {"selection.json": json.dumps(last, indent=2)})
            best = self.out / "best_phi"
            rule = self.selection_rule()
            # a run resumed from before a change of rule may hold a best of the other metric: the last φ then
            if rule != "last" and best.is_dir() and self.best["metric"] == SELECTION_METRIC[rule]:
                damaged = integrity.verify_record(best)
                if damaged:
                    raise TrainingError(f"{best} is damaged ({'; '.join(damaged[:3])}); the last φ is in "
                                        f"{self.out / 'phi_last'}")
                chosen = {"rule": rule, **self.best}
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(best, path)
                (path / "selection.json").write_text(json.dumps(chosen, indent=2))
                integrity.write_record(path)  # the copy with its own selection.json
            else:
                chosen = last
                save_phi(state, self.cfg.phi, path, {"selection.json": json.dumps(chosen, indent=2)})
            self.record_familiarity(self.out / "phi_last")
            self.record_familiarity(path, same_as=self.out / "phi_last")
            print(f"φ exported to {path} ({chosen['rule']}: step {chosen['step']}"
                  + (f", {chosen['metric']} {chosen['score']:.4f})" if chosen.get("metric") else ")"))
        D.barrier()
        return path

    def record_familiarity(self, phi_dir: Path, same_as: Path | None = None) -> None:
        """φ's familiarity record in an exported ``phi_dir`` (:mod:`taalm_dist.familiarity`): its meta-training
        documents against its validation documents, measured by the exported φ in this process (rank 0). When
        ``same_as`` holds the same φ (the same files' hashes) with its record, that record is copied, not made again."""
        from taalm_dist.familiarity import make_familiarity
        from taalm_dist.models.train_attention import FAMILIARITY_FILES, phi_fingerprint

        if same_as is not None and all((same_as / f).is_file() for f in FAMILIARITY_FILES) \
                and phi_fingerprint(same_as) == phi_fingerprint(phi_dir):
            for f in FAMILIARITY_FILES:
                shutil.copyfile(same_as / f, phi_dir / f)
            return
        if len(self.data.val) < 2:
            print(f"note: no familiarity record for {phi_dir} (it needs ≥ 2 validation documents; φ will not abstain "
                  "on documents unlike its data): `taalm phi familiarity` makes one later")
            return
        d = self.cfg.data
        rec = make_familiarity(phi_dir, [p.doc_ids for p in self.data.train], [p.doc_ids for p in self.data.val],
                               {"train": d.train_file, "heldout": d.val_file or f"{len(self.data.val)} held out of "
                                "train", "kind": "pairs", "max_tokens": d.max_doc_tokens})
        rec.save(phi_dir)


# ---------------------------------------------------------------------------------- after each φ update
@dataclass
class Validation:
    """A validation of φ when due: ``run`` is :meth:`MetaTrainer.validate` (``train.val_every``) or
    :meth:`MetaTrainer.ckl_validate` (``train.ckl_val_every``); its metrics join the step's."""

    when: Every
    run: Callable[..., dict]

    def on_step_end(self, trainer: MetaTrainer, end: StepEnd) -> None:
        if self.when.due(end):
            end.metrics.update(self.run(trainer, baselines=end.baselines))


SELECTION_METRIC = {"ckl_val": "ckl_val/top_acc", "objective": "-val/objective"}
"""What :class:`BestPhi` maximises per ``train.select`` rule (as ``selection.json``'s ``metric`` names it)."""


@dataclass
class BestPhi:
    """``train.select`` (as :meth:`MetaTrainer.selection_rule` applies it): keep φ in ``best_phi/`` when this step's
    selection metric (``ckl_val/top_acc``, or minus ``val/objective``) beats the best so far (ties keep the earlier
    φ); ``last`` keeps none."""

    select: str

    def on_step_end(self, trainer: MetaTrainer, end: StepEnd) -> None:
        rule = trainer.selection_rule(end.metrics if end.baselines else None)
        if end.baselines and rule != self.select and D.is_main():
            m = end.metrics
            print(f"note: the CKL validation cannot tell weights apart here (Top Acc: oracle "
                  f"{m['ckl_val/top_acc_oracle']:.3f}, uniform {m['ckl_val/top_acc_uniform']:.3f} on "
                  f"{len(trainer.data.val[: trainer.cfg.train.ckl_val_docs])} documents): φ is selected by "
                  + ("the validation objective" if rule == "objective" else "the last update") + " instead")
        metric = {"ckl_val": "ckl_val/top_acc", "objective": "val/objective"}.get(rule)
        if metric not in end.metrics:
            return
        score = end.metrics[metric] if rule == "ckl_val" else -end.metrics[metric]
        best = trainer.state.best
        if best["score"] is not None and best["metric"] == SELECTION_METRIC[rule] and not score > best["score"]:
            return
        trainer.state.best = {"step": trainer.step, "score": score, "metric": SELECTION_METRIC[rule]}
        state = trainer.phi.export_state()
        if D.is_main():
            selection = {"selection.json": json.dumps(trainer.state.best, indent=2)}
            ckpt.replace_dir(trainer.out / "best_phi", lambda tmp: save_phi(state, trainer.cfg.phi, tmp, selection))
        D.barrier()


class WeightStats:
    """Where φ puts its weight (reduced over ranks). Over the positions whose loss counts: mean weight on
    all, on the object's tokens and elsewhere; ``share_on_object`` = Σ w on the object / Σ w and
    ``share_on_first`` = the share of the first predicted token (position 1: a "sink" there shrinks the
    normalised step on every other token). ``weight_position0`` is the mean weight φ gives position 0,
    whose loss never counts (a sink there is harmless)."""

    NAMES = ("weight_mean", "weight_on_object", "weight_off_object", "weight_first", "weight_position0")

    def __init__(self):
        self.v = [0.0] * (2 * len(self.NAMES))  # sum/count per name

    def add(self, w: torch.Tensor, doc: dict) -> None:
        valid = next_token_valid_mask(doc["attention_mask"])
        obj = doc["object_mask"].bool()
        first = torch.zeros_like(valid)
        first[:, 1:2] = valid[:, 1:2]
        pos0 = torch.zeros_like(valid)
        pos0[:, 0] = doc["attention_mask"][:, 0].bool()
        for k, mask in enumerate((valid, valid & obj, valid & ~obj, first, pos0)):
            self.v[2 * k] += float(w[mask].sum())
            self.v[2 * k + 1] += float(mask.sum())

    def reduced(self, prefix: str) -> dict:
        v = D.all_reduce_sum(self.v)
        out = {f"{prefix}/{n}": (v[2 * k] / v[2 * k + 1] if v[2 * k + 1] else None) for k, n in enumerate(self.NAMES)}
        total = v[0] or None
        out[f"{prefix}/share_on_object"] = v[2] / total if total else None
        out[f"{prefix}/share_on_first"] = v[6] / total if total else None
        return out


def run_meta_training(cfg: MetaTrainConfig | TaalmConfig) -> tuple[MetaTrainer, dict]:
    """``setup``, ``train``, ``cleanup`` (always) of one :class:`MetaTrainer`; returns it and its summary."""
    trainer = MetaTrainer(cfg)
    return trainer, run_to_end(trainer, trainer.train)
