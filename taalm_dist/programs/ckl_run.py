"""``taalm ckl run``: θ learns the To-Learn evidence epoch by epoch with a method's token weights, and is
tested on To-Learn (plasticity) and Not-To-Forget (stability) tasks after every epoch (docs/design.md §4).

Contract: ``r = CklRunner(cfg); r.setup(); r.run(); r.cleanup()``. The run directory is opened through
:func:`taalm_dist.engine.run_dir.open_run_dir` (exclusive, never mixed with another run); a checkpoint follows
every epoch and ``--resume auto`` continues from the newest one (a resumed run equals an uninterrupted one: the
epoch's order depends on the seed and the epoch alone). On one process θ is a plain module;
launched with several processes (torchrun / deepspeed launcher, ``engine.backend: auto``) θ is a
DeepSpeed ZeRO-3 engine and every θ update is data parallel: each rank takes its share of the batch and
its loss is scaled so that the engine's rank average is the mean over the whole batch
([uneven batch note]); evaluation splits the tasks over ranks and sums. Both are one interface
(:mod:`taalm_dist.engine.theta`: ``self.theta_learner``). Rank 0 writes every output.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from taalm_dist import weight_rules
from taalm_dist.ckl import methods as M
from taalm_dist.ckl.metrics import summarise
from taalm_dist.ckl.report import plot_curves, write_metrics, write_report
from taalm_dist.config import TaalmConfig
from taalm_dist.data import collate, load_pairs, tokenize_pair
from taalm_dist.data.jsonl_file import file_sha256
from taalm_dist.data.order import epoch_rng
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine import distributed as D
from taalm_dist.engine.preemption import run_to_end
from taalm_dist.engine.run_dir import resume_settings
from taalm_dist.engine.session import RunSession, SessionProgram
from taalm_dist.engine.theta import LocalTheta, Zero3Theta
from taalm_dist.errors import ConfigError, DataError
from taalm_dist.losses.lm_head import per_token_loss_fn, token_weighted_loss
from taalm_dist.models import check_same_tokenizer, load_phi, load_tokenizer
from taalm_dist.models.theta import build_theta
from taalm_dist.tracking.heatmap import heatmap


class CklRunner(SessionProgram):
    """One LAMA-CKL run; see the module docstring."""

    COMMAND = "ckl run"
    """The verb (names the run mark and messages)."""
    SETTINGS = ("ckl.", "theta.", "loss.", "data.task_field", "data.max_doc_tokens", "data.max_task_tokens",
                "data.on_long_doc")
    """The settings (dotted keys; a trailing dot: a whole section) a resumed run must share with its checkpoint ..."""
    RESUME_MAY_CHANGE = ("ckl.epochs", "ckl.resume", "ckl.progress", "ckl.out_dir", "ckl.data_dir", "ckl.phi_path",
                         "ckl.heatmap_docs", "ckl.eval_batch_size")
    """... except these (the data directory and φ may move: their content is compared instead)."""

    def __init__(self, cfg: TaalmConfig):
        self.cfg, self.c = cfg, cfg.ckl
        self.session = RunSession(self.COMMAND)
        self.step = 0
        self.epoch = 0
        self.rows: list[dict] = []
        """One row per evaluated epoch (epoch 0: before training)."""
        self.losses: list[float] = []
        """Every θ update's batch loss, in order."""
        self.notes: list[str] = []

    # ---------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Runtime, data, run directory (checked before anything is written), θ and its optimizer, the checkpoint to
        resume, trackers."""
        self._check_inputs()
        self._start()
        self._load_data()
        # what a checkpoint must share with the run that resumes it (the data hashed once, not at every checkpoint)
        self.settings, self.data_sha256 = self._settings(), self._data_sha256()
        self.session.open(self.c.out_dir, overwrite=self._overwrite(), resume=self.c.resume, settings=self.settings,
                          data_sha256=self.data_sha256, defaults=self._settings(TaalmConfig()))
        with self.session.building():
            self._build_training()
            if self.session.resume_from is not None:
                self._load_checkpoint(self.session.resume_from)
        self.session.open_trackers(self.cfg, metrics_step=self._metrics_step(), params=self._tracker_params(),
                                   method=self.c.method)

    def _check_inputs(self) -> None:
        if not self.c.data_dir:
            raise ConfigError("ckl.data_dir is not set: pass --data-dir (a directory from `taalm ckl build`)")

    def _overwrite(self) -> bool:
        return self.cfg.train.overwrite

    def _settings(self, cfg: TaalmConfig | None = None) -> dict:
        """The settings a resumed run must share (of this run's config, or of ``cfg``)."""
        return resume_settings(cfg or self.cfg, self.SETTINGS, self.RESUME_MAY_CHANGE)

    def _data_sha256(self) -> dict:
        """Content hashes of the files the run learns from (a file changed in place is not resumed into)."""
        d = Path(self.c.data_dir)
        files = {"ckl.data_dir/to_learn.jsonl": d / "to_learn.jsonl",
                 "ckl.data_dir/not_to_forget.jsonl": d / "not_to_forget.jsonl"}
        if self.c.phi_path and M.base_rule(self.c.method) == "taalm":
            files["ckl.phi_path/phi.safetensors"] = Path(self.c.phi_path) / "phi.safetensors"
        return {k: file_sha256(v) for k, v in files.items() if v.is_file()}

    def _tracker_params(self) -> dict:
        return {"ckl.to_learn_rows": len(self.to_learn), "ckl.not_to_forget_rows": len(self.not_to_forget)}

    def _metrics_step(self) -> int:
        """The ``step`` of metrics.jsonl rows the checkpoint covers (``ckl run`` logs per epoch)."""
        return self.epoch

    def _start(self) -> None:
        """The runtime (process group, device), the seed and θ's tokenizer."""
        self.session.start(self.cfg.engine, theta=self.cfg.theta.model)
        self.distributed, self.world, self.rank = self.rt.distributed, self.rt.world, self.rt.rank
        torch.manual_seed(self.c.seed)
        self.tokenizer = load_tokenizer(self.cfg.theta.model)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def _build_training(self) -> None:
        """θ (trainable part made), the weight rule, the per-token loss, and θ's learner: AdamW on one process, a
        ZeRO-3 engine on several."""
        self._build_theta()
        self.rule = self._weight_rule()
        self.per_token_loss = per_token_loss_fn(self.cfg.loss)
        self.theta_learner = self._shard_theta() if self.distributed else LocalTheta(self.theta, self.c.lr)

    # ---------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self) -> Path:
        """θ's trainable tensors and optimizer state (or θ's ZeRO-3 engine), the RNG and the progress, as
        ``checkpoints/step-<epoch>`` (atomic, see :mod:`taalm_dist.engine.checkpoint`); every rank calls it."""
        state = {"epoch": self.epoch, "step": self.step, "rows": self.rows, "losses": self.losses,
                 "settings": self.settings, "data_sha256": self.data_sha256, "world_size": self.world}
        return self.session.checkpoint(self.epoch, self.theta_learner.save, state, self.c.keep_checkpoints)

    def _load_checkpoint(self, directory: Path) -> None:
        """θ's trainable tensors, the optimizer, the RNG and the progress of ``directory`` (its settings and data
        were checked when the run directory was opened)."""
        state = ckpt.read_state(directory)
        if state.get("world_size", self.world) != self.world:
            raise ConfigError(f"{directory} was written by {state['world_size']} process(es), this run has "
                              f"{self.world}: relaunch with {state['world_size']}")
        self.theta_learner.load(directory)
        ckpt.load_rng(directory)
        self.epoch, self.step = state["epoch"], state["step"]
        self.rows, self.losses = state["rows"], state["losses"]
        if D.is_main():
            print(f"taalm: resuming {self.out} after epoch {self.epoch} ({self.step} θ updates)")

    def _check_stop(self) -> None:
        """After a θ update: stop every rank together when any received SIGTERM/SIGINT (the last epoch checkpoint
        stays; the interrupted epoch is learned again on resume)."""
        if self.session.stop_requested():
            done = f"after epoch {self.epoch}" if self.epoch else "before its first epoch checkpoint"
            self.session.stop(f"stopped by {self.signals.requested or 'a request on another rank'} during epoch "
                              f"{self.epoch + 1}; {self.out} holds the run {done}; continue with --resume auto")

    def _tokenize(self, pairs):
        d = self.cfg.data
        return [tokenize_pair(self.tokenizer, p, d.max_doc_tokens, d.max_task_tokens, d.on_long_doc) for p in pairs]

    def _load_data(self) -> None:
        c, d = self.c, Path(self.c.data_dir)
        field, skip = self.cfg.data.task_field, self.cfg.data.skip_bad_rows
        for name in ("to_learn.jsonl", "not_to_forget.jsonl"):
            if not (d / name).is_file():
                raise DataError(f"{d / name} does not exist: ckl.data_dir must be a `taalm ckl build` output")
        tl, _ = load_pairs(d / "to_learn.jsonl", field, skip)
        if c.max_evidence_chars is not None:
            kept = [p for p in tl if len(p.document) <= c.max_evidence_chars]
            self.notes.append(f"{len(tl) - len(kept)} To-Learn rows dropped (evidence > {c.max_evidence_chars} chars)")
            tl = kept
        nf, _ = load_pairs(d / "not_to_forget.jsonl", field, skip)
        self.to_learn = self._tokenize(tl[: c.max_to_learn])
        self.not_to_forget = self._tokenize(nf[: c.max_not_to_forget])
        self.replay = []
        if M.mechanism(c.method) == "mix_review":
            # old knowledge to replay: replay.jsonl (known facts, not evaluation rows); builds made before it
            # existed replay meta_train.jsonl
            source = d / "replay.jsonl" if (d / "replay.jsonl").is_file() else d / "meta_train.jsonl"
            if not source.is_file():
                raise DataError(f"{d / 'replay.jsonl'} does not exist: mix_review replays its evidence (rebuild "
                                "with `taalm ckl build`)")
            old, _ = load_pairs(source, field, skip_bad_rows=True)
            self.replay = self._tokenize(old)

    def _build_theta(self) -> None:
        kadapter = self.c.kadapter_size if M.mechanism(self.c.method) == "kadapter" else None
        self.theta = build_theta(self.cfg.theta, len(self.tokenizer), seed=self.c.seed, device=self.rt.device,
                                 gradient_checkpointing=self.cfg.engine.gradient_checkpointing, kadapter_size=kadapter)
        if not self.rt.distributed:
            self.theta = self.rt.place(self.theta)
        self.params = [p for p in self.theta.parameters() if p.requires_grad]
        if M.mechanism(self.c.method) == "recadam":  # θ₀ for the pull term
            self.start = [p.detach().clone() for p in self.params]

    def _shard_theta(self) -> Zero3Theta:
        """θ as a ZeRO-3 engine with AdamW (data parallel over the batch)."""
        from taalm_dist.engine.ds_config import ckl_theta_config, save_ds_configs
        mech = M.mechanism(self.c.method)
        if mech == "recadam" or (M.base_rule(self.c.method) == "rho1" and not hasattr(self.theta, "disable_adapter")):
            raise ConfigError(f"ckl.method={self.c.method} needs θ's full tensors on every rank (θ₀ pull / reference "
                              "copy), which ZeRO-3 partitions: run it on one process, or rho1 with theta.trainable=lora")
        if self.c.batch_size % self.world and self.c.batch_size < self.world:
            raise ConfigError(f"ckl.batch_size={self.c.batch_size} is smaller than the {self.world} processes")
        config = ckl_theta_config(self.cfg, self.world)
        if D.is_main():
            save_ds_configs({"theta": config}, self.out / "ds_config.json")
        return Zero3Theta(self.rt, self.theta, config)

    def _weight_rule(self):
        rule = M.base_rule(self.c.method)
        if rule == "oracle":
            return weight_rules.oracle_weights
        if rule == "rho1":
            return weight_rules.Rho1Weights(self.theta, self.c.rho1_keep)
        if rule == "taalm":
            if not self.c.phi_path:
                raise ConfigError(f"ckl.method={self.c.method} needs ckl.phi_path (a meta-trained φ's phi/ directory)")
            phi = load_phi(self.c.phi_path, device=self.rt.device)
            from taalm_dist.models.train_attention import PHI_CONFIG

            phi_source = json.loads((Path(self.c.phi_path) / PHI_CONFIG).read_text())["phi"]["model"]
            from taalm_dist.config import ModelSourceConfig, build

            check_same_tokenizer(self.tokenizer, load_tokenizer(build(ModelSourceConfig, phi_source, "phi.model.")),
                                 f"θ ({self.cfg.theta.model.source})", f"φ ({self.c.phi_path})")
            return weight_rules.PhiWeights(self.rt.place(phi), floor=self.c.phi_weight_floor)
        return weight_rules.uniform_weights

    # ---------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def accuracy(self, items) -> float:
        """Mean object-token accuracy over the tasks of ``items`` (split over ranks, summed)."""
        return self.theta_learner.accuracy(items, self.pad_id, self.c.eval_batch_size, self.rt.to_device)

    # ------------------------------------------------------------------------------------ training
    def _theta_update(self, items) -> float:
        """One θ update on ``items`` (the whole batch; each rank takes its share). Returns the batch loss."""
        items, factor = self.theta_learner.share(items)  # [uneven batch note] in taalm_dist.engine.theta
        doc = self.rt.to_device(collate(items, self.pad_id)[0])
        w = self.rule(doc) * (1.0 if factor else 0.0)
        self.theta.train()
        loss = token_weighted_loss(self.theta_learner.model, doc, w, self.per_token_loss)
        if M.mechanism(self.c.method) == "recadam":
            lam = M.recadam_lambda(self.step, self.c.recadam_k, self.c.recadam_t0)
            loss = lam * loss + (1 - lam) * 0.5 * self.c.recadam_gamma * M.quadratic_pull(self.params, self.start)
        value = self.theta_learner.update(loss * factor)
        self.step += 1
        self.losses.append(value)
        self._check_stop()
        return value

    def epoch_batches(self, epoch: int) -> list[list]:
        """The θ batches of ``epoch`` (1-based): the documents (plus replayed ones) shuffled by a seed of
        ``seed`` and ``epoch`` alone, so a resumed run sees the same order."""
        rng = epoch_rng(self.c.seed, epoch)
        items = list(self.to_learn)
        if self.replay:
            k = min(len(self.replay), max(1, round(self.c.mix_review_ratio * len(self.to_learn))))
            items += rng.sample(self.replay, k)
        rng.shuffle(items)
        return [items[s : s + self.c.batch_size] for s in range(0, len(items), self.c.batch_size)]

    def train_epoch(self, epoch: int) -> float:
        losses = [self._theta_update(batch) for batch in self.epoch_batches(epoch)]
        return sum(losses) / len(losses)

    # --------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        """Epoch 0 evaluation, then train/evaluate the remaining epochs (a checkpoint after each); write every
        output. Returns metrics.

        Raises:
            Preempted: after a SIGTERM/SIGINT (the last epoch checkpoint stays).
        """
        self._started, self._first_epoch = time.monotonic(), self.epoch  # the setup facts' wall_s, resumed_at_epoch
        with self.session.stop_signals(then="finishing the θ update in progress (the last epoch checkpoint is kept)"):
            return self._run()

    def _evaluate_row(self, epoch: int, loss: float | None) -> dict:
        row = {"epoch": epoch, "to_learn_acc": self.accuracy(self.to_learn),
               "not_to_forget_acc": self.accuracy(self.not_to_forget), "train_loss": loss}
        self.rows.append(row)
        self.log.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        return row

    def _run(self) -> dict:
        if not self.rows:
            self._write_heatmap()
            self._evaluate_row(0, None)
        bar = tqdm(range(self.epoch + 1, self.c.epochs + 1), desc=f"ckl {self.c.method}", initial=self.epoch,
                   total=self.c.epochs, disable=not (self.c.progress and D.is_main()), dynamic_ncols=True)
        for epoch in bar:
            loss = self.train_epoch(epoch)
            self.epoch = epoch
            row = self._evaluate_row(epoch, loss)
            self._save_checkpoint()
            bar.set_postfix(tl=f"{row['to_learn_acc']:.3f}", nf=f"{row['not_to_forget_acc']:.3f}")
        rows = self.rows
        summary = summarise({r["epoch"]: r["to_learn_acc"] for r in rows}, {r["epoch"]: r["not_to_forget_acc"] for r in rows})
        payload = {"method": self.c.method, "epochs": rows, "summary": summary.as_dict(), "notes": self.notes,
                   "setup": self._setup_facts()}
        if not D.is_main():
            return payload
        write_metrics(self.out, payload)
        plot_curves([payload], self.out / "curves.png")
        write_report(self.out, payload)
        self.log.log_metrics({f"summary/{k}": v for k, v in summary.as_dict().items()}, step=self.c.epochs)
        for name in ("metrics.json", "epochs.csv", "curves.png", "heatmap.html", "heatmap.png", "report.md", "config.yaml"):
            self.log.log_artifact(self.out / name)
        return payload

    def _setup_facts(self) -> dict:
        return {"theta": self.cfg.theta.model.source, "trainable": "kadapter" if M.mechanism(self.c.method) == "kadapter"
                else self.cfg.theta.trainable, "epochs": self.c.epochs, "lr": self.c.lr, "batch_size": self.c.batch_size,
                "to_learn": len(self.to_learn), "not_to_forget": len(self.not_to_forget), "processes": self.world,
                "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "wall_s": round(time.monotonic() - self._started, 1), "resumed_at_epoch": self._first_epoch or None,
                "phi": self.c.phi_path if M.base_rule(self.c.method) == "taalm" else None,
                "phi_weight_floor": self.c.phi_weight_floor if M.base_rule(self.c.method) == "taalm" else None}

    def _write_heatmap(self) -> None:
        """The method's epoch-0 weights on the first documents (every rank computes: the rule may run θ)."""
        items = self.to_learn[: self.c.heatmap_docs]
        if not items:
            return
        doc = self.rt.to_device(collate(items, self.pad_id)[0])
        w = self.rule(doc).cpu()
        if not D.is_main():
            return
        docs = []
        for b, item in enumerate(items):
            n = len(item.doc_ids)
            tokens = [self.tokenizer.decode([i]) for i in item.doc_ids]  # readable text, not byte-level symbols
            docs.append((tokens, w[b, :n].tolist(), item.doc_object_mask))
        heatmap(docs, f"{self.c.method}: token weights (epoch 0)", self.out)


def run_ckl(cfg: TaalmConfig) -> tuple[CklRunner, dict]:
    """``setup``, ``run``, ``cleanup`` (always) of one :class:`CklRunner`; returns it and the run's result."""
    runner = CklRunner(cfg)
    return runner, run_to_end(runner, runner.run)
