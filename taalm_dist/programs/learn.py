"""``taalm learn``: θ learns a user's own documents with a trained φ's token weights (or uniform ones).

Contract: ``l = Learner(cfg); l.setup(); l.run(); l.cleanup()`` (or :func:`run_learn`). The documents
(:func:`taalm_dist.data.documents.load_documents`) are tokenised and split into windows of at most
``learn.window_tokens`` tokens; θ learns the windows epoch by epoch with the token-weighted loss, exactly as
``taalm ckl run`` learns evidence (the same θ update, shuffle and optimizer: both are a
:class:`~taalm_dist.programs.document_training.DocumentTrainer`; here the documents are the windows and the
evaluation is the user's question files). One process, or θ as a DeepSpeed ZeRO-3 engine when launched with several processes
(``launch/learn.sh``).

Run directory (``learn.out_dir``):

- ``learn_run.json`` (what made it; a directory without it or a checkpoint is never resumed into), ``config.yaml``
  (the directory is held exclusively while the run lasts: :mod:`taalm_dist.engine.run_dir`);
- ``checkpoints/step-00000E/`` after every epoch E (θ's trainable tensors and AdamW state, RNG) —
  ``--resume auto`` continues from the newest complete one;
- ``adapter/`` (peft: ``PeftModel.from_pretrained(base, "adapter")``) with ``theta.trainable: lora``, or
  ``model/`` (the whole fine-tuned θ) with ``full``; ``merged/`` (with ``learn.merge``): base + adapter folded
  into one model that ``AutoModelForCausalLM.from_pretrained`` loads; both hold the tokenizer;
- ``metrics.jsonl`` (``train/loss`` every update, ``eval/*`` every epoch; MLflow too), ``summary.json``,
  ``curves.png``, ``heatmap.html`` / ``heatmap.png`` (the weights θ learns the first windows with).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from taalm_dist import integrity
from taalm_dist.config import LearnRunConfig, TaalmConfig
from taalm_dist.data.documents import document_windows, load_documents, load_questions, qa_text
from taalm_dist.data.tokenize import TokenizedPair, encode_marked
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine import distributed as D
from taalm_dist.engine.preemption import run_to_end
from taalm_dist.errors import ConfigError, DataError, TrainingError
from taalm_dist.programs.document_training import DocumentTrainer


class Learner(DocumentTrainer):
    """One ``taalm learn`` run; see the module docstring."""

    COMMAND = "learn"
    CONFIG = LearnRunConfig
    SECTION = "learn"
    SETTINGS = ("learn.", "theta.", "loss.")

    @property
    def method(self) -> str:
        """``taalm`` (φ's weights) with ``learn.phi_path``, else ``finetune`` (uniform weights)."""
        return "taalm" if self.c.phi_path else "finetune"

    # ---------------------------------------------------------------------------------------- setup
    def _check_inputs(self) -> None:
        if not self.c.docs:
            raise ConfigError("learn.docs is not set: pass --docs (a .jsonl file, a directory of .txt/.md files or a "
                              "datasets dataset)")

    def _data_sha256(self) -> dict:
        return {"learn.docs": self.docs_sha256}

    def _tracker_params(self) -> dict:
        return {"learn.documents": len(self.documents), "learn.windows": len(self.to_learn)}

    def _metrics_step(self) -> int:
        return self.step  # learn logs per θ update

    def _load_data(self) -> None:
        l = self.c
        self.documents = load_documents(l.docs, l.text_field)
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(doc.text.encode("utf-8") + b"\x00")
        try:
            self.to_learn = document_windows(self.tokenizer, [d.text for d in self.documents], l.window_tokens,
                                             l.window_overlap, [d.id for d in self.documents])
        except DataError as e:
            raise DataError(f"{l.docs}: {e}") from None
        self.docs_sha256 = digest.hexdigest()
        self.qa = self._questions(l.eval_qa)
        self.retain = self._questions(l.retain)
        self.not_to_forget = self.retain

    def _questions(self, path: str | None) -> list[TokenizedPair]:
        """Question files as evaluation items: the answer's tokens are the ones scored (teacher forced)."""
        if not path:
            return []
        items = []
        for qa in load_questions(path):
            text, span = qa_text(qa)
            ids, answer_mask = encode_marked(self.tokenizer, text, [span])
            if not any(answer_mask[1:]):
                raise DataError(f"{qa.id}: answer {qa.answer!r} has no token θ predicts in {text!r}")
            items.append(TokenizedPair(None, [], [], ids, answer_mask, False))
        return items

    # ------------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> float:
        batches = self.epoch_batches(epoch)
        bar = tqdm(batches, desc=f"learn epoch {epoch}/{self.c.epochs}", unit="update", dynamic_ncols=True,
                   disable=not (self.c.progress and D.is_main()))
        losses = []
        for batch in bar:
            loss = self._theta_update(batch)
            losses.append(loss)
            self.log.log_metrics({"train/loss": loss, "train/epoch": epoch}, step=self.step)
            bar.set_postfix(loss=f"{loss:.4f}")
        return sum(losses) / len(losses)

    def evaluate(self) -> dict:
        """``qa_acc`` / ``retain_acc``: answer-token accuracy on the question files given (every rank takes part)."""
        out = {}
        if self.qa:
            out["qa_acc"] = self.accuracy(self.qa)
        if self.retain:
            out["retain_acc"] = self.accuracy(self.retain)
        return out

    def _log_row(self, row: dict) -> None:
        self.rows.append(row)
        self.log.log_metrics({f"eval/{k}": v for k, v in row.items() if k not in ("epoch", "train_loss")}
                             | {"epoch": row["epoch"]}, step=self.step)

    def _run(self) -> dict:
        """Learn the remaining epochs (a checkpoint after each), then export θ. Returns the run's summary."""
        if self.epoch == 0 and not self.rows:
            self._write_heatmap()
            self._log_row({"epoch": 0, "train_loss": None, **self.evaluate()})
        for epoch in range(self.epoch + 1, self.c.epochs + 1):
            loss = self.train_epoch(epoch)
            self.epoch = epoch
            self._log_row({"epoch": epoch, "train_loss": loss, **self.evaluate()})
            if self.cadence.due(epoch):
                self._save_checkpoint()
        exported = self.export()
        summary = {"method": self.method, "phi": self.c.phi_path, "documents": len(self.documents),
                   "windows": len(self.to_learn), "updates": self.step, "epochs": self.rows, **exported,
                   "setup": self._setup_facts()}
        if D.is_main():
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            plot_learn_curves(self.rows, self.out / "curves.png", self.method)
            for name in ("summary.json", "curves.png", "heatmap.html", "heatmap.png", "config.yaml"):
                if (self.out / name).is_file():
                    self.log.log_artifact(self.out / name)
        return summary

    # ------------------------------------------------------------------------------------------ export
    def export(self) -> dict:
        """Write ``adapter/`` (LoRA) or ``model/`` (full) and, with ``learn.merge``, ``merged/``; returns their paths."""
        state = self.theta_learner.trainable_state()
        bad = D.broadcast_object(integrity.nonfinite(state) if D.is_main() else None)
        if bad:  # [finiteness policy] in taalm_dist.integrity: a NaN θ is never exported
            raise TrainingError(f"θ's learned tensors are not finite ({', '.join(bad[:3])}); nothing was exported. "
                                "Lower learn.lr, or check φ and the documents")
        if not D.is_main():
            D.barrier()
            return {}
        lora = hasattr(self.theta, "peft_config")
        target = self.out / ("adapter" if lora else "model")
        ckpt.replace_dir(target, lambda d: self._save_pretrained(self.theta, d, state))
        paths = {"adapter" if lora else "model": str(target)}
        if self.c.merge and lora:
            ckpt.replace_dir(self.out / "merged", lambda d: self._save_pretrained(merge_adapter(self.cfg, target, self.tokenizer), d))
            paths["merged"] = str(self.out / "merged")
        elif self.c.merge:
            self.notes.append("learn.merge: θ was trained in full, model/ is already a whole model")
        D.barrier()
        return paths

    def _save_pretrained(self, model, directory: Path, state: dict | None = None) -> None:
        model.save_pretrained(str(directory), **({"state_dict": state} if state is not None else {}))
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(str(directory))


def merge_adapter(cfg: LearnRunConfig, adapter_dir: str | Path, tokenizer):
    """θ's base (unquantized, on the CPU) with the peft adapter in ``adapter_dir`` folded into its weights."""
    from peft import PeftModel

    from taalm_dist.models import load_causal_lm

    spec = dataclasses.replace(cfg.theta.model, quantization="none", attn_implementation="auto")
    base = load_causal_lm(spec, vocab_size=len(tokenizer), device=torch.device("cpu"))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()  # our adapter: weights, no code


def plot_learn_curves(rows: list[dict], path: Path, label: str) -> None:
    """Training loss and the question accuracies per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    trained = [r for r in rows if r.get("train_loss") is not None]
    axes[0].plot([r["epoch"] for r in trained], [r["train_loss"] for r in trained], marker="o", ms=3, label=label)
    axes[0].set_title("training loss (token-weighted)")
    for key, name in (("qa_acc", "--eval-qa"), ("retain_acc", "--retain")):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", ms=3, label=f"{name} ({label})")
    axes[1].set_title("answer-token accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_learn(cfg: LearnRunConfig | TaalmConfig) -> tuple[Learner, dict]:
    """``setup``, ``run``, ``cleanup`` (always) of one :class:`Learner`; returns it and the run's summary."""
    learner = Learner(cfg)
    return learner, run_to_end(learner, learner.run)
