"""``taalm ckl run``: θ learns the To-Learn evidence epoch by epoch with a method's token weights, and is
tested on To-Learn (plasticity) and Not-To-Forget (stability) tasks after every epoch (docs/design.md §4).

Contract: ``r = CklRunner(cfg); r.setup(); r.run(); r.cleanup()`` (or :func:`run_ckl`). What every program that
teaches θ documents shares — the run's lifecycle, θ learning on one process or data parallel under ZeRO-3, epoch
checkpoints and ``--resume auto`` (a resumed run equals an uninterrupted one) — is
:class:`~taalm_dist.programs.document_training.DocumentTrainer`; this module adds the benchmark: its data, the
methods (:mod:`taalm_dist.programs.methods`: a weight rule and a θ/loss/data change each), the per-epoch To-Learn / Not-To-Forget
scores and the report. Rank 0 writes every output.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from taalm_dist.ckl.metrics import summarise
from taalm_dist.ckl.report import plot_curves, write_metrics, write_report
from taalm_dist.config import CklRunConfig, TaalmConfig
from taalm_dist.data import load_pairs, tokenize_pair
from taalm_dist.data.jsonl_file import file_sha256
from taalm_dist.data.synth import benchmark_of
from taalm_dist.engine import distributed as D
from taalm_dist.engine.preemption import run_to_end
from taalm_dist.errors import ConfigError, DataError
from taalm_dist.programs.document_training import DocumentTrainer


class CklRunner(DocumentTrainer):
    """One LAMA-CKL run; see the module docstring."""

    COMMAND = "ckl run"
    CONFIG = CklRunConfig
    SECTION = "ckl"
    SETTINGS = ("ckl.", "theta.", "loss.", "data.task_field", "data.max_doc_tokens", "data.max_task_tokens",
                "data.on_long_doc")

    @property
    def method(self) -> str:
        return self.c.method

    # ---------------------------------------------------------------------------------------- setup
    def _check_inputs(self) -> None:
        if not self.c.data_dir:
            raise ConfigError("ckl.data_dir is not set: pass --data-dir (a directory from `taalm ckl build`)")

    def _data_sha256(self) -> dict:
        """Content hashes of the files the run learns from (a file changed in place is not resumed into)."""
        d = Path(self.c.data_dir)
        files = {"ckl.data_dir/to_learn.jsonl": d / "to_learn.jsonl",
                 "ckl.data_dir/not_to_forget.jsonl": d / "not_to_forget.jsonl"}
        return {k: file_sha256(v) for k, v in files.items() if v.is_file()}

    def _tracker_params(self) -> dict:
        return {"ckl.to_learn_rows": len(self.to_learn), "ckl.not_to_forget_rows": len(self.not_to_forget)}

    def _metrics_step(self) -> int:
        """The ``step`` of metrics.jsonl rows the checkpoint covers (``ckl run`` logs per epoch)."""
        return self.epoch

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
        self.benchmark = benchmark_of(p.uid for p in tl)
        if c.max_evidence_chars is not None:
            kept = [p for p in tl if len(p.document) <= c.max_evidence_chars]
            self.notes.append(f"{len(tl) - len(kept)} To-Learn rows dropped (evidence > {c.max_evidence_chars} chars)")
            tl = kept
        nf, _ = load_pairs(d / "not_to_forget.jsonl", field, skip)
        self.to_learn = self._tokenize(tl[: c.max_to_learn])
        self.not_to_forget = self._tokenize(nf[: c.max_not_to_forget])
        if self.m.change.replays:
            # old knowledge to replay: replay.jsonl (known facts, not evaluation rows); builds made before it
            # existed replay meta_train.jsonl
            source = d / "replay.jsonl" if (d / "replay.jsonl").is_file() else d / "meta_train.jsonl"
            if not source.is_file():
                raise DataError(f"{d / 'replay.jsonl'} does not exist: mix_review replays its evidence (rebuild "
                                "with `taalm ckl build`)")
            old, _ = load_pairs(source, field, skip_bad_rows=True)
            self.replay = self._tokenize(old)

    def _setup_facts(self) -> dict:
        return {**super()._setup_facts(), "benchmark": self.benchmark}

    # --------------------------------------------------------------------------------------- run
    def train_epoch(self, epoch: int) -> float:
        losses = [self._theta_update(batch) for batch in self.epoch_batches(epoch)]
        return sum(losses) / len(losses)

    def _evaluate_row(self, epoch: int, loss: float | None) -> dict:
        row = {"epoch": epoch, "to_learn_acc": self.accuracy(self.to_learn),
               "not_to_forget_acc": self.accuracy(self.not_to_forget), "train_loss": loss}
        self.rows.append(row)
        self.log.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        return row

    def _run(self) -> dict:
        """Epoch 0 evaluation, then train/evaluate the remaining epochs (a checkpoint after each); write every
        output. Returns metrics."""
        if not self.rows:
            self._write_heatmap()
            self._evaluate_row(0, None)
        bar = tqdm(range(self.epoch + 1, self.c.epochs + 1), desc=f"ckl {self.c.method}", initial=self.epoch,
                   total=self.c.epochs, disable=not (self.c.progress and D.is_main()), dynamic_ncols=True)
        for epoch in bar:
            loss = self.train_epoch(epoch)
            self.epoch = epoch
            row = self._evaluate_row(epoch, loss)
            if self.cadence.due(epoch):
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


def run_ckl(cfg: CklRunConfig | TaalmConfig) -> tuple[CklRunner, dict]:
    """``setup``, ``run``, ``cleanup`` (always) of one :class:`CklRunner`; returns it and the run's result."""
    runner = CklRunner(cfg)
    return runner, run_to_end(runner, runner.run)
