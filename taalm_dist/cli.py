"""`taalm <verb>`: the command line. Every verb's --help names its defaults.

Errors caused by input (config, data, models) print one clear line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taalm_dist.errors import TaalmError

OVERRIDES_HELP = "config overrides as key.sub=value (values parsed as YAML), e.g. meta.inner=adamw train.max_steps=50"


def _cmd_meta_train(args) -> int:
    from taalm_dist.config import load_config

    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
    return _run_meta_train(load_config(args.config, overrides))


def _run_meta_train(cfg) -> int:
    from taalm_dist.engine.meta_trainer import MetaTrainer

    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        summary = trainer.train()
    finally:
        trainer.cleanup()
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


def _cmd_config_show(args) -> int:
    import yaml

    from taalm_dist.config import load_config, to_dict

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def _cmd_demo(args) -> int:
    """Toy data → meta-train φ on a tiny model; shows φ learning to focus on the answer token."""
    from taalm_dist.config import load_config

    out = Path(args.out)
    data_args = argparse.Namespace(out=str(out / "data"), n=args.n, n_val=16, seed=0, overwrite=True)
    _cmd_data_toy(data_args)
    config = Path(__file__).resolve().parent / "configs" / "demo_tiny.yaml"
    overrides = [f"data.train_file={out / 'data' / 'train.jsonl'}", f"data.val_file={out / 'data' / 'val.jsonl'}",
                 f"train.out_dir={out / 'meta_train'}", "train.overwrite=true", *args.overrides]
    return _run_meta_train(load_config(config, overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taalm", description="Meta-learn where to focus (Train-Attention).")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("meta-train", help="meta-train φ (one process, or DeepSpeed ZeRO-3 under a launcher)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint in train.out_dir, if any) or a checkpoint directory")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_cmd_meta_train)

    p = verbs.add_parser("data", help="data utilities")
    data_verbs = p.add_subparsers(dest="data_verb", required=True)
    t = data_verbs.add_parser("toy", help="write the toy task (one answer token per document) as jsonl",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, help="directory for train.jsonl and val.jsonl")
    t.add_argument("--n", type=int, default=200, help="training pairs")
    t.add_argument("--n-val", type=int, default=16, help="validation pairs (disjoint entities)")
    t.add_argument("--seed", type=int, default=0, help="RNG seed")
    t.add_argument("--overwrite", action="store_true", help="replace existing files")
    t.set_defaults(func=_cmd_data_toy)

    p = verbs.add_parser("config", help="config utilities")
    cfg_verbs = p.add_subparsers(dest="config_verb", required=True)
    s = cfg_verbs.add_parser("show", help="print the resolved config (defaults + file + overrides)")
    s.add_argument("--config", default=None, help="YAML config; omitted: the defaults")
    s.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    s.set_defaults(func=_cmd_config_show)

    p = verbs.add_parser("demo", help="the main job on the embedded default (tiny model, toy task)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--n", type=int, default=200, help="toy training pairs")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TaalmError as e:
        print(f"taalm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taalm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
