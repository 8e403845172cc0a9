"""TAALM in an existing Hugging Face training script: change ``Trainer`` to :class:`TokenWeightedTrainer`.

>>> from taalm_dist.integrations.hf import TokenWeightedTrainer
>>> trainer = TokenWeightedTrainer(model=model, args=args, train_dataset=ds, data_collator=collator,
...                                processing_class=tokenizer, phi="runs/meta_train/phi")
>>> trainer.train()

Every token's next-token loss is weighted by φ's weight for it (φ frozen, on the model's device) and each
sequence's loss is normalised by its weight sum, exactly as ``taalm learn`` and ``taalm ckl run`` do
(:func:`taalm_dist.losses.lm_head.token_weighted_loss`, the one function all three call).
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from taalm_dist.config import LossConfig
from taalm_dist.errors import ConfigError
from taalm_dist.losses.lm_head import per_token_loss_fn, token_weighted_loss
from taalm_dist.weigh import TokenWeigher


class TokenWeightedTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss weights every token with a trained φ's weight.

    Args:
        phi: a ``phi/`` directory or a loaded :class:`~taalm_dist.weigh.TokenWeigher`; moved to the model's
            device and frozen. The tokenizer given to the Trainer (``processing_class``) must be φ's. A directory is
            loaded with φ's abstention on (its familiarity record, when it has one; the training set, when its rows
            hold ``input_ids``, is the corpus of its corpus rule — :meth:`TokenWeigher.set_corpus`); pass
            ``TokenWeigher.load(path, abstain=False)`` for φ's weights everywhere.
        *args, **kwargs: those of ``transformers.Trainer``.
    """

    def __init__(self, *args, phi: str | Path | TokenWeigher, **kwargs):
        super().__init__(*args, **kwargs)
        self.weigher = phi if isinstance(phi, TokenWeigher) else TokenWeigher.load(phi, device="cpu")
        tokenizer = getattr(self, "processing_class", None) or getattr(self, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("TokenWeightedTrainer needs the model's tokenizer (processing_class=...) to check that "
                              "φ's weights index the same tokens")
        self.weigher.check_tokenizer(tokenizer, "the Trainer's tokenizer")
        self._per_token_loss = per_token_loss_fn(LossConfig())
        self.corpus = self._set_corpus(self.train_dataset)

    def _set_corpus(self, dataset) -> dict | None:
        """φ's corpus rule over the training set's ``input_ids`` (:meth:`TokenWeigher.set_corpus`; at most
        ``CORPUS_MAX_N`` examples, evenly spaced); None without a record or without a sized dataset of token ids
        (then each sequence's own abstention share holds alone)."""
        from taalm_dist.familiarity import CORPUS_MAX_N

        if self.weigher.familiarity is None or dataset is None or not hasattr(dataset, "__len__") or not len(dataset):
            return None
        step = max(1, len(dataset) // CORPUS_MAX_N)
        rows = [dataset[i] for i in range(0, len(dataset), step)][:CORPUS_MAX_N]
        if not all(isinstance(r, dict) and "input_ids" in r for r in rows):
            return None
        ids = [[int(t) for t, m in zip(r["input_ids"], r.get("attention_mask", [1] * len(r["input_ids"]))) if int(m)]
               for r in rows]  # padding left out
        return self.weigher.set_corpus([x for x in ids if x])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.weigher.device != inputs["input_ids"].device:
            self.weigher.to(inputs["input_ids"].device)
        w = self.weigher.weights(inputs["input_ids"], inputs["attention_mask"])
        loss = token_weighted_loss(model, inputs, w, self._per_token_loss)
        return (loss, {"loss": loss}) if return_outputs else loss
