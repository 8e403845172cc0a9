"""A trained φ as a tool: the token weights of any text (``TokenWeigher``, ``taalm weigh``).

>>> from taalm_dist import TokenWeigher
>>> weigher = TokenWeigher.load("runs/meta_train/phi")
>>> [doc] = weigher.weigh(["Mira Olsen was born in Tallinn."])
>>> list(zip(doc.tokens, doc.weights))   # the weight of θ's loss on each token
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from taalm_dist.data import pad_batch
from taalm_dist.errors import ConfigError, ModelError


@dataclass
class WeightedTokens:
    """φ's weights for one text. ``weights[i]`` weighs θ's loss of predicting ``ids[i]`` (the first token's is
    never used: nothing predicts it)."""

    ids: list[int]
    tokens: list[str]
    weights: list[float]
    text: str | None = None
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.meta, "tokens": self.tokens, "ids": self.ids, "weights": self.weights}


class TokenWeigher:
    """A trained φ (a ``phi/`` directory) with its tokenizer, on one device, frozen. ``floor``: every real token's
    weight is at least this; ``uniform_share``: this share of each text's weight is spread uniformly, the rest is φ's
    rescaled to mean 1 (:func:`~taalm_dist.weight_rules.applied_phi_weights`; both 0: φ's own weights);
    ``familiarity``: φ's record, with which each text φ does not know gets its abstention share of uniform weight
    (:mod:`taalm_dist.familiarity`; :meth:`load` reads it from the φ directory)."""

    def __init__(self, phi: torch.nn.Module, tokenizer, device: torch.device | str = "cpu", floor: float = 0.0,
                 uniform_share: float = 0.0, familiarity=None):
        from taalm_dist.weight_rules import PhiWeights

        for name, value, why in (("floor", floor, "φ's weights are in (0, 1)"),
                                 ("uniform_share", uniform_share, "a share of each text's weight")):
            if not 0.0 <= value <= 1.0:
                raise ModelError(f"{name}={value} must be in [0, 1] ({why})")
        self.floor, self.uniform_share = floor, uniform_share
        self.device = torch.device(device)
        self.phi = phi.to(self.device).eval()
        for p in self.phi.parameters():
            p.requires_grad_(False)
        self.rule = PhiWeights(self.phi, floor, uniform_share, familiarity)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id or 0

    @property
    def familiarity(self):
        """φ's :class:`~taalm_dist.familiarity.Familiarity` record when it abstains, else None."""
        return self.rule.familiarity

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", floor: float = 0.0,
             uniform_share: float = 0.0, abstain: bool = True) -> "TokenWeigher":
        """Load the φ saved in ``path`` (``phi.safetensors`` + ``phi_config.json``) and the tokenizer of its backbone;
        ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ``floor`` and ``uniform_share``
        as in the class; ``abstain``: apply φ's familiarity record (``familiarity.json``, when the φ has one: each
        text φ does not know gets uniform weights, :mod:`taalm_dist.familiarity`)."""
        from taalm_dist.familiarity import Familiarity

        from taalm_dist.engine.runtime import resolve_device
        from taalm_dist.models import load_phi
        from taalm_dist.models.train_attention import load_phi_tokenizer

        if device in ("auto", "cpu", "cuda"):
            dev = resolve_device(device)
        else:
            try:
                dev = torch.device(device)
            except RuntimeError:
                raise ConfigError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N") from None
        phi = load_phi(path, device=dev)
        familiarity = Familiarity.load(path) if abstain else None
        return cls(phi, load_phi_tokenizer(path), dev, floor=floor, uniform_share=uniform_share, familiarity=familiarity)

    def to(self, device: torch.device | str) -> "TokenWeigher":
        """Move φ to ``device`` (where the weights are computed); returns self."""
        self.device = torch.device(device)
        self.phi.to(self.device)
        return self

    def check_tokenizer(self, tokenizer, name: str = "the model") -> None:
        """Refuse a tokenizer that gives token ids other meanings than φ's (the weights index θ's tokens)."""
        from taalm_dist.models import check_same_tokenizer

        check_same_tokenizer(tokenizer, self.tokenizer, name, "φ")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as θ learns it (the tokenizer's special tokens included)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    @torch.no_grad()
    def weights(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` weights for a right-padded batch, on the inputs' device: φ's, in (0, 1), with the rules off;
        at least ``floor`` on real tokens; with a ``uniform_share`` or an abstention share (a text φ's familiarity
        record says it does not know), averaging 1 over each text's predicted tokens. 0 at padding. The last
        batch's familiarity distances and abstention shares: ``self.rule.last_distance`` / ``last_share``."""
        mask = attention_mask.to(self.device)
        return self.rule({"input_ids": input_ids.to(self.device), "attention_mask": mask}).to(input_ids.device)

    def _ids(self, texts) -> list[list[int]]:
        ids = [self.encode(t) if isinstance(t, str) else [int(i) for i in t] for t in texts]
        if any(len(x) == 0 for x in ids):
            raise ModelError("cannot weigh an empty text")
        return ids

    def set_corpus(self, texts: Sequence[str] | Sequence[Sequence[int]], batch_size: int = 8) -> dict | None:
        """Apply φ's corpus rule (:mod:`taalm_dist.familiarity`) to ``texts``, the documents (or token-id lists) that
        will be learnt together: from now on every text's abstention share is at least the corpus share. Returns the
        verdict (``n``, ``median``, ``known_n``, ``unknown_n``, ``share``); None when φ has no record."""
        if self.familiarity is None:
            return None
        distances = []
        for s in range(0, len(texts), batch_size):
            batch = pad_batch(self._ids(texts[s : s + batch_size]), self.pad_id)
            distances.append(self.rule.distances({k: v.to(self.device) for k, v in batch.items()}).cpu())
        return self.rule.set_corpus(torch.cat(distances) if distances else torch.zeros(0))

    def weigh(self, texts: str | Sequence[str] | Sequence[Sequence[int]], batch_size: int = 8,
              corpus: bool = False) -> list[WeightedTokens]:
        """φ's weight for every token of each text (or of each list of token ids), in order. ``corpus``: the texts are
        the documents learnt together — φ's corpus rule is set from them first (:meth:`set_corpus`), from the same
        φ forward that weighs them (φ's raw weights are held until every text's distance is known)."""
        if isinstance(texts, str):
            texts = [texts]
        batches = []
        for s in range(0, len(texts), batch_size):
            chunk = texts[s : s + batch_size]
            ids = self._ids(chunk)
            batch = {k: v.to(self.device) for k, v in pad_batch(ids, self.pad_id).items()}
            batches.append((chunk, ids, batch["attention_mask"], *self.rule.raw(batch)))
        if corpus and self.familiarity is not None:
            self.rule.set_corpus(torch.cat([b[4].cpu() for b in batches]) if batches else torch.zeros(0))
        out = []
        for chunk, ids, mask, raw, distance in batches:
            w = self.rule.apply(raw, mask, distance).float().cpu()
            for b, (t, x) in enumerate(zip(chunk, ids)):
                meta = {} if distance is None else {
                    "familiarity_distance": float(self.rule.last_distance[b]),
                    "abstain_share": float(self.rule.last_share[b])}
                out.append(WeightedTokens(x, [self.tokenizer.decode([i]) for i in x], w[b, : len(x)].tolist(),
                                          t if isinstance(t, str) else None, meta))
        return out


def weigh_documents(weigher: TokenWeigher, path: str | Path, text_field: str = "text", window_tokens: int = 512,
                    window_overlap: int = 64, batch_size: int = 8) -> list[WeightedTokens]:
    """φ's weights for every window of every document in ``path`` (any input of
    :func:`taalm_dist.data.documents.load_documents`), windowed as ``taalm learn`` learns them; each result's
    ``meta`` holds the document ``id``, the ``window`` index and ``context`` (leading tokens repeated from the
    previous window, whose loss ``taalm learn`` does not count). The windows are one corpus for φ's abstention
    (``weigh(..., corpus=True)``: one φ pass), as in ``taalm learn``."""
    from taalm_dist.data.documents import load_documents, token_windows

    windows, meta = [], []
    for doc in load_documents(path, text_field):
        for k, (ids, context) in enumerate(token_windows(weigher.encode(doc.text), window_tokens, window_overlap)):
            windows.append(ids)
            meta.append({"id": doc.id, "window": k, "context": context})
    out = weigher.weigh(windows, batch_size=batch_size, corpus=True)
    for w, m in zip(out, meta):
        w.meta = {**m, **w.meta}
    return out
