"""`taalm <verb>`: the command line. Every verb's --help names its defaults.

Errors caused by input (config, data, models) print one clear line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from taalm_dist.demo import META_SAFETY_TIME_S
from taalm_dist.errors import TaalmError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option; the epilog (the config fields) printed as written."""


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (argparse names the option and exits 2 otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _fraction(lo: float, hi: float | None, hi_open: bool = True, lo_open: bool = False):
    """An argparse type: a finite number in the range from ``lo`` to ``hi`` (open ends as said; None: unbounded)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value > lo if lo_open else value >= lo
        below = hi is None or (value < hi if hi_open else value <= hi)
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"{value} must be in {'(' if lo_open else '['}{lo:g}, "
                                             f"{'∞' if hi is None else format(hi, 'g')}{')' if hi_open else ']'}")
        return value

    parse.__name__ = "number"
    return parse


OVERRIDE_TOKEN = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+=")
"""A ``key.sub=value`` config override on the command line."""

OVERRIDES_HELP = "config overrides as key.sub=value (values parsed as YAML), e.g. meta.inner=adamw train.max_steps=50"


def _add_program(verbs, program: type, name: str, help: str, config_help: str, func, example: str,
                 config_required: bool = False) -> argparse.ArgumentParser:
    """The sub-command of a program, generated from its config class: ``--config``, one flag per entry of its
    ``FLAGS`` (help, type and choices from the field it sets), the ``key=value`` overrides, and an epilog listing
    every field the program reads. The flags apply first, the overrides after them (an override wins)."""
    import typing

    from taalm_dist.config import config_field, describe_fields, show_value

    p = verbs.add_parser(name, help=help, formatter_class=_HelpFormatter, epilog=describe_fields(program))
    p.add_argument("--config", required=config_required, default=None, help=config_help)
    required = getattr(program, "REQUIRED_FLAGS", ())
    for flag, key in program.FLAGS.items():
        tp, default, doc = config_field(program, key)
        nullable = type(None) in typing.get_args(tp)
        text = f"{doc} [sets {key}{'; none: null' if nullable else ''}; config default: {show_value(default)}]"
        if tp is bool:
            p.add_argument(flag, action="store_const", const=True, default=argparse.SUPPRESS, help=text)
            continue
        choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
        p.add_argument(flag, default=argparse.SUPPRESS, required=flag in required, choices=choices,
                       metavar=key.rsplit(".", 1)[-1].upper(), help=text.replace("%", "%%"))
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP.split(", e.g.")[0] + f", e.g. {example}")
    p.set_defaults(func=func, program=program)
    return p


def _program_config(args):
    """The program's config from ``--config``, its flags (``FLAGS``) and the overrides, strictly validated."""
    from taalm_dist.config import load_config

    return load_config(args.config, _flag_overrides(args) + list(args.overrides), args.program)


def _flag_overrides(args, skip: tuple[str, ...] = ()) -> list[str]:
    """The program's flags as ``key=value`` overrides (``none`` → null), except the flags in ``skip``."""
    flags = []
    for flag, key in args.program.FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None or flag in skip:
            continue
        value = "null" if isinstance(value, str) and value.lower() == "none" else value
        flags.append(f"{key}={'true' if value is True else value}")
    return flags


def _cmd_meta_train(args) -> int:
    return _run_meta_train(_program_config(args))


def _run_meta_train(cfg) -> int:
    from taalm_dist.programs.meta_train import run_meta_training

    trainer, summary = run_meta_training(cfg)
    _print_summary(summary, trainer)
    return 0


def _print_summary(summary: dict, trainer) -> None:
    from taalm_dist.engine.distributed import is_main

    if not is_main():
        return
    first, last = summary["first"], summary["last"]
    print(f"done: {summary['steps']} φ updates ({summary['skipped_steps']} skipped); run dir {trainer.out}")
    if "val/objective" in first and "val/objective" in last:
        print(f"validation objective L(θ'): start {first['val/objective']:.4f} (uniform weights "
              f"{first['val/objective_uniform']:.4f}) → end {last['val/objective']:.4f}")
        print(f"φ's mean weight on object tokens {last['val/weight_on_object']:.3f}, "
              f"elsewhere {last['val/weight_off_object']:.3f}")
    print(f"φ saved to {summary['phi_dir']}; metrics in {trainer.out / 'metrics.jsonl'}")
    mlflow = getattr(trainer, "mlflow", None)
    if mlflow is not None and mlflow.wait_ready(0) is not None:
        print(f"MLflow run {mlflow.run_id}: mlflow ui --backend-store-uri {mlflow.uri}")


def _cmd_data_toy(args) -> int:
    from taalm_dist.data import toy_rows, write_pairs

    out = Path(args.out)
    for name, n, seed, offset in (("train", args.n, args.seed, 0), ("val", args.n_val, args.seed + 1, args.n)):
        path = out / f"{name}.jsonl"
        if path.exists() and not args.overwrite:
            raise TaalmError(f"{path} exists; pass --overwrite or choose another --out")
        write_pairs(toy_rows(n, seed=seed, entity_offset=offset), path)
        print(f"wrote {n} toy pairs to {path}")
    return 0


def _cmd_data_synth(args) -> int:
    from taalm_dist.data.synth import write_synth

    counts = write_synth(args.out, overwrite=args.overwrite, n_to_learn=args.n_to_learn, n_meta=args.n_meta,
                         seed=args.seed, distractors=args.distractors)
    print(", ".join(f"{stem}.jsonl: {n} rows" for stem, n in counts.items()) + f"; written to {args.out}")
    return 0


def _cmd_data_twiki_synth(args) -> int:
    from taalm_dist.data.twiki_synth import write_twiki_synth

    counts = write_twiki_synth(args.out, overwrite=args.overwrite, entities=args.entities, periods=args.periods,
                               change_rate=args.change_rate, noise_lines=args.noise_lines, seed=args.seed)
    print("; ".join(f"{p}: {c['lines']} diffset lines, {c['changed']} changed and {c['unchanged']} unchanged probes"
                    for p, c in counts.items()) + f" — written to {args.out} (TemporalWiki's layout)")
    return 0


def _cmd_data_pairs(args) -> int:
    from taalm_dist.data.doc_pairs import make_pick, write_doc_pairs
    from taalm_dist.data.documents import load_documents

    docs = load_documents(args.docs, args.text_field)
    pick = make_pick(args.method, [d.text for d in docs], args.model)
    n = write_doc_pairs([(d.id, d.text) for d in docs], args.out, pick, args.max_facts, args.val_share, args.seed,
                        args.overwrite, args.min_val_docs)
    print(f"{n['pairs']} pairs from {n['with_tasks']} of {n['documents']} documents ({n['held_out_documents']} documents "
          f"held out for validation) written to {args.out}")
    return 0


def _cmd_data_mix(args) -> int:
    from taalm_dist.data.mix import mix_pairs, parse_source

    counts = mix_pairs([parse_source(s) for s in args.sources], args.out, seed=args.seed,
                       max_per_source=args.max_per_source, overwrite=args.overwrite)
    print(", ".join(f"{name}: {n} rows" for name, n in counts.items()) + f"; {sum(counts.values())} shuffled rows "
          f"written to {args.out} (sources in {Path(args.out).parent / 'mix.json'})")
    return 0


def _cmd_config_list(args) -> int:
    from taalm_dist.config import SHIPPED_CONFIGS, shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs))
    for name, what in configs.items():
        print(f"{name:<{width}}  {what}")
    print(f"(--config NAME runs one; the files are in {SHIPPED_CONFIGS})")
    return 0


def _cmd_config_show(args) -> int:
    import yaml

    from taalm_dist.config import load_config, to_dict

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def _cmd_demo(args) -> int:
    """SmolLM2-135M, synthetic CKL: meta-train φ, then finetune vs taalm vs oracle (``--toy``: the tiny smoke demo)."""
    if args.toy:
        return _toy_demo(args)
    from taalm_dist.demo import DemoPlan, run_demo

    plan = DemoPlan(out=Path(args.out), data_dir=Path(args.data_dir) if args.data_dir else None,
                    n_to_learn=args.n_to_learn, n_meta=args.n_meta, meta_time_s=args.meta_time_s,
                    methods=args.methods.split(","), overrides=list(args.overrides), seed=args.seed,
                    overwrite=args.overwrite)
    if args.config:
        plan.config = Path(args.config)
    run_demo(plan)
    return 0


def _toy_demo(args) -> int:
    """Toy data → meta-train φ on a tiny model; shows φ learning to focus on the answer token (~20 s)."""
    from taalm_dist.config import load_config

    out = Path(args.out)
    data_args = argparse.Namespace(out=str(out / "data"), n=200, n_val=16, seed=args.seed, overwrite=True)
    _cmd_data_toy(data_args)
    from taalm_dist.config import SHIPPED_CONFIGS

    config = SHIPPED_CONFIGS / "demo_tiny.yaml"
    overrides = [f"data.train_file={out / 'data' / 'train.jsonl'}", f"data.val_file={out / 'data' / 'val.jsonl'}",
                 f"train.out_dir={out / 'meta_train'}", "train.overwrite=true", *args.overrides]
    return _run_meta_train(load_config(config, overrides))


def _cmd_ckl_build(args) -> int:
    from taalm_dist.ckl.build import EvalSelection, build_for_model
    from taalm_dist.config import ModelSourceConfig

    selection = EvalSelection(to_learn=args.eval_to_learn, not_to_forget=args.eval_not_to_forget,
                              max_evidence_chars=args.eval_max_evidence_chars, order=args.eval_order, seed=args.seed)
    summary = build_for_model(ModelSourceConfig(source=args.model, dtype=args.dtype), args.data_dir, args.out,
                              task_field=args.task_field, to_learn_below=args.to_learn_below,
                              skip_bad_rows=args.skip_bad_rows, limit=args.limit, batch_size=args.batch_size,
                              selection=selection, meta_source=args.meta_source, meta_val=args.meta_val)
    print(f"evaluation: To-Learn {summary['to_learn']} rows, Not-To-Forget {summary['not_to_forget']} rows; "
          f"meta-training ({summary['meta_source']}): {summary['meta_train']} pairs + {summary['meta_val']} for "
          f"validation; written to {args.out}")
    return 0


def _cmd_ckl_run(args) -> int:
    from taalm_dist.programs.ckl_run import run_ckl

    runner, run = run_ckl(_program_config(args))
    s = run["summary"]
    print(f"{run['method']}: Top Acc {s['top_acc']:.3f} (epoch {s['epoch']}), NF Acc {s['nf_acc']:.3f}, "
          f"Total {s['total_knowledge']:.3f}; report {runner.out / 'report.md'}")
    return 0


def _cmd_ckl_compare(args) -> int:
    from taalm_dist.ckl.report import load_run, plot_curves, provenance_table, summary_table

    runs = [load_run(p) for p in args.runs]
    print(summary_table(runs))
    print()
    print(provenance_table(runs))
    if args.plot:
        plot_curves(runs, Path(args.plot))
        print(f"curves of {len(runs)} runs written to {args.plot}")
    return 0


def _learn_with_phi_from_docs(args):
    """``--phi from-docs`` (:mod:`taalm_dist.phi_from_docs`): each override goes to every stage that reads its key
    (``train.*``, ``meta.*``, ``phi.*``, ``data.*``: meta-training; ``learn.*``: learning; ``theta.*`` and the
    like: both)."""
    from taalm_dist.config import LearnRunConfig, MetaTrainConfig, reads_key
    from taalm_dist.phi_from_docs import learn_with_phi_from_docs

    learn, meta = [], []
    for o in args.overrides:
        key = o.split("=", 1)[0]
        to_meta = reads_key(MetaTrainConfig, key)
        if reads_key(LearnRunConfig, key) or not to_meta:  # a key neither reads is refused by learn's config
            learn.append(o)
        if to_meta:
            meta.append(o)
    return learn_with_phi_from_docs(args.config, _flag_overrides(args, skip=("--phi",)) + learn, meta)


def _cmd_twiki_run(args) -> int:
    from taalm_dist.engine import distributed as D
    from taalm_dist.programs.twiki_run import run_twiki

    runner, run = run_twiki(_program_config(args))
    if D.is_main():
        last = run["periods"][-1]
        print(f"{run['method']}: after period {last['period']}, changed-probe NLL {last['changed_nll']:.3f}, unchanged "
              f"{'–' if last['unchanged_nll'] is None else format(last['unchanged_nll'], '.3f')}; report "
              f"{runner.out / 'report.md'}")
    return 0


def _cmd_twiki_compare(args) -> int:
    from taalm_dist.programs.twiki_run import compare_table, load_twiki_run, plot_probes

    runs = [load_twiki_run(p) for p in args.runs]
    print(compare_table(runs))
    if args.plot:
        plot_probes(runs, Path(args.plot))
        print(f"probe NLL of {len(runs)} runs written to {args.plot}")
    return 0


def _cmd_twiki_pairs(args) -> int:
    import random

    from taalm_dist.data import twiki, write_pairs

    out = Path(args.out)
    files = [out / "meta_train.jsonl", out / "meta_val.jsonl"]
    if any(f.exists() for f in files) and not args.overwrite:
        raise TaalmError(f"{out} holds meta_train.jsonl / meta_val.jsonl; pass --overwrite or choose another --out")
    lines, _ = twiki.read_diffset(twiki.diffset_path(args.data_dir, args.period, args.subset), args.max_docs)
    probes = twiki.read_probes(twiki.probe_path(args.data_dir, args.period, "changed"))
    rows, unmatched = twiki.make_pairs(lines, probes, args.period)
    if len(rows) <= args.val:
        raise TaalmError(f"{len(rows)} probes of {args.period} found their diffset line ({unmatched} did not): too few "
                         f"to hold out --val {args.val}")
    # whole lines held out (in a seeded order) until they hold --val pairs: no validation document is a training one
    per_line: dict[str, int] = {}
    for r in rows:
        per_line[r["evidence"]] = per_line.get(r["evidence"], 0) + 1
    order = sorted(per_line)
    random.Random(0).shuffle(order)
    held, n = set(), 0
    for line in order[:-1]:
        if n >= args.val:
            break
        held.add(line)
        n += per_line[line]
    val = [r for r in rows if r["evidence"] in held]
    train = [r for r in rows if r["evidence"] not in held]
    write_pairs(train, files[0])
    write_pairs(val, files[1])
    print(f"{len(train)} meta-training and {len(val)} validation pairs from {args.period}'s diffset and changed probes "
          f"({unmatched} of {len(probes)} probes had no line naming both subject and object) written to {out}")
    return 0


def _cmd_learn(args) -> int:
    from taalm_dist.engine import distributed as D
    from taalm_dist.phi_from_docs import PHI_FROM_DOCS

    if getattr(args, "phi", None) == PHI_FROM_DOCS:
        learner, summary = _learn_with_phi_from_docs(args)
    else:
        from taalm_dist.programs.learn import run_learn

        learner, summary = run_learn(_program_config(args))
    if not D.is_main():
        return 0
    last = summary["epochs"][-1]
    evals = ", ".join(f"{k} {summary['epochs'][0].get(k, float('nan')):.3f} → {last[k]:.3f}"
                      for k in ("qa_acc", "retain_acc") if k in last)
    print(f"learned {summary['documents']} documents ({summary['windows']} windows) in {summary['updates']} θ updates "
          f"({summary['method']}){'; ' + evals if evals else ''}")
    for key in ("adapter", "model", "merged"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    print(f"run directory {learner.out} (summary.json, metrics.jsonl, curves.png, heatmap.html)")
    return 0


def _familiarity_caption(meta: dict) -> str:
    """One line over a window in the heatmap: its document and window, and whether φ abstained there."""
    where = f"{meta.get('id', '')} window {meta.get('window', 0)}"
    if "abstain_share" not in meta:
        return where
    share = meta["abstain_share"]
    verdict = ("φ's weights" if share == 0 else "φ abstained: uniform weights" if share >= 1
               else f"φ abstained on {share:.0%}: that share of the weight is uniform")
    return f"{where} — familiarity distance {meta['familiarity_distance']:.2f}: {verdict}"


def _cmd_weigh(args) -> int:
    from taalm_dist.integrity import write_atomic
    from taalm_dist.tracking.heatmap import heatmap_html
    from taalm_dist.weigh import TokenWeigher, weigh_documents

    out = Path(args.out)
    if not 0 <= args.window_overlap < args.window_tokens or args.window_tokens < 2:
        raise TaalmError(f"--window-tokens {args.window_tokens} must be >= 2 and --window-overlap {args.window_overlap} "
                         "in [0, window tokens)")
    docs = Path(args.docs).resolve()
    for flag, path in (("--out", out), ("--html", Path(args.html) if args.html else None)):
        if path is None:
            continue
        if path.resolve() == docs or docs in path.resolve().parents:
            raise TaalmError(f"{flag} {path} is (inside) --docs {args.docs}: your documents are never written over; "
                             "choose another path")
        if path.exists() and not args.overwrite:
            raise TaalmError(f"{path} exists; pass --overwrite or choose another path")
    weigher = TokenWeigher.load(args.phi, device=args.device, floor=args.floor, uniform_share=args.uniform_share,
                                abstain=not args.no_abstain)
    weighed = weigh_documents(weigher, args.docs, args.text_field, args.window_tokens, args.window_overlap,
                              args.batch_size)
    try:  # strict JSON: a NaN weight is an error, never a token in the file
        rows = "".join(json.dumps(w.as_dict(), ensure_ascii=False, allow_nan=False) + "\n" for w in weighed)
    except ValueError:
        raise TaalmError(f"φ ({args.phi}) gave non-finite weights; nothing was written. Check φ (taalm weigh on a "
                         "known-good export)") from None
    write_atomic(out, rows)  # an interrupted weigh leaves no partial file
    print(f"φ's weights for {len(weighed)} windows written to {out}")
    if weigher.rule.corpus and weigher.rule.corpus["n"]:
        from taalm_dist.familiarity import describe_corpus

        print(describe_corpus(weigher.rule.corpus))
    if args.html:
        shown = weighed[: args.html_docs]
        page = heatmap_html([(w.tokens, w.weights, [0] * len(w.tokens)) for w in shown],
                            f"φ ({args.phi}): token weights of {len(shown)} windows of {args.docs}",
                            [_familiarity_caption(w.meta) for w in shown])
        write_atomic(args.html, page)
        print(f"heatmap of the first {len(shown)} windows written to {args.html}")
    return 0


def _cmd_phi_familiarity(args) -> int:
    from taalm_dist.familiarity import RECORD, document_ids, make_familiarity
    from taalm_dist.models.train_attention import load_phi_tokenizer, read_phi_config

    read_phi_config(args.phi)  # a saved φ, or a clear error
    if (Path(args.phi) / RECORD).exists() and not args.overwrite:
        raise TaalmError(f"{Path(args.phi) / RECORD} exists; pass --overwrite to replace it")
    if bool(args.run) == bool(args.train or args.heldout) or (not args.run and not (args.train and args.heldout)):
        raise TaalmError("give either --run (the meta-training run that made φ) or both --train and --heldout")
    tok = load_phi_tokenizer(args.phi)
    if args.run:
        train, heldout, source = _meta_training_documents(args.run, tok)
    else:
        train, heldout = (document_ids(p, tok, args.kind, args.text_field, args.max_tokens)
                          for p in (args.train, args.heldout))
        source = {"train": str(args.train), "heldout": str(args.heldout), "kind": args.kind,
                  "max_tokens": args.max_tokens}
    rec = make_familiarity(args.phi, train, heldout, source)
    path = rec.save(args.phi)
    own, shuffled = rec.source["own_kind"], rec.source["shuffled"]
    print(f"{path}: from {rec.source['train_docs']} meta-training and {rec.source['heldout_docs']} held-out documents; "
          f"distances of unseen documents of φ's kind: median {own['median']:.3f}, 90 % ≤ {own['q90']:.3f}, 99 % ≤ "
          f"{own['q99']:.3f}; of them "
          f"shuffled: median {shuffled['median']:.3f}. φ's own weights up to {rec.known:.3f}, uniform from "
          f"{rec.unknown:.3f}")
    return 0


def _meta_training_documents(run_dir: str, tokenizer) -> tuple[list[list[int]], list[list[int]], dict]:
    """Token ids of a meta-training run's training and validation documents, split as the run split them (its
    ``config.yaml``: the files, ``train.val_docs`` and ``train.seed``), and the record's ``source``."""
    from taalm_dist.config import MetaTrainConfig, load_config
    from taalm_dist.engine.data_setup import prepare_data

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise TaalmError(f"--run {run_dir}: no config.yaml there; give the directory `taalm meta-train` wrote "
                         "(train.out_dir), or --train and --heldout")
    cfg = load_config(config, program=MetaTrainConfig)
    data = prepare_data(cfg.data, tokenizer, cfg.train.val_docs, cfg.train.seed)
    source = {"run": str(run_dir), "train": cfg.data.train_file,
              "heldout": cfg.data.val_file or f"{len(data.val)} held out of train", "kind": "pairs",
              "max_tokens": cfg.data.max_doc_tokens}
    return [p.doc_ids for p in data.train], [p.doc_ids for p in data.val], source


def _cmd_plan(args) -> int:
    from taalm_dist.config import load_config
    from taalm_dist.plan import plan_report

    cfg = load_config(args.config, list(args.overrides))
    report = plan_report(cfg, args.world_size, args.memory_gb, args.reserve, args.theta_shape, args.phi_shape)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    names = {"theta_base_mb": "θ frozen base (+ ZeRO-3 gathered layers)", "theta_trainable_mb": "θ trainable tensors",
             "meta_step_copies_mb": "meta-step copies of them", "theta_activations_mb": "θ activations (inner backward)",
             "loss_mb": "loss (logits chunk)", "phi_params_mb": "φ parameters",
             "phi_optimizer_mb": "φ gradients + AdamW (+ ZeRO-3 fp32 copy)",
             "phi_activations_mb": "φ activations (graph kept)", "total_mb": "total per rank"}
    print(f"per-rank memory of one meta-step: {args.config}, {report['world_size']} rank(s), "
          f"{report['tokens']}-token documents")
    for key, label in names.items():
        print(f"  {label:<42} {report['plan_mb'][key]:>12,.1f} MB")
    verdict = "fits" if report["fits"] else "does NOT fit"
    print(f"{verdict} in {args.memory_gb:g} GB per rank less {args.reserve:.0%} reserve ({report['budget_mb']:,.0f} MB)")
    print(f"longest document that fits (one per pass): {report['max_doc_tokens']} tokens; most documents per pass at "
          f"{report['tokens']} tokens: {report['max_docs_per_pass']}")
    return 0


BENCHES = {"ce": "taalm_dist.bench.ce", "doc-pairs": "taalm_dist.bench.doc_pairs",
           "familiarity": "taalm_dist.bench.familiarity",
           "gradnoise": "taalm_dist.bench.gradnoise", "metastep": "taalm_dist.bench.metastep",
           "metatrain": "taalm_dist.bench.metatrain", "plancheck": "taalm_dist.bench.plancheck", "zero3": "taalm_dist.bench.zero3"}


def _cmd_bench(args) -> int:
    import importlib

    importlib.import_module(BENCHES[args.bench]).main(args.bench_args)
    return 0


def _defaults(fn) -> dict:
    """The keyword defaults of ``fn``: a verb's options take their defaults from the function they call, never a
    copy."""
    import inspect

    return {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not inspect.Parameter.empty}


def build_parser() -> argparse.ArgumentParser:
    from taalm_dist.config import CklRunConfig, LearnRunConfig, MetaTrainConfig, TwikiRunConfig, config_field
    from taalm_dist.data.doc_pairs import METHODS as doc_pair_methods
    from taalm_dist.data.doc_pairs import pair_rows, write_doc_pairs
    from taalm_dist.data.synth import synth_benchmark
    from taalm_dist.data.twiki_synth import twiki_world
    from taalm_dist.familiarity import document_ids

    synth, world, ids = _defaults(synth_benchmark), _defaults(twiki_world), _defaults(document_ids)
    learn = {k: config_field(LearnRunConfig, f"learn.{k}")[1] for k in ("window_tokens", "window_overlap", "text_field")}

    parser = argparse.ArgumentParser(prog="taalm", description="Meta-learn where to focus (Train-Attention).")
    verbs = parser.add_subparsers(dest="verb", required=True)

    _add_program(verbs, MetaTrainConfig, "meta-train", "meta-train φ (one process, or DeepSpeed ZeRO-3 under a "
                 "launcher)", "YAML config, or the name of a shipped one (`taalm config list`)", _cmd_meta_train, "meta.inner=adamw train.max_steps=50",
                 config_required=True)

    p = verbs.add_parser("data", help="data utilities")
    data_verbs = p.add_subparsers(dest="data_verb", required=True)
    t = data_verbs.add_parser("toy", help="write the toy task (one answer token per document) as jsonl",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, help="directory for train.jsonl and val.jsonl")
    t.add_argument("--n", type=_count(1), default=200, help="training pairs")
    t.add_argument("--n-val", type=_count(1), default=16, help="validation pairs (disjoint entities)")
    t.add_argument("--seed", type=int, default=0, help="RNG seed")
    t.add_argument("--overwrite", action="store_true", help="replace existing files")
    t.set_defaults(func=_cmd_data_toy)
    t = data_verbs.add_parser("synth", help="write the synthetic CKL benchmark (fictional facts to learn, common "
                              "facts not to forget, meta-training pairs) in the LAMA-CKL file layout",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, help="directory for variant.jsonl, invariant_*.jsonl, meta_train.jsonl")
    t.add_argument("--n-to-learn", type=_count(1), default=synth["n_to_learn"], help="To-Learn rows (facts about "
                   "fictional people)")
    t.add_argument("--n-meta", type=_count(1), default=synth["n_meta"], help="meta-training rows (disjoint fictional "
                   "people)")
    t.add_argument("--distractors", type=int, default=synth["distractors"], help="distractor sentences around each fact")
    t.add_argument("--seed", type=int, default=synth["seed"], help="RNG seed (same seed, same files)")
    t.add_argument("--overwrite", action="store_true", help="replace existing files")
    t.set_defaults(func=_cmd_data_synth)
    t = data_verbs.add_parser("twiki-synth", help="write a fictional TemporalWiki in the official layout "
                              "(TWiki_Diffsets/, twiki_probes/): periods of changed article lines and their probes",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, help="directory for TWiki_Diffsets/ and twiki_probes/")
    t.add_argument("--entities", type=_count(2), default=world["entities"], help="fictional people in the world")
    t.add_argument("--periods", type=_count(2), default=world["periods"], help="diffsets: the first introduces the "
                   "people, each later one changes some of their facts")
    t.add_argument("--change-rate", type=_fraction(0, 1, hi_open=False, lo_open=True), default=world["change_rate"], help="share of the people who change one "
                   "fact per later period")
    t.add_argument("--noise-lines", type=_count(0), default=world["noise_lines"], help="changed lines per later period "
                   "that change no fact")
    t.add_argument("--seed", type=int, default=world["seed"], help="RNG seed (same seed, same files)")
    t.add_argument("--overwrite", action="store_true", help="replace existing files")
    t.set_defaults(func=_cmd_data_twiki_synth)
    t = data_verbs.add_parser("pairs", help="meta-training pairs from plain documents, no task written by hand: each "
                              "document's facts about its subject asked in LAMA-CKL's schematic form "
                              "(taalm_dist/data/doc_pairs.py)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--docs", required=True, help="a .jsonl file, a directory of .txt/.md files, or a datasets dataset")
    t.add_argument("--out", required=True, help="directory for meta_train.jsonl and meta_val.jsonl")
    t.add_argument("--text-field", default=learn["text_field"], help="the jsonl field / dataset column with the text")
    t.add_argument("--method", choices=doc_pair_methods, default="last", help="each fact's object: "
                   "its sentence's last name or number (else last word); each candidate (name, number, last word) a "
                   "task of its own; of the sentence's words, the one in fewest documents of the corpus (rare); or "
                   "the candidate the base model finds least likely (surprise: needs --model); or, with no document "
                   "subject, each two neighbouring names of a sentence, the later one asked (links: short passages "
                   "that name nothing twice); or each sentence's two words the corpus uses far more than the language "
                   "does, asked about the closest name (keywords: needs --model, for its tokenizer)")
    t.add_argument("--model", default=None, help="with --method surprise or keywords: the base model's source (θ's)")
    t.add_argument("--max-facts", type=_count(1), default=_defaults(pair_rows)["max_facts"],
                   help="tasks made from one document, at most")
    t.add_argument("--val-share", type=_fraction(0, 1, lo_open=True), default=_defaults(write_doc_pairs)["val_share"],
                   help="share of the documents held out (whole) for validation (at least --min-val-docs while that "
                   "leaves three quarters for training)")
    t.add_argument("--min-val-docs", type=_count(1), default=_defaults(write_doc_pairs)["min_val_docs"],
                   help="documents held out for validation, at least (a small corpus)")
    t.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    t.add_argument("--overwrite", action="store_true", help="replace existing files")
    t.set_defaults(func=_cmd_data_pairs)
    t = data_verbs.add_parser("mix", help="one meta-training file from the pairs of several sources, each row "
                              "tagged with its source and shuffled (a φ meta-trained on both kinds of document)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("sources", nargs="+", metavar="NAME=PATH", help="meta-training pair files (jsonl), e.g. "
                   "lama=runs/ckl_smollm2/tailored/meta_train.jsonl synth=runs/demo/data/tailored/meta_train.jsonl")
    t.add_argument("--out", required=True, help="the mixed jsonl file (mix.json with the sources is written beside it)")
    t.add_argument("--seed", type=int, default=0, help="shuffle seed (same sources, same seed: same file)")
    t.add_argument("--max-per-source", type=int, default=None, help="at most this many rows of each source "
                   "(the first in file order); default: all")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.set_defaults(func=_cmd_data_mix)

    p = verbs.add_parser("config", help="config utilities")
    cfg_verbs = p.add_subparsers(dest="config_verb", required=True)
    s = cfg_verbs.add_parser("show", help="print the resolved config (defaults + file + overrides)")
    s.add_argument("--config", default=None,
                   help="YAML config; omitted: the defaults (a name from `taalm config list`: a shipped one)")
    s.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    s.set_defaults(func=_cmd_config_show)
    s = cfg_verbs.add_parser("list", help="the configs shipped with the package (recipes, the demo's): --config NAME "
                             "runs one from any directory")
    s.set_defaults(func=_cmd_config_list)

    p = verbs.add_parser("ckl", help="LAMA-CKL benchmark")
    ckl_verbs = p.add_subparsers(dest="ckl_verb", required=True)
    b = ckl_verbs.add_parser("build", help="tailor LAMA-CKL to a model (To-Learn, Not-To-Forget, meta-training pairs)",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--model", required=True, help="model source: hub id, directory, .gguf, pkg:<package>/<file> or tiny")
    b.add_argument("--data-dir", required=True, help="directory with variant.jsonl, invariant_descriptive.jsonl, "
                   "invariant_schematic.jsonl (the LAMA-CKL release)")
    b.add_argument("--out", required=True, help="new directory for the tailored files")
    b.add_argument("--task-field", default=config_field(CklRunConfig, "data.task_field")[1],
                   choices=["task_descriptive", "task_schematic"], help="the task sentence of each row")
    b.add_argument("--to-learn-below", type=float, default=1.0,
                   help="a variant row is To-Learn when the model's object-token accuracy is below this")
    b.add_argument("--limit", type=int, default=None, help="use only the first N valid rows of each file")
    b.add_argument("--batch-size", type=int, default=16, help="tasks scored per forward")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    b.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of stopping")
    b.add_argument("--eval-to-learn", type=int, default=None,
                   help="To-Learn evaluation rows (default: every variant row the model does not know)")
    b.add_argument("--eval-not-to-forget", type=int, default=None,
                   help="Not-To-Forget evaluation rows (default: every invariant row the model knows)")
    b.add_argument("--eval-max-evidence-chars", type=int, default=None,
                   help="only variant rows with evidence of at most this many characters are To-Learn candidates")
    b.add_argument("--eval-order", default="file", choices=["file", "shuffle"],
                   help="take the evaluation rows first in file order, or from a shuffle seeded by --seed")
    b.add_argument("--seed", type=int, default=0, help="seed of --eval-order shuffle and of the validation split")
    b.add_argument("--meta-source", default="auto", choices=["auto", "in_distribution", "invariant_schematic"],
                   help="meta-training pairs: unknown facts of the same relations (in_distribution), the old "
                        "invariant_schematic rows, or auto (the directory's meta_train.jsonl, else in_distribution)")
    b.add_argument("--meta-val", type=int, default=32, help="meta-training pairs held out as meta_val.jsonl")
    b.set_defaults(func=_cmd_ckl_build)
    _add_program(ckl_verbs, CklRunConfig, "run", "train θ on To-Learn evidence with a method's weights; evaluate each "
                 "epoch", "YAML config or the name of a shipped one (e.g. ckl_smollm2_cpu); omitted: defaults", _cmd_ckl_run,
                 "ckl.epochs=8 ckl.lr=1e-3")
    cmp_ = ckl_verbs.add_parser("compare", help="table (and curves) of several `ckl run` directories")
    cmp_.add_argument("runs", nargs="+", help="run directories")
    cmp_.add_argument("--plot", default=None, help="also write their curves to this PNG")
    cmp_.set_defaults(func=_cmd_ckl_compare)

    p = verbs.add_parser("twiki", help="TemporalWiki: continual learning of changed Wikipedia text, period by period")
    twiki_verbs = p.add_subparsers(dest="twiki_verb", required=True)
    _add_program(twiki_verbs, TwikiRunConfig, "run", "θ learns each period's diffset with a method's weights, then is "
                 "probed on changed and unchanged facts; θ carries to the next period", "YAML config or the name of a "
                 "shipped one (e.g. twiki_smollm2_cpu); omitted: defaults", _cmd_twiki_run,
                 "twiki.periods=[0910,1011,1112] twiki.epochs=2")
    cmp_ = twiki_verbs.add_parser("compare", help="table (and probe NLL plot) of several `twiki run` directories")
    cmp_.add_argument("runs", nargs="+", help="run directories")
    cmp_.add_argument("--plot", default=None, help="also write the changed / unchanged NLL per period to this PNG")
    cmp_.set_defaults(func=_cmd_twiki_compare)
    t = twiki_verbs.add_parser("pairs", help="φ's meta-training pairs from one period (as TAALM's φ for TemporalWiki: "
                               "a diffset line and the 'Guess the object' task of a changed probe it states)",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data-dir", required=True, help="the TemporalWiki layout")
    t.add_argument("--period", required=True, help="the diffset (MMNN) whose lines and changed probes are paired; "
                   "the paper used 0809 and learnt the later periods")
    t.add_argument("--out", required=True, help="directory for meta_train.jsonl and meta_val.jsonl")
    t.add_argument("--val", type=_count(1), default=32, help="pairs held out for validation, at least (whole lines are "
                   "held out, with every pair of theirs)")
    t.add_argument("--subset", action="store_true", help="read the _subset.csv diffset")
    t.add_argument("--max-docs", type=_count(1), default=None, help="read at most the first N kept lines")
    t.add_argument("--overwrite", action="store_true", help="replace existing files")
    t.set_defaults(func=_cmd_twiki_pairs)

    _add_program(verbs, LearnRunConfig, "learn", "θ learns your documents with a trained φ's token weights (or "
                 "uniform: --phi none); writes a peft adapter (and a merged model)", "YAML config or the name of a shipped one "
                 "(θ, LoRA, loss, learn.*); omitted: defaults", _cmd_learn, "learn.epochs=3 learn.lr=3e-4")

    p = verbs.add_parser("weigh", help="φ's weight for every token of your documents (jsonl, and an HTML heatmap)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--phi", required=True, help="a meta-trained φ's phi/ directory")
    p.add_argument("--docs", required=True, help="a .jsonl file, a directory of .txt/.md files, or a datasets dataset")
    p.add_argument("--out", required=True, help="jsonl written: one row per window (id, window, context, tokens, ids, "
                   "weights)")
    p.add_argument("--html", default=None, help="also write a heatmap of the first windows to this .html file")
    p.add_argument("--html-docs", type=_count(0), default=20, help="windows shown in the heatmap")
    p.add_argument("--text-field", default=learn["text_field"], help="the jsonl field / dataset column with the text")
    p.add_argument("--window-tokens", type=int, default=learn["window_tokens"], help="longest window weighed at once "
                   "(as learn.window_tokens)")
    p.add_argument("--window-overlap", type=int, default=learn["window_overlap"], help="tokens a window repeats from "
                   "the previous one (as learn.window_overlap)")
    p.add_argument("--batch-size", type=_count(1), default=8, help="windows per φ forward")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--floor", type=_fraction(0, 1, hi_open=False), default=0.0, help="every real token's weight at least this (the weights "
                   "θ learns with under ckl.phi_weight_floor / learn.phi_weight_floor); 0: φ's own")
    p.add_argument("--uniform-share", type=_fraction(0, 1, hi_open=False), default=0.0, help="share of each window's weight spread uniformly, "
                   "the rest φ's rescaled to mean 1 (as ckl.phi_uniform_share / learn.phi_uniform_share); 0: φ's own")
    p.add_argument("--no-abstain", action="store_true", help="φ's weights on every window, also where its familiarity "
                   "record says it does not know the text (as ckl.phi_abstain / learn.phi_abstain false)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_weigh)

    p = verbs.add_parser("phi", help="a trained φ's own records")
    phi_verbs = p.add_subparsers(dest="phi_verb", required=True)
    t = phi_verbs.add_parser("familiarity", help="write φ's familiarity record (PHI/familiarity.json): from its "
                             "meta-training documents and held-out ones of the same kind, how far a document may lie from "
                             "them before φ gives up its weights there (taalm_dist/familiarity.py)",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("phi", help="a meta-trained φ's phi/ directory")
    t.add_argument("--run", help="the meta-training run that made φ (its train.out_dir): its documents, split as it "
                   "split them (instead of --train/--heldout)")
    t.add_argument("--train", help="φ's meta-training documents")
    t.add_argument("--heldout", help="held-out documents of the same kind (e.g. its validation pairs)")
    t.add_argument("--kind", choices=["pairs", "docs"], default="pairs", help="pairs: meta-training files (each row's "
                   "evidence); docs: what `taalm learn --docs` reads")
    t.add_argument("--text-field", default=ids["text_field"], help="with --kind docs: the jsonl field / dataset column")
    t.add_argument("--max-tokens", type=_count(2), default=ids["max_tokens"], help="tokens of each document's first "
                   "window measured")
    t.add_argument("--overwrite", action="store_true", help="replace an existing record")
    t.set_defaults(func=_cmd_phi_familiarity)

    p = verbs.add_parser("bench", help="performance harnesses; each prints one JSON object (`taalm bench NAME --help`)",
                         description="ce: eager vs fused token-weighted CE (time, peak memory); familiarity: which "
                         "per-document measure tells φ's own kind of document from others, and the abstention rule's shares; "
                         "metastep: the "
                         "closed-form meta-step vs double backward; metatrain: documents/s of the real meta-trainer on a config (the "
                         "demo's by default); plancheck: taalm plan against measured live memory; zero3: per-rank memory and "
                         "throughput, 1 vs 2 ranks")
    p.add_argument("bench", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="its options (see taalm bench NAME --help)")
    p.set_defaults(func=_cmd_bench)

    p = verbs.add_parser("plan", help="per-rank memory of a meta-step for a config, world size and GPU memory; the "
                         "longest document and most documents per pass that fit",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="meta-training config")
    p.add_argument("--world-size", type=_count(1), default=1, help="ranks (> 1: ZeRO-3)")
    p.add_argument("--memory-gb", type=_fraction(0, None, lo_open=True), default=80.0,
                   help="accelerator memory per rank, GB")
    p.add_argument("--reserve", type=_fraction(0, 1), default=0.1, help="fraction kept free (allocator, CUDA context)")
    p.add_argument("--theta-shape", default=None, help="θ's shape by name when its config cannot be read here "
                   "(smollm2-135m, tinyllama-1.1b, llama2-7b, llama2-13b)")
    p.add_argument("--phi-shape", default=None, help="φ's backbone shape by name (as --theta-shape)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_cmd_plan)

    p = verbs.add_parser("demo", help="the main job end to end on SmolLM2-135M and the synthetic benchmark, offline "
                         "(~10 min on 2 CPU cores)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="new output directory (report.md, curves.png, heatmap.html, ...)")
    p.add_argument("--data-dir", default=None, help="run on these LAMA-CKL files instead of the synthetic benchmark")
    p.add_argument("--n-to-learn", type=int, default=120, help="synthetic To-Learn facts written")
    p.add_argument("--n-meta", type=int, default=400, help="synthetic meta-training pairs written")
    p.add_argument("--meta-time-s", type=float, default=META_SAFETY_TIME_S, help="safety time box of φ's meta-training, seconds "
                   "(meta-training ends at the config's train.max_steps φ updates; the box only stops a far slower run)")
    p.add_argument("--methods", default="finetune,taalm,oracle", help="comma-separated `ckl run` methods")
    p.add_argument("--config", default=None, help="config of the meta-train and ckl stages "
                   "(default: taalm_dist/configs/demo_smollm2.yaml)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--overwrite", action="store_true", help="move a non-empty --out aside (renamed, not deleted) and "
                   "start anew")
    p.add_argument("--toy", action="store_true", help="instead: the 20-second smoke demo (tiny random model, toy task)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP + " (applied to every stage)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit codes: 0 done, 2 bad input (one line on stderr), 75 stopped by SIGTERM/SIGINT after
    writing a checkpoint (``--resume auto`` continues), 130 interrupted at once (a second Ctrl-C)."""
    from taalm_dist.engine.preemption import EXIT_PREEMPTED, Preempted

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        given = list(sys.argv[1:] if argv is None else argv)
        hint = ""
        split = any(OVERRIDE_TOKEN.match(a) or a.startswith("-") for a in unknown)
        if split and any(OVERRIDE_TOKEN.match(a) for a in given):
            hint = ("; put every key=value override after the options, together (e.g. `taalm learn --phi P --docs D "
                    "learn.lr=1e-4 learn.seed=1`): overrides split by an option are not read")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    try:
        return args.func(args)
    except Preempted as e:
        print(f"taalm: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except TaalmError as e:
        print(f"taalm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taalm: interrupted", file=sys.stderr)
        return 130


def exit_process(code: int) -> NoReturn:
    """Exit this process with ``code`` once a command has returned it.

    A process that ran with a process group (torchrun, the deepspeed launcher) and left it exits at once, after
    flushing its output, instead of through the interpreter's teardown: there, torch's gloo and DeepSpeed objects
    that outlive the process group (ZeRO-3's parameters keep their groups) are destroyed in no fixed order, and that
    was seen to abort one rank (SIGABRT, "terminate called without an active exception") after every rank had
    finished, written its checkpoint and left the group — which makes the launcher report the finished job failed.
    Everything a run writes is closed before it leaves the group (its trackers, metrics and checkpoints)."""
    distributed = sys.modules.get("taalm_dist.engine.distributed")  # imported only by runs that can have a group
    if distributed is not None and distributed.left_process_group():
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def entry() -> None:
    """The ``taalm`` command (and ``python -m taalm_dist.cli``): :func:`main`, then :func:`exit_process`."""
    exit_process(main())


if __name__ == "__main__":
    entry()
