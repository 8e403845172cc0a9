"""``taalm ckl build``: tailor LAMA-CKL to a model, as the official pipeline did for Llama-2.

Score the model on every row (object-token accuracy of the task sentence, :mod:`taalm_dist.ckl.metrics`),
keep the variant rows it does not fully know (accuracy < ``to_learn_below``) as To-Learn and the
invariant (descriptive) rows it fully knows as Not-To-Forget, and take meta-training pairs from
invariant_schematic rows that are in neither evaluation set (or, when the directory has a
``meta_train.jsonl`` of its own, as ``taalm data synth`` writes, from that file). Writes ``to_learn.jsonl``,
``not_to_forget.jsonl``, ``meta_train.jsonl`` (the original rows, LAMA-CKL schema), ``scores.jsonl``
(uuid, file, accuracy) and ``build.json`` (counts and settings).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from taalm_dist.ckl.data import load_rows, report_line, require_files, tokenized_tasks
from taalm_dist.ckl.metrics import object_token_accuracy
from taalm_dist.data import pad_batch, write_pairs
from taalm_dist.errors import DataError

LogitsFn = Callable[[dict], torch.Tensor]
"""``fn(batch) -> [B, L, V]`` logits for a right-padded batch of ``input_ids`` / ``attention_mask``."""


def model_logits_fn(model) -> LogitsFn:
    model.eval()

    @torch.no_grad()
    def fn(batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    return fn


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
          max_task_tokens: int = 128, model_name: str = "", progress: bool = True) -> dict:
    """Tailor the LAMA-CKL files in ``data_dir`` to the model behind ``logits_fn``; see module docstring."""
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
    to_learn = [r for r, s in zip(v_rows, scores["variant"]) if s < to_learn_below]
    keep_nf = [r for r, s in zip(i_rows, scores["invariant_descriptive"]) if s == 1.0]
    used = {str(r.get("uuid")) for r in to_learn + keep_nf}
    meta_source = Path(data_dir) / "meta_train.jsonl"
    if meta_source.is_file():  # the synthetic benchmark's own meta-training pairs (`taalm data synth`)
        loaded["meta_train"] = load_rows(meta_source, task_field, skip_bad_rows)
        s_rows, s_pairs, _ = loaded["meta_train"]
    else:
        s_rows, s_pairs, _ = loaded["invariant_schematic"]
    meta = [r for r, p in zip(s_rows, s_pairs) if p.uid not in used]
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(to_learn, out / "to_learn.jsonl")
    write_pairs(keep_nf, out / "not_to_forget.jsonl")
    write_pairs(meta, out / "meta_train.jsonl")
    score_rows = [{"uuid": p.uid, "file": name, "accuracy": s}
                  for name, ps in (("variant", v_pairs), ("invariant_descriptive", i_pairs))
                  for p, s in zip(ps, scores[name])]
    write_pairs(score_rows, out / "scores.jsonl")
    summary = {
        "model": model_name, "data_dir": str(data_dir), "task_field": task_field, "to_learn_below": to_learn_below,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "to_learn": len(to_learn), "not_to_forget": len(keep_nf),
        "meta_train": len(meta), "loaded": {n: report_line(n, rep) for n, (_, _, rep) in loaded.items()},
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
