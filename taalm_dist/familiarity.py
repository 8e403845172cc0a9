"""Whether φ knows a document, and how much of its weight it gives up where it does not (abstention).

A meta-trained φ is only as good as the documents it was meta-trained on: on another kind of document it can be
confidently wrong (RESULTS.md: the LAMA-trained φ puts 92–100 % of its weight on one distractor per synthetic
paragraph, as sharply as on LAMA documents — the shape of its weights cannot tell). What can tell is what φ's
backbone sees: the **familiarity distance** of a document (or window) is how far its mean φ feature — the last
hidden state of φ's backbone averaged over the document's real tokens, computed in the same pass as the weights —
lies from those of φ's meta-training documents, as a root-mean-square z-score over the feature dimensions
(``d = sqrt(mean_k ((f_k − μ_k) / σ_k)²)``; μ, σ over the meta-training documents). A document like them has
``d`` near 1.

The **abstention share** moves a document toward uniform weights (fine-tuning's) as ``d`` grows:
``a = clip((d − known) / (unknown − known), 0, 1)``, applied with
:func:`taalm_dist.weight_rules.mix_uniform` (scale-free: ``a`` of the document's loss is fine-tuning's, the rest
φ's). ``known`` is the largest distance among held-out documents of φ's own kind (its validation documents): φ
keeps its weights on everything it was validated on; ``unknown`` is ``known`` plus ``margin`` times the spread of
those distances (their 90 % − 10 % quantile range), beyond which φ gives up its weights entirely.

The record (``familiarity.json`` in a φ directory) holds μ, σ, the thresholds, the documents it was made from and
the fingerprint of the φ it was made for (:func:`taalm_dist.models.train_attention.phi_fingerprint`): a record
that does not match its φ is refused, since another φ's features are another space.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from taalm_dist.errors import ModelError

RECORD = "familiarity.json"
"""The record's file name inside a φ directory."""
FORMAT = 1
"""The record's format this version writes and reads."""
MARGIN = 4.0
"""Default ``margin``: full abstention at ``known + MARGIN × spread`` (module docstring)."""
MIN_SCALE = 1e-4
"""Feature dimensions that hardly vary over the meta-training documents count as varying this much (no division
by zero; a constant dimension of φ's backbone says nothing about familiarity)."""


def pooled_features(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, H]`` float32 mean of ``hidden`` ``[B, L, H]`` over each row's real tokens (``attention_mask`` 1)."""
    m = attention_mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class Familiarity:
    """φ's familiarity record (module docstring). ``mean`` / ``scale``: ``[H]`` float32; ``known`` < ``unknown``:
    distances; ``phi_sha256``: the φ it belongs to; ``source``: what it was made from (documents, counts)."""

    mean: torch.Tensor
    scale: torch.Tensor
    known: float
    unknown: float
    phi_sha256: str
    source: dict

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]`` familiarity distance of ``[B, H]`` pooled features."""
        z = (features.float() - self.mean.to(features.device)) / self.scale.to(features.device)
        return z.pow(2).mean(-1).sqrt()

    def share(self, distance: torch.Tensor) -> torch.Tensor:
        """``[B]`` abstention share in [0, 1] for ``[B]`` distances (0: φ's weights; 1: uniform)."""
        return ((distance - self.known) / (self.unknown - self.known)).clamp(0.0, 1.0)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "phi_sha256": self.phi_sha256, "known": self.known, "unknown": self.unknown,
                "source": self.source, "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    def save(self, phi_dir: str | Path) -> Path:
        """Write the record into ``phi_dir`` (atomically); returns its path."""
        from taalm_dist.integrity import write_atomic

        path = Path(phi_dir) / RECORD
        write_atomic(path, json.dumps(self.as_dict()) + "\n")
        return path

    @classmethod
    def load(cls, phi_dir: str | Path, phi_sha256: str) -> "Familiarity | None":
        """The record of the φ in ``phi_dir`` (None when it has none).

        Raises:
            ModelError: the record is unreadable, of another format, not finite, or made for another φ
                (``phi_sha256`` is the loaded φ's fingerprint).
        """
        path = Path(phi_dir) / RECORD
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            rec = cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["scale"], dtype=torch.float32),
                      float(d["known"]), float(d["unknown"]), str(d["phi_sha256"]), dict(d.get("source", {})))
            fmt = d["format"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{path}: unreadable familiarity record ({type(e).__name__}: {e}); remake it with "
                             f"`taalm phi familiarity {phi_dir} --docs DOCS`") from None
        if fmt != FORMAT:
            raise ModelError(f"{path}: format {fmt!r}, this version reads {FORMAT}; remake it with "
                             f"`taalm phi familiarity {phi_dir} --docs DOCS`")
        if rec.phi_sha256 != phi_sha256:
            raise ModelError(f"{path} was made for another φ (sha256 {rec.phi_sha256[:12]}…, this φ is "
                             f"{phi_sha256[:12]}…): a φ's features are its own; remake it with "
                             f"`taalm phi familiarity {phi_dir} --docs DOCS`")
        finite = all(math.isfinite(x) for x in (rec.known, rec.unknown))
        if not finite or not torch.isfinite(rec.mean).all() or not (rec.scale > 0).all() or rec.unknown <= rec.known:
            raise ModelError(f"{path}: non-finite or inconsistent values (known {rec.known}, unknown {rec.unknown})")
        return rec


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def fit_familiarity(train_features: torch.Tensor, heldout_features: torch.Tensor, phi_sha256: str, source: dict,
                    margin: float = MARGIN) -> Familiarity:
    """The record from ``[N, H]`` pooled features of φ's meta-training documents (μ, σ) and ``[M, H]`` of held-out
    documents of the same kind (the thresholds; module docstring). Needs N ≥ 2 and M ≥ 2."""
    if train_features.shape[0] < 2 or heldout_features.shape[0] < 2:
        raise ModelError(f"familiarity needs ≥ 2 meta-training and ≥ 2 held-out documents (got "
                         f"{train_features.shape[0]} and {heldout_features.shape[0]})")
    mean = train_features.float().mean(0)
    scale = train_features.float().std(0).clamp_min(MIN_SCALE)
    rec = Familiarity(mean, scale, 0.0, 1.0, phi_sha256, source)
    d = rec.distance(heldout_features)
    spread = max(quantile(d, 0.9) - quantile(d, 0.1), 1e-3)
    rec.known = float(d.max())
    rec.unknown = rec.known + margin * spread
    rec.source = {**source, "heldout_distance": {"min": float(d.min()), "median": quantile(d, 0.5),
                                                 "max": float(d.max())}, "margin": margin}
    return rec
