"""``taalm learn --docs DOCS --phi from-docs``: θ learns your documents with a φ made from those documents alone.

Three stages, each the public verb of its own, run in one process, each skipped when its output exists (so the
same command resumes where it stopped; an interrupted meta-training or learning resumes its checkpoint):

1. ``taalm data pairs``: meta-training pairs from the documents (:mod:`taalm_dist.data.doc_pairs`) in
   ``<out>.phi/pairs/`` — each document's facts about its subject, asked in other words than the document's.
2. ``taalm meta-train``: φ meta-trained on them (the config file's ``train`` / ``meta`` / ``phi`` / ``data``
   sections: a pipeline file such as ``phi_from_docs_smollm2_cpu``) in ``<out>.phi/meta_train/``.
3. ``taalm learn``: θ learns the documents with that φ (``learn.phi_path`` = its ``phi/``), in ``<out>``.

The φ stages live beside the run directory (``<out>.phi``), never in it: ``<out>`` is ``learn``'s own. Each stage's
wall time is printed and written to ``<out>.phi/stages.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

PHI_FROM_DOCS = "from-docs"
"""The value of ``--phi`` that asks for this path."""


def phi_dir_of(out: str | Path) -> Path:
    """Where the φ stages of a learn run in ``out`` live: ``<out>.phi``."""
    out = Path(out)
    return out.with_name(out.name + ".phi")


def learn_with_phi_from_docs(config: str | Path | None, learn_overrides: list[str], meta_overrides: list[str] = ()):
    """Run the three stages (module docstring) for ``taalm learn``'s config (``config`` + ``learn_overrides``: the
    flags and overrides it was given, ``learn.phi_path`` left out) and ``meta_overrides`` (extra ``key=value`` for the
    meta-training stage). Returns ``(learner, summary)`` of the learn stage, the stages' times in the summary."""
    from taalm_dist.config import LearnRunConfig, MetaTrainConfig, load_config
    from taalm_dist.data.doc_pairs import make_pick, write_doc_pairs
    from taalm_dist.data.documents import load_documents
    from taalm_dist.engine import distributed as D
    from taalm_dist.programs.learn import run_learn
    from taalm_dist.programs.meta_train import run_meta_training

    cfg = load_config(config, list(learn_overrides), LearnRunConfig)
    where = phi_dir_of(cfg.learn.out_dir)
    pairs, meta_out = where / "pairs", where / "meta_train"
    phi = meta_out / "phi"
    times: dict[str, float] = {}

    def stage(k: int, name: str, done: bool, fn) -> None:
        if done:
            print(f"[{k}/3] {name}: done before, skipped")
            return
        print(f"[{k}/3] {name} ...", flush=True)
        start = time.monotonic()
        fn()
        times[name] = round(time.monotonic() - start, 1)
        print(f"[{k}/3] {name}: {times[name]:.0f} s", flush=True)

    def make_pairs() -> None:
        docs = load_documents(cfg.learn.docs, cfg.learn.text_field)
        pick = make_pick(cfg.learn.pairs_method, [d.text for d in docs], cfg.theta.model.source)
        n = write_doc_pairs([(d.id, d.text) for d in docs], pairs, pick, seed=cfg.learn.seed)
        print(f"{n['pairs']} pairs from {n['with_tasks']} of {n['documents']} documents "
              f"({n['held_out_documents']} held out for φ's validation)")

    def meta_train() -> None:
        run_meta_training(load_config(config, [f"data.train_file={pairs / 'meta_train.jsonl'}",
                                               f"data.val_file={pairs / 'meta_val.jsonl'}", f"train.out_dir={meta_out}",
                                               "train.resume=auto", f"train.seed={cfg.learn.seed}", *meta_overrides],
                                      MetaTrainConfig))

    where.mkdir(parents=True, exist_ok=True)
    stage(1, "pairs from the documents", (pairs / "meta_train.jsonl").is_file(), make_pairs)
    stage(2, "meta-train φ on them", (phi / "phi_config.json").is_file(), meta_train)
    start = time.monotonic()
    print("[3/3] learn the documents with that φ ...", flush=True)
    learner, summary = run_learn(load_config(config, [*learn_overrides, f"learn.phi_path={phi}"], LearnRunConfig))
    times["learn the documents"] = round(time.monotonic() - start, 1)
    summary["phi_from_docs"] = {"dir": str(where), "stage_wall_s": times}
    if D.is_main():
        (where / "stages.json").write_text(json.dumps(times, indent=2) + "\n")
        print(f"[3/3] learn the documents with that φ: {times['learn the documents']:.0f} s; stages: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return learner, summary
