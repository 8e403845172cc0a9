"""``taalm ckl build``: tailor LAMA-CKL to a model and split it into evaluation and meta-training data.

Score the model on every row (object-token accuracy of the task sentence, :mod:`taalm_dist.ckl.metrics`).
The **evaluation rows** are chosen by a recorded rule (:class:`EvalSelection`, written to ``build.json``):
To-Learn = variant rows the model does not fully know (accuracy < ``to_learn_below``), optionally only
those with evidence of at most ``max_evidence_chars`` characters, the first ``to_learn`` of them in file
order (or in a seeded shuffle); Not-To-Forget = invariant_descriptive rows it fully knows, the first
``not_to_forget``. Everything else may teach φ. The **meta-training pairs** come from one of three sources:

* ``in_distribution`` — facts the model does not know from the same relations as the test: the variant
  rows not chosen for evaluation plus the invariant_descriptive rows with accuracy < 1 (the authors'
  recipe: same relations, other facts);
* ``invariant_schematic`` — invariant_schematic rows that are not evaluation rows (this project's first
  choice: mostly facts the model knows; kept for the ablation);
* ``auto`` (default) — the directory's own ``meta_train.jsonl`` when it has one (``taalm data synth``
  writes it), else ``in_distribution``.

No meta-training or validation pair shares a ``uuid`` or a ``(subject, relation_code)`` with an evaluation
row (:func:`check_disjoint` re-checks the written files). ``meta_val`` pairs — preferably variant rows,
which look like the test — are held out as ``meta_val.jsonl`` for φ's validation, disjoint from
``meta_train.jsonl`` by the same keys. Invariant rows the model knows that are not evaluation rows are
written as ``replay.jsonl`` (old knowledge for mix_review). Also written: ``to_learn.jsonl``,
``not_to_forget.jsonl`` (the evaluation rows), ``scores.jsonl`` (uuid, file, accuracy) and ``build.json``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from taalm_dist.ckl.data import load_rows, report_line, require_files, tokenized_tasks
from taalm_dist.data import pad_batch, write_pairs
from taalm_dist.data.jsonl_file import jsonl_lines
from taalm_dist.data.order import DOC_STRIDE, shuffled
from taalm_dist.errors import DataError
from taalm_dist.losses.accuracy import object_token_accuracy

LogitsFn = Callable[[dict], torch.Tensor]
"""``fn(batch) -> [B, L, V]`` logits for a right-padded batch of ``input_ids`` / ``attention_mask``."""

META_SOURCES = ("auto", "in_distribution", "invariant_schematic")


@dataclass(frozen=True)
class EvalSelection:
    """The rule that picks the evaluation rows (recorded in ``build.json``).

    Attributes:
        to_learn: number of To-Learn rows (None: every candidate).
        not_to_forget: number of Not-To-Forget rows (None: every candidate).
        max_evidence_chars: To-Learn candidates need evidence of at most this many characters (None: any).
        order: ``file`` (the first rows in file order) or ``shuffle`` (a shuffle seeded by ``seed``).
        seed: seed of the shuffle and of the meta-validation split.
    """

    to_learn: int | None = None
    not_to_forget: int | None = None
    max_evidence_chars: int | None = None
    order: str = "file"
    seed: int = 0

    def __post_init__(self):
        if self.order not in ("file", "shuffle"):
            raise DataError(f"--eval-order {self.order!r}: use file or shuffle")
        for name in ("to_learn", "not_to_forget", "max_evidence_chars"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"--eval-{name.replace('_', '-')}={value}: must be at least 1 (or omitted for all)")

    def pick(self, rows: list[dict], n: int | None, salt: int) -> list[dict]:
        """The first ``n`` of ``rows`` in this rule's order (``salt`` separates the two sets' shuffles)."""
        rows = shuffled(rows, self.seed, salt, DOC_STRIDE) if self.order == "shuffle" else list(rows)
        return rows if n is None else rows[:n]


def fact_keys(row: dict) -> set[tuple]:
    """The keys under which two rows are the same fact: ``uuid`` and ``(subject, relation_code)``."""
    keys = {("uuid", str(row.get("uuid")))} if row.get("uuid") is not None else set()
    if row.get("subject") is not None and row.get("relation_code") is not None:
        keys.add(("subject_relation", str(row["subject"]).strip().lower(), str(row["relation_code"])))
    return keys


def _keys(rows: list[dict]) -> set[tuple]:
    return set().union(*(fact_keys(r) for r in rows)) if rows else set()


def _excluding(rows: list[dict], blocked: set[tuple]) -> list[dict]:
    return [r for r in rows if not (fact_keys(r) & blocked)]


def check_disjoint(out_dir: str | Path, evaluation=("to_learn.jsonl", "not_to_forget.jsonl"),
                   teaching=("meta_train.jsonl", "meta_val.jsonl")) -> None:
    """Raise :class:`DataError` if a teaching file shares a ``uuid`` or ``(subject, relation_code)`` with an
    evaluation file, or the two teaching files share one, in a ``ckl build`` output."""
    out = Path(out_dir)
    read = lambda name: [line.row() for line in jsonl_lines(out / name)] if (out / name).is_file() else []
    blocked = _keys([r for name in evaluation for r in read(name)])
    for name in teaching:
        clash = _keys(read(name)) & blocked
        if clash:
            raise DataError(f"{out / name} shares {len(clash)} fact key(s) with the evaluation rows, e.g. "
                            f"{sorted(clash)[0]}: φ would be taught the test")
    if len(teaching) == 2:
        clash = _keys(read(teaching[0])) & _keys(read(teaching[1]))
        if clash:
            raise DataError(f"{out / teaching[0]} and {out / teaching[1]} share {len(clash)} fact key(s), e.g. "
                            f"{sorted(clash)[0]}: validation would not be held out")


def split_validation(rows: list[dict], n: int, seed: int, prefer: set[str]) -> tuple[list[dict], list[dict]]:
    """``(train, val)``: ``n`` rows for validation, drawn (seeded) from the rows whose uuid is in ``prefer``
    first; a row sharing a fact key with a validation row leaves training too."""
    if n <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed * 7919 + 17).shuffle(order)
    order.sort(key=lambda i: str(rows[i].get("uuid")) not in prefer)  # stable: preferred rows first
    val_idx = set(order[:n])
    val = [rows[i] for i in sorted(val_idx)]
    train = _excluding([r for i, r in enumerate(rows) if i not in val_idx], _keys(val))
    return train, val


def score_tasks(logits_fn: LogitsFn, tasks, pad_id: int, batch_size: int = 16, desc: str = "score",
                progress: bool = True) -> list[float]:
    """Object-token accuracy of every task of a tokenised dataset (``input_ids``, ``label_mask``)."""
    order = sorted(range(len(tasks)), key=lambda i: len(tasks[i]["input_ids"]))  # less padding
    out = [0.0] * len(tasks)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        idx = order[start : start + batch_size]
        rows = [tasks[i] for i in idx]
        batch = pad_batch([r["input_ids"] for r in rows], pad_id, {"label_mask": [r["label_mask"] for r in rows]})
        acc = object_token_accuracy(logits_fn(batch), batch["input_ids"], batch["attention_mask"], batch["label_mask"])
        for i, a in zip(idx, acc.tolist()):
            out[i] = a
    return out


def build(logits_fn: LogitsFn, tokenizer, data_dir: str | Path, out_dir: str | Path, *, task_field: str = "task_descriptive",
          to_learn_below: float = 1.0, skip_bad_rows: bool = False, limit: int | None = None, batch_size: int = 16,
          max_task_tokens: int = 128, model_name: str = "", progress: bool = True,
          selection: EvalSelection | None = None, meta_source: str = "auto", meta_val: int = 0) -> dict:
    """Tailor the LAMA-CKL files in ``data_dir`` to the model behind ``logits_fn`` and split them; see the
    module docstring. ``meta_val``: pairs held out as ``meta_val.jsonl`` (at most a quarter of the pool).
    Returns the ``build.json`` dict."""
    selection = selection or EvalSelection()
    if meta_source not in META_SOURCES:
        raise DataError(f"--meta-source {meta_source!r}: use one of {', '.join(META_SOURCES)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"--out {out} is not empty; choose a new directory (nothing is overwritten)")
    paths = require_files(data_dir)
    pad_id = tokenizer.pad_token_id or 0
    loaded, scores = {}, {}
    for name, path in paths.items():
        rows, pairs, report = load_rows(path, task_field, skip_bad_rows, limit)
        loaded[name] = (rows, pairs, report)
        if name != "invariant_schematic":
            tasks = tokenized_tasks(pairs, tokenizer, max_task_tokens)
            scores[name] = score_tasks(logits_fn, tasks, pad_id, batch_size, desc=f"score {name}", progress=progress)
    v_rows, v_pairs, _ = loaded["variant"]
    i_rows, i_pairs, _ = loaded["invariant_descriptive"]
    unknown_v = [r for r, s in zip(v_rows, scores["variant"]) if s < to_learn_below]
    known_i = [r for r, s in zip(i_rows, scores["invariant_descriptive"]) if s == 1.0]
    unknown_i = [r for r, s in zip(i_rows, scores["invariant_descriptive"]) if s < 1.0]
    limit_chars = selection.max_evidence_chars
    candidates = [r for r, p, s in zip(v_rows, v_pairs, scores["variant"])
                  if s < to_learn_below and (limit_chars is None or len(p.document) <= limit_chars)]
    to_learn = selection.pick(candidates, selection.to_learn, salt=1)
    keep_nf = selection.pick(known_i, selection.not_to_forget, salt=2)
    blocked = _keys(to_learn + keep_nf)

    source = meta_source
    if source == "auto":
        source = "file" if (Path(data_dir) / "meta_train.jsonl").is_file() else "in_distribution"
    if source == "file":  # the synthetic benchmark's own meta-training pairs (`taalm data synth`)
        loaded["meta_train"] = load_rows(Path(data_dir) / "meta_train.jsonl", task_field, skip_bad_rows)
        pool = loaded["meta_train"][0]
    elif source == "invariant_schematic":
        pool = loaded["invariant_schematic"][0]
    else:
        pool = unknown_v + unknown_i
    pool = _excluding(pool, blocked)
    variant_uuids = {str(r.get("uuid")) for r in unknown_v}
    n_val = min(meta_val, len(pool) // 4)  # a small pool keeps at least three quarters for training
    meta, val = split_validation(pool, n_val, selection.seed, prefer=variant_uuids)
    replay = _excluding(known_i, blocked)

    out.mkdir(parents=True, exist_ok=True)
    files = {"to_learn.jsonl": to_learn, "not_to_forget.jsonl": keep_nf, "meta_train.jsonl": meta,
             "replay.jsonl": replay}
    if meta_val:
        files["meta_val.jsonl"] = val
    for name, rows in files.items():
        write_pairs(rows, out / name)
    check_disjoint(out)
    score_rows = [{"uuid": p.uid, "file": name, "accuracy": s}
                  for name, ps in (("variant", v_pairs), ("invariant_descriptive", i_pairs))
                  for p, s in zip(ps, scores[name])]
    write_pairs(score_rows, out / "scores.jsonl")
    count = lambda rows, uuids: sum(str(r.get("uuid")) in uuids for r in rows)
    summary = {
        "model": model_name, "data_dir": str(data_dir), "task_field": task_field, "to_learn_below": to_learn_below,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "to_learn": len(to_learn), "not_to_forget": len(keep_nf),
        "meta_train": len(meta), "meta_val": len(val), "meta_val_requested": meta_val, "replay": len(replay),
        "evaluation_rule": {**asdict(selection), "to_learn_candidates": len(candidates),
                            "not_to_forget_candidates": len(known_i)},
        "meta_source": source,
        "meta_train_from_variant": count(meta, variant_uuids), "meta_val_from_variant": count(val, variant_uuids),
        "loaded": {n: report_line(n, rep) for n, (_, _, rep) in loaded.items()},
        "variant_mean_accuracy": sum(scores["variant"]) / max(1, len(scores["variant"])),
        "invariant_mean_accuracy": sum(scores["invariant_descriptive"]) / max(1, len(scores["invariant_descriptive"])),
    }
    (out / "build.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_for_model(spec, data_dir: str | Path, out_dir: str | Path, **kwargs) -> dict:
    """:func:`build` with the model and tokenizer of a :class:`taalm_dist.config.ModelSourceConfig`;
    ``kwargs`` go to :func:`build` (``model_name`` defaults to the source)."""
    from taalm_dist.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec, vocab_size=len(tokenizer))
    return build(model_logits_fn(model), tokenizer, data_dir, out_dir, **{"model_name": spec.source, **kwargs})


def model_logits_fn(model) -> LogitsFn:
    """``fn(batch) -> logits`` of ``model`` in eval mode, without gradients."""
    model.eval()

    @torch.no_grad()
    def fn(batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    return fn
