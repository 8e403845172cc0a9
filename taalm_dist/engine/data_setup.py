"""From config to tokenised train/validation pairs, with counts of what was skipped or truncated."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from taalm_dist.config import DataConfig
from taalm_dist.data import TokenizedPair, load_pairs, tokenize_pair
from taalm_dist.errors import DataError


@dataclass
class PreparedData:
    """Tokenised pairs and what happened on the way."""

    train: list[TokenizedPair]
    val: list[TokenizedPair]
    skipped_rows: int = 0
    truncated_docs: int = 0
    notes: list[str] = field(default_factory=list)


def _tokenize_all(pairs, tokenizer, cfg: DataConfig, notes: list[str]) -> tuple[list[TokenizedPair], int]:
    out, skipped = [], 0
    for pair in pairs:
        try:
            out.append(tokenize_pair(tokenizer, pair, cfg.max_doc_tokens, cfg.max_task_tokens, cfg.on_long_doc))
        except DataError as e:
            if not cfg.skip_bad_rows:
                raise DataError(f"{e} — or pass data.skip_bad_rows=true to skip such rows") from None
            skipped += 1
            if len(notes) < 5:
                notes.append(str(e))
    return out, skipped


def prepare_data(cfg: DataConfig, tokenizer, val_docs: int, seed: int) -> PreparedData:
    """Load, validate and tokenise ``cfg.train_file`` (and ``val_file``, or hold out ``val_docs`` pairs)."""
    if not cfg.train_file:
        raise DataError("data.train_file is not set: pass a LAMA-CKL-schema jsonl (e.g. from `taalm data toy`)")
    notes: list[str] = []
    pairs, report = load_pairs(cfg.train_file, cfg.task_field, cfg.skip_bad_rows)
    notes += report.reasons or []
    skipped = report.skipped
    if cfg.val_file:
        val_pairs, vreport = load_pairs(cfg.val_file, cfg.task_field, cfg.skip_bad_rows)
        skipped += vreport.skipped
    else:
        pairs = list(pairs)
        random.Random(seed).shuffle(pairs)
        if val_docs >= len(pairs):
            raise DataError(f"{cfg.train_file}: {len(pairs)} pairs cannot hold out train.val_docs={val_docs} "
                            "for validation; lower train.val_docs or give data.val_file")
        val_pairs, pairs = pairs[:val_docs], pairs[val_docs:]
    train, s1 = _tokenize_all(pairs, tokenizer, cfg, notes)
    val, s2 = _tokenize_all(val_pairs, tokenizer, cfg, notes)
    if not train:
        raise DataError(f"{cfg.train_file}: no pair survived tokenisation ({s1} skipped)")
    truncated = sum(t.truncated for t in train + val)
    return PreparedData(train, val, skipped + s1 + s2, truncated, notes)
