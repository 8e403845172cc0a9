"""Whether φ knows a document, and how much of its weight it gives up where it does not (abstention).

A meta-trained φ is only as good as the documents it was meta-trained on: on another kind of document it can be
confidently wrong (RESULTS.md: the LAMA-trained φ puts 92–100 % of its weight on one distractor per synthetic
paragraph, as sharply as on LAMA documents — the shape of its weights cannot tell). What can tell is what φ's
backbone sees. The **familiarity distance** of a document (or window) is the Mahalanobis distance of its φ feature
— the last hidden state of φ's backbone averaged over the document's real tokens, computed in the same pass as the
weights (:func:`~taalm_dist.models.train_attention.pooled_features`) — from the features of φ's meta-training
documents: ``d = sqrt((f − μ)ᵀ P (f − μ) / H)`` with μ their mean and ``P`` the inverse of their covariance shrunk
a tenth toward its diagonal (``SHRINK``; H features, so that a document like them has ``d`` of order 1).

The **abstention share** moves a document toward uniform weights (fine-tuning's) as ``d`` grows:
``a = clip((d − known) / (unknown − known), 0, 1)``, applied with :func:`taalm_dist.weight_rules.mix_uniform`
(scale-free: ``a`` of the document's loss is fine-tuning's, the rest φ's). Both thresholds come from φ's own data:

- ``known``: the 99th percentile of the distances of documents of φ's kind that the fit did not see — its
  validation documents and, by 5-fold cross-validation, its meta-training documents (each measured by a fit on the
  other four fifths). Ninety-nine in a hundred documents of φ's kind keep φ's weights whole. (It was the 90th
  percentile until 2026-12-07: one in ten of φ's own documents then lost φ's weights by construction — on LAMA-CKL
  with seed 0's φ, 82 of 804 passes were uniform and Top Acc fell from 3.1× to 2.8× fine-tuning's — while
  documents truly unlike φ's lie far beyond either: German and code at 4.1–5.7 against 2.8 for the 99th percentile
  of the synthetic benchmark's own, tests/integration/test_familiarity_smollm2.py's setting. A corpus of another
  kind that lies close, as the synthetic benchmark does to a LAMA-trained φ, is the corpus rule's to catch.)
- ``unknown``: the 10th percentile of the distances of the same held-out documents with their tokens shuffled —
  the one kind of document unlike φ's that any data provides (same words, no sense). Nine in ten of them get
  uniform weights; a document farther from φ's kind than they are gets them too. Where shuffling moves the
  documents less than the spread of φ's own kind (``unknown`` ≤ ``known`` · (1 + ``MIN_GAP``)), ``unknown`` is
  ``known`` · (1 + ``MIN_GAP``).

**A corpus as a whole.** One document's distance is a noisy witness: the tails of φ's own kind and of another kind
overlap (a LAMA-trained φ's record: its own unseen documents reach 1.05 at their 90th percentile, the synthetic
benchmark's paragraphs start at 1.02), so the per-document rule leaves a third of a foreign corpus with some of φ's
weights. The documents a user learns come as a set, and the set's **median** distance is a far sharper witness
(RESULTS.md, 2026-12-07). Its thresholds come from the same held-out distances of φ's own kind (``own``, kept in
the record): ``known_n`` is the 90th percentile of the medians of ``n`` documents drawn from them (a corpus of ``n``
documents of φ's kind has a median below it nine times in ten), ``unknown_n`` is the 90th percentile of the same
distances (a corpus whose typical document is as far as the farthest tenth of φ's own is not of its kind), at least
``known_n`` · (1 + ``MIN_GAP``). The **corpus share** ``clip((median − known_n) / (unknown_n − known_n), 0, 1)`` is a floor
under every document's own share (:meth:`Familiarity.corpus`): a foreign corpus is learnt by fine-tuning, a
corpus of φ's kind keeps the per-document rule (which still gives up on the odd foreign document in it). A single
document is weak evidence either way: as a corpus of one it is judged at the 90th percentile, erring toward
fine-tuning.

The record is ``familiarity.json`` (thresholds, what it was made from, the fingerprint of the φ it was made for) and
``familiarity.safetensors`` (μ, P and ``own``) in the φ directory; a record that does not match its φ's files is
refused, since another φ's features are another space.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from taalm_dist.errors import ModelError
from taalm_dist.models.train_attention import FAMILIARITY_FILES

RECORD, TENSORS = FAMILIARITY_FILES
"""The record's file names inside a φ directory (JSON, and its tensors)."""
FORMAT = 2
"""The record's format this version writes and reads (1 had no ``own`` distances: no corpus rule)."""
SHRINK = 0.1
"""The covariance is shrunk this far toward its diagonal (fewer documents than features: it must be invertible)."""
KNOWN_QUANTILE, UNKNOWN_QUANTILE = 0.99, 0.1
"""``known``: this quantile of held-out documents of φ's kind; ``unknown``: this one of their shuffled versions."""
CORPUS_QUANTILE = 0.9
"""The corpus rule: ``known_n`` is this quantile of the medians of ``n`` held-out documents of φ's kind, ``unknown_n``
this quantile of the documents themselves."""
MIN_GAP = 0.1
"""``unknown`` is at least ``known`` · (1 + this)."""
FOLDS = 5
"""Cross-validation folds over the meta-training documents."""
CORPUS_DRAWS, CORPUS_MAX_N = 2000, 2000
"""``known_n``: medians of this many random corpora of ``min(n, CORPUS_MAX_N)`` held-out distances (a fixed seed;
beyond 2000 documents the median's spread no longer matters)."""


def _fit_gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ ``[H]`` and the shrunk precision ``[H, H]`` of ``[N, H]`` features (float64 inside, float32 out)."""
    x = features.double()
    mu = x.mean(0)
    c = (x - mu).T @ (x - mu) / max(len(x) - 1, 1)
    diag = torch.diag(torch.diag(c))
    floor = max(float(diag.diagonal().mean()), 1e-12)  # features that never vary must not make it singular
    c = (1 - SHRINK) * c + SHRINK * diag + 1e-8 * floor * torch.eye(len(mu), dtype=c.dtype)
    return mu.float(), torch.linalg.inv(c).float()


def _distance(features: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    z = features.float() - mu
    return ((z @ precision) * z).sum(-1).clamp_min(0).div(len(mu)).sqrt()


@dataclass
class Familiarity:
    """φ's familiarity record (module docstring): ``mean`` ``[H]``, ``precision`` ``[H, H]``, the thresholds
    ``known`` < ``unknown`` (distances), ``phi_fingerprint`` (the SHA-256 of the φ files it belongs to),
    ``source`` (what it was made from, and the distances it was calibrated on) and ``own`` ``[M]``."""

    mean: torch.Tensor
    precision: torch.Tensor
    known: float
    unknown: float
    phi_fingerprint: dict
    source: dict
    own: torch.Tensor
    """``[M]`` distances of held-out documents of φ's kind (cross-validated), the corpus rule's reference."""

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]`` familiarity distances of ``[B, H]`` pooled features (the record moves to their device once)."""
        if self.precision.device != features.device:
            self.mean, self.precision = self.mean.to(features.device), self.precision.to(features.device)
        return _distance(features, self.mean, self.precision)

    def share(self, distance: torch.Tensor) -> torch.Tensor:
        """``[B]`` abstention shares in [0, 1] for ``[B]`` distances (0: φ's weights; 1: uniform)."""
        return ((distance - self.known) / (self.unknown - self.known)).clamp(0.0, 1.0)

    def corpus(self, distances: torch.Tensor) -> dict:
        """The corpus rule (module docstring) for the ``[N]`` distances of the documents learnt together: ``n``, their
        ``median``, the thresholds ``known_n`` < ``unknown_n`` for ``n`` documents, and ``share`` in [0, 1], the
        abstention share every one of them gets at least."""
        d = distances.detach().double().cpu()
        n = len(d)
        if n == 0:
            return {"n": 0, "median": None, "known_n": None, "unknown_n": None, "share": 0.0}
        own = self.own.double().cpu()
        draws = torch.randint(len(own), (CORPUS_DRAWS, min(n, CORPUS_MAX_N)),
                              generator=torch.Generator().manual_seed(0))
        known_n = _q(own[draws].median(dim=1).values, CORPUS_QUANTILE)
        unknown_n = max(_q(own, CORPUS_QUANTILE), known_n * (1 + MIN_GAP))
        median = float(d.median())
        share = min(max((median - known_n) / (unknown_n - known_n), 0.0), 1.0)
        return {"n": n, "median": round(median, 4), "known_n": round(known_n, 4), "unknown_n": round(unknown_n, 4),
                "share": share}

    def save(self, phi_dir: str | Path) -> Path:
        """Write the record into ``phi_dir`` (tensors first, then the JSON that names them; each atomically);
        returns the JSON's path."""
        from safetensors.torch import save_file

        from taalm_dist.integrity import file_sha256, write_atomic

        d = Path(phi_dir)
        tmp = d / f".{TENSORS}.tmp"
        save_file({"mean": self.mean.cpu().contiguous(), "precision": self.precision.cpu().contiguous(),
                   "own": self.own.float().cpu().contiguous()}, str(tmp))
        tmp.replace(d / TENSORS)
        meta = {"format": FORMAT, "phi_fingerprint": self.phi_fingerprint, "known": self.known,
                "unknown": self.unknown, "tensors_sha256": file_sha256(d / TENSORS), "source": self.source}
        write_atomic(d / RECORD, json.dumps(meta, indent=1) + "\n")
        return d / RECORD

    @classmethod
    def load(cls, phi_dir: str | Path) -> "Familiarity | None":
        """The record of the φ in ``phi_dir`` (None when it has none).

        Raises:
            ModelError: the record is unreadable, of another format, damaged, not finite, or made for another φ
                (its fingerprint is not the φ files').
        """
        from safetensors.torch import load_file

        from taalm_dist.integrity import file_sha256
        from taalm_dist.models.train_attention import phi_fingerprint

        d = Path(phi_dir)
        path = d / RECORD
        if not path.is_file():
            return None
        remake = f"remake it with `taalm phi familiarity {phi_dir} --train ... --heldout ... --overwrite`"
        try:
            meta = json.loads(path.read_text())
            if meta.get("format") != FORMAT:
                raise ModelError(f"{path}: format {meta.get('format')!r}, this version reads {FORMAT}; {remake}")
            if file_sha256(d / TENSORS) != meta["tensors_sha256"]:
                raise ModelError(f"{d / TENSORS} differs from what its record names (SHA-256); {remake}")
            t = load_file(str(d / TENSORS))
            rec = cls(t["mean"].float(), t["precision"].float(), float(meta["known"]), float(meta["unknown"]),
                      dict(meta["phi_fingerprint"]), dict(meta.get("source", {})), t["own"].float())
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{path}: unreadable familiarity record ({type(e).__name__}: {e}); {remake}") from None
        if rec.phi_fingerprint != phi_fingerprint(phi_dir):
            raise ModelError(f"{path} was made for another φ (its weights or config changed since): a φ's features "
                             f"are its own; {remake}")
        if not (math.isfinite(rec.known) and math.isfinite(rec.unknown) and rec.unknown > rec.known
                and torch.isfinite(rec.mean).all() and torch.isfinite(rec.precision).all() and len(rec.own) >= 2
                and torch.isfinite(rec.own).all()):
            raise ModelError(f"{path}: non-finite or inconsistent values (known {rec.known}, unknown {rec.unknown}); "
                             f"{remake}")
        return rec


def describe_corpus(corpus: dict) -> str:
    """One line for users: the corpus rule's verdict (:meth:`Familiarity.corpus`) in words."""
    c = corpus
    verdict = ("φ's kind: each document keeps its own share" if c["share"] == 0 else
               "not φ's kind: uniform weights (fine-tuning's) on every document" if c["share"] >= 1 else
               f"partly unlike φ's kind: at least {c['share']:.0%} of every document's weight is uniform")
    return (f"φ's familiarity: the {c['n']} documents' median distance {c['median']:.3f} (φ's kind ≤ "
            f"{c['known_n']:.3f}, unlike it ≥ {c['unknown_n']:.3f}) — {verdict}")


def _q(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def _summary(d: torch.Tensor) -> dict:
    return {"n": len(d), "min": float(d.min()), "median": _q(d, 0.5), "q90": _q(d, 0.9), "q99": _q(d, 0.99),
            "max": float(d.max())}


def fit_familiarity(train: torch.Tensor, heldout: torch.Tensor, shuffled: torch.Tensor, phi_fingerprint: dict,
                    source: dict) -> Familiarity:
    """The record (module docstring) from ``[N, H]`` pooled features of φ's meta-training documents, ``[M, H]`` of
    held-out documents of the same kind and ``[S, H]`` of those documents with their tokens shuffled.

    Raises:
        ModelError: fewer than ``FOLDS`` meta-training documents or fewer than 2 held-out ones.
    """
    if len(train) < FOLDS or len(heldout) < 2 or len(shuffled) < 2:
        raise ModelError(f"a familiarity record needs ≥ {FOLDS} meta-training and ≥ 2 held-out documents (got "
                         f"{len(train)} and {len(heldout)})")
    mean, precision = _fit_gaussian(train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    cv = []
    for k in range(FOLDS):  # each meta-training document measured by a fit that did not see it
        out = order[k::FOLDS]
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[out] = False
        cv.append(_distance(train[out], *_fit_gaussian(train[keep])))
    own = torch.cat([torch.cat(cv), _distance(heldout, mean, precision)])
    negative = _distance(shuffled, mean, precision)
    known = _q(own, KNOWN_QUANTILE)
    unknown = max(_q(negative, UNKNOWN_QUANTILE), known * (1 + MIN_GAP))
    if not unknown > known:
        raise ModelError("φ's features do not tell documents apart (its own held-out documents and their shuffled "
                         f"versions all lie at distance {known:.3g}): no familiarity record can be made from them; "
                         "give documents that differ, or run φ without abstention")
    source = {**source, "own_kind": _summary(own), "shuffled": _summary(negative), "shrink": SHRINK,
              "known_quantile": KNOWN_QUANTILE, "unknown_quantile": UNKNOWN_QUANTILE, "min_gap": MIN_GAP,
              "corpus_quantile": CORPUS_QUANTILE}
    return Familiarity(mean, precision, known, unknown, phi_fingerprint, source, own.float())


def shuffled_tokens(docs: list[list[int]], seed: int = 0) -> list[list[int]]:
    """Each document with its tokens after the first in a random order (the first, often a special token, stays)."""
    rng = random.Random(seed)
    return [d[:1] + rng.sample(d[1:], len(d) - 1) for d in docs]


@torch.no_grad()
def phi_features(phi: torch.nn.Module, docs: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """``[N, H]`` pooled features (:func:`~taalm_dist.models.train_attention.pooled_features`) of token-id lists
    ``docs`` under ``phi`` (a :class:`~taalm_dist.models.train_attention.TrainAttention`, on its own device)."""
    from taalm_dist.data import pad_batch

    device = next(phi.parameters()).device
    out = []
    for s in range(0, len(docs), batch_size):
        batch = pad_batch(docs[s : s + batch_size], pad_id)
        _, f = phi(batch["input_ids"].to(device), batch["attention_mask"].to(device), features=True)
        out.append(f.float().cpu())
    return torch.cat(out)


def distinct(docs: list[list[int]]) -> list[list[int]]:
    """``docs`` (token-id lists) without repeats, in their first order."""
    return [list(d) for d in dict.fromkeys(tuple(d) for d in docs)]


def make_familiarity(phi_dir: str | Path, train_docs: list[list[int]], heldout_docs: list[list[int]], source: dict,
                     max_docs: int = 1024) -> Familiarity:
    """The record of the φ saved in ``phi_dir`` from token ids of its meta-training documents (the first
    ``max_docs`` distinct ones) and of held-out documents of the same kind (module docstring); not saved. A document
    given more than once — a pairs file repeats it for each of its tasks — counts once: a copy of a document in the
    fit that measures it would put φ's own kind closer than it is, and the thresholds with it."""
    from taalm_dist.models import load_phi
    from taalm_dist.models.train_attention import load_phi_tokenizer, phi_fingerprint

    phi = load_phi(phi_dir, device=torch.device("cpu")).eval()
    pad = load_phi_tokenizer(phi_dir).pad_token_id or 0
    train, heldout = distinct(train_docs)[:max_docs], distinct(heldout_docs)[:max_docs]
    negatives = shuffled_tokens(heldout + train[: max(0, 64 - len(heldout))])
    source = {**source, "train_docs": len(train), "heldout_docs": len(heldout)}
    return fit_familiarity(phi_features(phi, train, pad), phi_features(phi, heldout, pad),
                           phi_features(phi, negatives, pad), phi_fingerprint(phi_dir), source)


def document_ids(path: str | Path, tokenizer, kind: str = "docs", text_field: str = "text",
                 max_tokens: int = 512) -> list[list[int]]:
    """Token ids (at most ``max_tokens`` each, the first window) of the documents in ``path``: ``kind`` ``pairs`` — a
    meta-training file (each pair's document; :func:`taalm_dist.data.load_pairs`) — or ``docs`` — what ``taalm learn
    --docs`` reads (:func:`taalm_dist.data.documents.load_documents`)."""
    if kind == "pairs":
        from taalm_dist.data import load_pairs

        texts = [p.document for p in load_pairs(path, skip_bad_rows=True)[0]]
    else:
        from taalm_dist.data.documents import load_documents

        texts = [d.text for d in load_documents(path, text_field)]
    return [list(tokenizer(t, add_special_tokens=True)["input_ids"])[:max_tokens] for t in texts]
