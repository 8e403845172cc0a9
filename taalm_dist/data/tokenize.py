"""Tokenise pairs and collate them into right-padded batches.

A document longer than ``max_doc_tokens`` is truncated (and counted) or refused, per config; a task longer
than ``max_task_tokens`` is refused (cutting it would cut off the object). ``doc_object_mask`` marks the
document's tokens that overlap a whole-word occurrence of the object (:func:`~taalm_dist.data.lama_ckl.object_spans`;
used by diagnostics and the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taalm_dist.data.lama_ckl import Pair, object_spans
from taalm_dist.errors import DataError


@dataclass
class TokenizedPair:
    """Token ids of one pair; ``label_mask[i] = 1`` where task token i is part of the object.
    ``doc_loss_mask`` (optional): 0 where the document token's loss must not count (context repeated from the
    previous window of a long document); ``None``: every token counts."""

    pair: Pair | None
    doc_ids: list[int]
    doc_object_mask: list[int]
    task_ids: list[int]
    label_mask: list[int]
    truncated: bool
    doc_loss_mask: list[int] | None = None


def encode_marked(tokenizer, text: str, spans: list[tuple[int, int]]):
    enc = tokenizer(text, return_offsets_mapping=True)
    mask = [int(any(s < e2 and e > s2 for s2, e2 in spans) and e > s) for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def tokenize_pair(tokenizer, pair: Pair, max_doc_tokens: int, max_task_tokens: int, on_long_doc: str) -> TokenizedPair:
    """Tokenise one pair (see module docstring); raise :class:`DataError` naming the row on bad input."""
    doc_ids, doc_mask = encode_marked(tokenizer, pair.document, object_spans(pair.document, pair.object))
    if len(doc_ids) < 2:
        raise DataError(f"{pair.source}: document has {len(doc_ids)} token(s); at least 2 are needed to learn from")
    truncated = len(doc_ids) > max_doc_tokens
    if truncated:
        if on_long_doc == "error":
            raise DataError(f"{pair.source}: document has {len(doc_ids)} tokens > data.max_doc_tokens="
                            f"{max_doc_tokens}; raise the limit or set data.on_long_doc=truncate")
        doc_ids, doc_mask = doc_ids[:max_doc_tokens], doc_mask[:max_doc_tokens]
    obj_start = len(pair.task) - len(pair.object)
    task_ids, label_mask = encode_marked(tokenizer, pair.task, [(obj_start, len(pair.task))])
    if len(task_ids) > max_task_tokens:
        raise DataError(f"{pair.source}: task has {len(task_ids)} tokens > data.max_task_tokens={max_task_tokens}")
    if not any(label_mask[1:]):
        raise DataError(f"{pair.source}: object {pair.object!r} has no predictable token in task {pair.task!r}")
    return TokenizedPair(pair, doc_ids, doc_mask, task_ids, label_mask, truncated)


def pad_batch(seqs: list[list[int]], pad_id: int, extra: dict[str, list[list[int]]] | None = None) -> dict:
    """Right-pad token lists into ``input_ids`` / ``attention_mask`` ``[B, L]`` (+ padded ``extra`` masks)."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    for name, rows in (extra or {}).items():
        t = torch.zeros((len(seqs), length), dtype=torch.long)
        for b, r in enumerate(rows):
            t[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        out[name] = t
    return out


def collate(items: list[TokenizedPair], pad_id: int) -> tuple[dict, dict]:
    """``(doc_batch, task_batch)``: doc has ``object_mask`` (and ``loss_mask`` when an item has a
    ``doc_loss_mask``); task has ``label_mask``."""
    extra = {"object_mask": [t.doc_object_mask for t in items]}
    if any(t.doc_loss_mask is not None for t in items):
        extra["loss_mask"] = [t.doc_loss_mask if t.doc_loss_mask is not None else [1] * len(t.doc_ids) for t in items]
    doc = pad_batch([t.doc_ids for t in items], pad_id, extra)
    task = pad_batch([t.task_ids for t in items], pad_id, {"label_mask": [t.label_mask for t in items]})
    return doc, task
