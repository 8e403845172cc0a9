"""θ learns documents epoch by epoch with a token-weight rule: what ``taalm ckl run`` and ``taalm learn`` share.

Contract: ``t = Program(cfg); t.setup(); t.run(); t.cleanup()`` (``run_to_end``). A program subclasses
:class:`DocumentTrainer` with its config class (``CONFIG``), the section holding its run settings (``SECTION``: lr,
batch_size, epochs, seed, phi_path, out_dir, ...), what it learns and how it scores (the hooks below). This base owns
the rest, the same for both: the run's lifecycle (:class:`~taalm_dist.engine.session.RunSession`), θ built once
(:func:`~taalm_dist.models.theta.build_theta`) and learning through one interface
(:mod:`taalm_dist.engine.theta`: AdamW on one process, a ZeRO-3 engine data parallel over each batch on several),
the weight rule, the θ update, the epoch's order (seed and epoch alone, so a resumed run equals an uninterrupted one),
epoch checkpoints, stop requests and the heatmap of the weights θ learns with. Rank 0 writes every output.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from taalm_dist import familiarity, integrity, weight_rules
from taalm_dist.config import for_program, resumable_keys
from taalm_dist.data import collate
from taalm_dist.data.order import epoch_rng
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine.callbacks import CheckpointCadence
from taalm_dist.engine import distributed as D
from taalm_dist.engine.run_dir import resume_settings
from taalm_dist.engine.session import RunSession, SessionProgram
from taalm_dist.engine.theta import LocalTheta, Zero3Theta
from taalm_dist.errors import ConfigError, TrainingError
from taalm_dist.losses.lm_head import per_token_loss_fn, token_weighted_loss
from taalm_dist.models import check_same_tokenizer, load_phi, load_tokenizer
from taalm_dist.models.theta import build_theta
from taalm_dist.models.train_attention import load_phi_tokenizer, phi_fingerprint
from taalm_dist.programs.methods import METHODS, Method
from taalm_dist.tracking.heatmap import heatmap


class DocumentTrainer(SessionProgram):
    """θ learning ``self.to_learn`` epoch by epoch with a :class:`~taalm_dist.programs.methods.Method`; see the module
    docstring. Subclasses set the class attributes and implement the abstract hooks below."""

    COMMAND: str
    """The verb (names the run mark, the tracker tags and messages)."""
    CONFIG: type
    """The program's config class (a :class:`~taalm_dist.config.TaalmConfig` given instead is read through it)."""
    SECTION: str
    """The config section with the run's settings (``ckl``, ``learn``)."""
    SETTINGS: tuple[str, ...]
    """The settings (dotted keys; a trailing dot: a whole section) a resumed run must share with its checkpoint,
    except the fields each section declares ``RESUMABLE`` (:func:`~taalm_dist.config.resumable_keys`)."""

    def __init__(self, cfg):
        self.cfg = for_program(self.CONFIG, cfg)
        self.c = getattr(self.cfg, self.SECTION)
        self.session = RunSession(self.COMMAND)
        self.step = 0
        self.epoch = 0
        self.rows: list[dict] = []
        """One row per evaluated epoch (epoch 0: before training)."""
        self.losses: list[float] = []
        """Every θ update's batch loss, in order."""
        self.notes: list[str] = []
        self.replay: list = []
        """Documents replayed among the epoch's own (``ckl run``'s mix_review); none by default."""
        self.cadence = CheckpointCadence(every=1)
        """A checkpoint after every epoch (:mod:`taalm_dist.engine.callbacks`; a stopped run resumes at an epoch)."""

    # ----------------------------------------------------------------------------- what a program says
    @property
    def method(self) -> str:
        """The name of the method θ learns with (:mod:`taalm_dist.programs.methods`)."""
        raise NotImplementedError

    def _check_inputs(self) -> None:
        """Refuse a config that names no data, before anything is read or written."""
        raise NotImplementedError

    def _load_data(self) -> None:
        """Set ``to_learn`` (the documents, :class:`~taalm_dist.data.tokenize.TokenizedPair`), ``not_to_forget``
        (for the setup facts) and, when the method replays, ``replay``."""
        raise NotImplementedError

    def _data_sha256(self) -> dict:
        """Content hashes of the files the run learns from (a resumed run must find them unchanged)."""
        raise NotImplementedError

    def _tracker_params(self) -> dict:
        """The data's counts, logged with the config."""
        raise NotImplementedError

    def _metrics_step(self) -> int:
        """The ``step`` of metrics.jsonl rows a checkpoint covers (per epoch or per θ update)."""
        raise NotImplementedError

    def _run(self) -> dict:
        """Learn the remaining epochs, evaluate, write the outputs; returns the run's result."""
        raise NotImplementedError

    def _check_method(self) -> None:
        """Refuse an unknown method, or one this program cannot run (:meth:`_refuse_method`), naming the field."""
        if self.method not in METHODS:
            raise ConfigError(f"{self.SECTION}.method={self.method!r} is not one of {list(METHODS)}")
        self._refuse_method(self.m)

    def _refuse_method(self, m: Method) -> None:
        """Raise :class:`ConfigError` when this program cannot run method ``m``; every method runs by default."""

    @property
    def m(self) -> Method:
        """The :class:`~taalm_dist.programs.methods.Method` of :attr:`method`."""
        return METHODS.lookup(self.method)

    # ---------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Runtime, data, run directory (checked before anything is written), θ and its learner, the checkpoint to
        resume, trackers."""
        self._check_method()
        self._check_inputs()
        self._start()
        self._load_data()
        # what a checkpoint must share with the run that resumes it (the data hashed once, not at every checkpoint)
        self.settings, self.data_sha256 = self._settings(self.cfg), {**self._data_sha256(), **self._phi_sha256()}
        self.session.open(self.c.out_dir, overwrite=self.c.overwrite, resume=self.c.resume, settings=self.settings,
                          data_sha256=self.data_sha256, defaults=self._settings(self.CONFIG()))
        with self.session.building():
            self._build_training()
            if self.session.resume_from is not None:
                self._load_checkpoint(self.session.resume_from)
        self.session.open_trackers(self.cfg, metrics_step=self._metrics_step(), params=self._tracker_params(),
                                   method=self.method)

    def _phi_sha256(self) -> dict:
        """Content hashes of φ's files when the method weighs with it (``<section>.phi_path/phi.safetensors`` and
        ``.../phi_config.json``): a φ changed in place, weights or config, is not resumed with."""
        if not (self.c.phi_path and self.m.uses_phi):
            return {}
        out = {f"{self.SECTION}.phi_path/{name}": digest for name, digest in phi_fingerprint(self.c.phi_path).items()}
        record = Path(self.c.phi_path) / familiarity.RECORD
        if self.c.phi_abstain and record.is_file():  # the abstention it learns with
            out[f"{self.SECTION}.phi_path/{familiarity.RECORD}"] = integrity.file_sha256(record)
        return out

    def _settings(self, cfg) -> dict:
        """The settings a resumed run must share, of config ``cfg``."""
        return resume_settings(cfg, self.SETTINGS, resumable_keys(cfg))

    def _start(self) -> None:
        """The runtime (process group, device), the seed and θ's tokenizer."""
        self.session.start(self.cfg.engine, theta=self.cfg.theta.model)
        self.cfg.validate(self.world)
        torch.manual_seed(self.c.seed)
        self.tokenizer = load_tokenizer(self.cfg.theta.model)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def _build_training(self) -> None:
        """θ (trainable part made), the weight rule, the per-token loss, and θ's learner: AdamW on one process, a
        ZeRO-3 engine on several."""
        self._build_theta()
        self.rule = self._weight_rule()
        if getattr(self.rule, "familiarity", None) is not None:
            self._set_corpus()
        self.per_token_loss = per_token_loss_fn(self.cfg.loss)
        self.theta_learner = self._shard_theta() if self.distributed else LocalTheta(self.theta, self.c.lr)

    def _kadapter_size(self) -> int | None:
        """θ frozen with K-Adapters of this size instead of its own trainable part (the kadapter methods), or None."""
        return self.c.kadapter_size if self.m.change.kadapter else None

    def _build_theta(self) -> None:
        self.theta = build_theta(self.cfg.theta, len(self.tokenizer), seed=self.c.seed, device=self.rt.device,
                                 gradient_checkpointing=self.cfg.engine.gradient_checkpointing,
                                 kadapter_size=self._kadapter_size())
        if not self.rt.distributed:
            self.theta = self.rt.place(self.theta)
        self.params = [p for p in self.theta.parameters() if p.requires_grad]
        self.m.change.prepare(self)

    def _check_distributed(self) -> None:
        """Refuse, before θ is sharded, what ZeRO-3 cannot run (the method's needs; the batch must cover the
        processes)."""
        self.m.check_distributed(self)

    def _shard_theta(self) -> Zero3Theta:
        """θ as a ZeRO-3 engine with AdamW (data parallel over the batch)."""
        from taalm_dist.engine.ds_config import save_ds_configs, theta_learning_config

        self._check_distributed()
        config = theta_learning_config(self.cfg, self.c.batch_size, self.c.lr, self.world)
        if D.is_main():
            save_ds_configs({"theta": config}, self.out / "ds_config.json")
        return Zero3Theta(self.rt, self.theta, config)

    def _weight_rule(self):
        """The method's weight rule (:class:`~taalm_dist.programs.methods.Rule`)."""
        return self.m.rule.build(self)

    def phi_weights(self) -> weight_rules.PhiWeights:
        """φ's weights (θ's and φ's tokenizers must agree), with its familiarity record unless abstention is off."""
        if not self.c.phi_path:
            raise ConfigError(f"{self.SECTION}.method={self.method} needs {self.SECTION}.phi_path (a meta-trained φ's "
                              "phi/ directory)")
        phi = load_phi(self.c.phi_path, device=self.rt.device)
        check_same_tokenizer(self.tokenizer, load_phi_tokenizer(self.c.phi_path),
                             f"θ ({self.cfg.theta.model.source})", f"φ ({self.c.phi_path})")
        record = familiarity.Familiarity.load(self.c.phi_path) if self.c.phi_abstain else None
        if self.c.phi_abstain and record is None and D.is_main():
            print(f"note: φ ({self.c.phi_path}) has no familiarity record, so it cannot abstain on documents unlike its "
                  f"meta-training data; make one with `taalm phi familiarity {self.c.phi_path} --train ... --heldout "
                  "...` (meta-training exports one)")
        return weight_rules.PhiWeights(self.rt.place(phi), floor=self.c.phi_weight_floor,
                                       uniform_share=self.c.phi_uniform_share, familiarity=record)

    def _set_corpus(self) -> None:
        """φ's corpus rule over the To-Learn documents (:mod:`taalm_dist.familiarity`): each rank measures its share of
        them, the distances are summed over ranks, so every rank applies the same corpus share."""
        items = self.to_learn
        mine = range(D.rank(), len(items), self.world)
        distances = [0.0] * len(items)
        for s in range(0, len(mine), self.c.eval_batch_size):
            idx = list(mine[s : s + self.c.eval_batch_size])
            doc = self.rt.to_device(collate([items[i] for i in idx], self.pad_id)[0])
            for i, d in zip(idx, self.rule.distances(doc).tolist()):
                distances[i] = d
        if self.world > 1:
            distances = D.all_reduce_sum(distances)
        c = self.rule.set_corpus(torch.tensor(distances))
        if D.is_main() and c["n"]:
            print(familiarity.describe_corpus(c))

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

    # ---------------------------------------------------------------------------------- evaluation
    def accuracy(self, items) -> float:
        """Mean object-token accuracy over the tasks of ``items`` (split over ranks, summed)."""
        return self.theta_learner.accuracy(items, self.pad_id, self.c.eval_batch_size, self.rt.to_device)

    # ------------------------------------------------------------------------------------ training
    def _adjust_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss θ minimises given the batch's token-weighted loss (recadam adds a pull)."""
        return self.m.change.adjust_loss(self, loss)

    def _theta_update(self, items) -> float:
        """One θ update on ``items`` (the whole batch; each rank takes its share). Returns the batch loss."""
        items, factor = self.theta_learner.share(items)  # [uneven batch note] in taalm_dist.engine.theta
        doc = self.rt.to_device(collate(items, self.pad_id)[0])
        w = self.rule(doc) * (1.0 if factor else 0.0)
        self.theta.train()
        loss = self._adjust_loss(token_weighted_loss(self.theta_learner.model, doc, w, self.per_token_loss))
        if D.any_rank(not bool(torch.isfinite(loss.detach()))):  # [finiteness policy] in taalm_dist.integrity
            raise TrainingError(f"θ update {self.step + 1} (epoch {self.epoch + 1}): the token-weighted loss is not "
                                f"finite; nothing more is learned or written. Lower {self.SECTION}.lr, or check φ "
                                f"({self.c.phi_path or 'none'}) and the documents")
        value = self.theta_learner.update(loss * factor)
        self.step += 1
        self.losses.append(value)
        self._check_stop()
        return value

    def _replayed(self, rng) -> list:
        """The replayed documents of an epoch (a method that replays: ``mix_review_ratio`` × the To-Learn count of
        ``replay``, drawn with the epoch's ``rng``); none otherwise."""
        if not (self.m.change.replays and self.replay):
            return []
        k = min(len(self.replay), max(1, round(self.c.mix_review_ratio * len(self.to_learn))))
        return rng.sample(self.replay, k)

    def epoch_batches(self, epoch: int) -> list[list]:
        """The θ batches of ``epoch`` (1-based): the documents (plus replayed ones) shuffled by a seed of
        ``seed`` and ``epoch`` alone, so a resumed run sees the same order."""
        rng = epoch_rng(self.c.seed, epoch)
        items = list(self.to_learn) + self._replayed(rng)
        rng.shuffle(items)
        return [items[s : s + self.c.batch_size] for s in range(0, len(items), self.c.batch_size)]

    # --------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        """Learn the remaining epochs (a checkpoint after each) and write the program's outputs; returns its result.

        Raises:
            Preempted: after a SIGTERM/SIGINT (the last epoch checkpoint stays).
        """
        self._started, self._first_epoch = time.monotonic(), self.epoch  # the setup facts' wall_s, resumed_at_epoch
        with self.session.stop_signals(then="finishing the θ update in progress (the last epoch checkpoint is kept)"):
            return self._run()

    def _setup_facts(self) -> dict:
        """What the result was made with, where and how long it took (``setup`` of its summary)."""
        taalm = self.m.uses_phi
        return {"theta": self.cfg.theta.model.source,
                "trainable": "kadapter" if self._kadapter_size() is not None else self.cfg.theta.trainable,
                "epochs": self.c.epochs, "lr": self.c.lr, "batch_size": self.c.batch_size,
                "to_learn": len(self.to_learn), "not_to_forget": len(self.not_to_forget), "processes": self.world,
                "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "wall_s": round(time.monotonic() - self._started, 1), "resumed_at_epoch": self._first_epoch or None,
                "phi": self.c.phi_path if taalm else None, "phi_weight_floor": self.c.phi_weight_floor if taalm else None,
                "phi_uniform_share": self.c.phi_uniform_share if taalm else None,
                "phi_abstained": self._abstained() if taalm else None}

    def _abstained(self) -> dict | None:
        """How much φ abstained (its familiarity record): documents weighed (over all ranks), the mean abstention
        share, how many got uniform weights, and the corpus rule's verdict; None without a record. Every rank calls
        it."""
        rule = self.rule
        if getattr(rule, "familiarity", None) is None:
            return None
        a = dict(rule.abstained)
        if self.world > 1:  # each rank weighed its share of every batch
            a["docs"], a["share_sum"], a["full"] = D.all_reduce_sum([a["docs"], a["share_sum"], a["full"]])
            a["docs"], a["full"] = int(a["docs"]), int(a["full"])
        return {"docs_weighed": a["docs"], "mean_share": round(a["share_sum"] / max(a["docs"], 1), 4),
                "uniform": a["full"], "known": round(rule.familiarity.known, 4),
                "unknown": round(rule.familiarity.unknown, 4), "corpus": rule.corpus}

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
        heatmap(docs, f"{self.method}: token weights (epoch 0)", self.out)
