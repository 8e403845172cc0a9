"""``taalm demo``: the main job end to end on an embedded default, offline, on a CPU.

Stages (each a public verb of its own, run here in one process):

1. ``taalm data synth``: the synthetic CKL benchmark (skipped with ``data_dir``: real LAMA-CKL files).
2. ``taalm ckl build``: tailor it to SmolLM2-135M (keep the common facts the model answers).
3. ``taalm meta-train``: meta-train φ on the meta-training pairs for the config's ``train.max_steps`` φ updates
   (the step budget decides, so every machine trains the same φ; a time box far above it is only a safety).
4. ``taalm ckl run``: θ learns the To-Learn evidence with finetune, taalm (the φ of stage 3) and oracle
   weights, evaluated every epoch.
5. ``taalm ckl compare`` + ``report.md``: the table, curves.png, φ's heatmap and the wall time of every stage.

Every stage logs to one MLflow sqlite store in the output directory (``mlflow.db``).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from taalm_dist.config import SHIPPED_CONFIGS
from taalm_dist.engine.checkpoint import move_aside
from taalm_dist.errors import DataError

DEMO_CONFIG = SHIPPED_CONFIGS / "demo_smollm2.yaml"
META_SAFETY_TIME_S = 3600.0
"""The demo's default safety time box of meta-training (s): about 14× the 60 updates' 4.2 min on a 2-core CPU."""


@dataclass
class DemoPlan:
    """What ``taalm demo`` runs; the defaults are the ``make demo`` sizes (about 10 minutes on 2 CPU cores).

    Attributes:
        out: new output directory (refused when it exists and is not empty, unless ``overwrite``).
        data_dir: LAMA-CKL directory to use instead of the synthetic benchmark (None: synthesise).
        n_to_learn: synthetic To-Learn rows written (the runs use ``ckl.max_to_learn`` of them).
        n_meta: synthetic meta-training rows.
        meta_time_s: safety time box of meta-training in seconds. Meta-training ends at ``train.max_steps`` φ
            updates (the config's step budget); the box only stops a run far slower than expected, and the demo
            then says that its numbers are not the step budget's.
        methods: the ``ckl run`` methods compared (``taalm`` uses the φ of the meta-training stage).
        overrides: ``key=value`` config overrides applied to every stage on top of ``config``.
        config: the YAML config of the meta-training and ckl stages.
        seed: synthetic data seed.
        overwrite: move a non-empty ``out`` aside (renamed, never deleted) and start anew.
    """

    out: Path
    data_dir: Path | None = None
    n_to_learn: int = 120
    n_meta: int = 400
    meta_time_s: float = META_SAFETY_TIME_S
    methods: list[str] = field(default_factory=lambda: ["finetune", "taalm", "oracle"])
    overrides: list[str] = field(default_factory=list)
    config: Path = DEMO_CONFIG
    seed: int = 0
    overwrite: bool = False


class Stages:
    """Prints ``[k/n] name`` banners with the elapsed time, and records each stage's wall time."""

    def __init__(self, total: int):
        self.total, self.k, self.t0 = total, 0, time.monotonic()
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        self.k += 1
        print(f"\n[{self.k}/{self.total}] {name}  (demo time so far {_fmt_duration(time.monotonic() - self.t0)})", flush=True)
        start = time.monotonic()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.monotonic() - start, 1)
        gc.collect()
        return result

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0



def _fmt_duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def sqlite_uri(out: Path) -> str:
    """The demo's MLflow store: ``mlflow.db`` in its output directory."""
    return f"sqlite:///{out / 'mlflow.db'}"


def _prepare_out(plan: DemoPlan) -> Path:
    out = plan.out.resolve()
    if out.exists() and any(out.iterdir()) and not plan.overwrite:
        raise DataError(f"--out {plan.out} exists and is not empty (an earlier demo?): remove it, choose another "
                        "--out, or pass --overwrite to move it aside")
    if out.exists() and plan.overwrite:
        print(f"taalm: {out} held an earlier demo; moved it to {move_aside(out)}")
    out.mkdir(parents=True)
    return out


def _config(plan: DemoPlan, out: Path, stage: str, extra: list[str]):
    from taalm_dist.config import load_config

    tracking = ["tracking.experiment=taalm_demo", f"tracking.run_name=demo-{stage}"]
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # e.g. the compose file's tracking server
        tracking.append(f"tracking.tracking_uri={sqlite_uri(out)}")
    return load_config(plan.config, [*tracking, *extra, *plan.overrides])


def _build(plan: DemoPlan, out: Path, source_dir: Path) -> dict:
    from taalm_dist.ckl.build import build_for_model

    summary = build_for_model(_config(plan, out, "build", []).theta.model, source_dir, out / "data" / "tailored",
                              skip_bad_rows=plan.data_dir is not None)
    print(f"To-Learn {summary['to_learn']} rows, Not-To-Forget {summary['not_to_forget']} rows (of "
          f"{summary['loaded']['invariant_descriptive']}), meta-training pairs {summary['meta_train']}")
    return summary


def _meta_train(plan: DemoPlan, out: Path) -> dict:
    from taalm_dist.programs.meta_train import run_meta_training

    cfg = _config(plan, out, "meta-train", [f"data.train_file={out / 'data' / 'tailored' / 'meta_train.jsonl'}",
                                            f"train.out_dir={out / 'meta_train'}",
                                            f"train.time_limit_s={plan.meta_time_s}"])
    _, summary = run_meta_training(cfg)
    if summary.get("stopped_by_time_limit"):
        print(f"taalm: WARNING: the safety time box ({plan.meta_time_s:g} s) stopped meta-training after "
              f"{summary['steps']} of train.max_steps={cfg.train.max_steps} φ updates; the results below are not "
              "the step budget's (docs/demo.md). Raise --meta-time-s to train the whole budget.")
    first, last = summary["first"], summary["last"]
    if "val/objective" in first and "val/objective" in last:
        print(f"held-out objective L(θ'): {first['val/objective']:.3f} (uniform weights) → {last['val/objective']:.3f} "
              f"after {summary['steps']} φ updates; φ's weight on the object {last['val/weight_on_object']:.3g}, "
              f"elsewhere {last['val/weight_off_object']:.3g}")
    return summary


def _ckl_run(plan: DemoPlan, out: Path, method: str) -> dict:
    from taalm_dist.programs.ckl_run import run_ckl

    cfg = _config(plan, out, f"ckl-{method}", [f"ckl.method={method}", f"ckl.data_dir={out / 'data' / 'tailored'}",
                                               f"ckl.phi_path={out / 'meta_train' / 'phi'}",
                                               f"ckl.out_dir={out / 'ckl' / method}"])
    _, run = run_ckl(cfg)
    s = run["summary"]
    print(f"{method}: Top Acc {s['top_acc']:.3f} (epoch {s['epoch']}), NF Acc {s['nf_acc']:.3f}")
    return run


def run_demo(plan: DemoPlan) -> dict:
    """Run every stage (module docstring) and write ``report.md`` and ``results.json`` in ``plan.out``.

    Returns the results: per method the CKL summary, the stage wall times (s), and the paths written."""
    out = _prepare_out(plan)
    stages = Stages(total=4 + len(plan.methods) - (plan.data_dir is not None))  # + synth, build, meta, report
    if plan.data_dir is None:
        from taalm_dist.data.synth import write_synth

        counts = stages.run("synthesise the benchmark (taalm data synth)", write_synth, out / "data" / "synth",
                            n_to_learn=plan.n_to_learn, n_meta=plan.n_meta, seed=plan.seed)
        print(", ".join(f"{k}: {v} rows" for k, v in counts.items()))
    source = plan.data_dir or out / "data" / "synth"
    build = stages.run("tailor it to the model (taalm ckl build)", _build, plan, out, Path(source))
    meta = stages.run("meta-train φ for train.max_steps updates (taalm meta-train)", _meta_train, plan, out)
    runs = {m: stages.run(f"θ learns the To-Learn facts with {m} weights (taalm ckl run)", _ckl_run, plan, out, m)
            for m in plan.methods}
    results = stages.run("compare and report (taalm ckl compare)", _write_outputs, out, plan, stages, build, meta, runs)
    _print_end(out, results)
    return results


def _write_outputs(out: Path, plan: DemoPlan, stages: Stages, build: dict, meta: dict, runs: dict) -> dict:
    from taalm_dist.ckl.report import benchmark, load_run, plot_curves, summary_table

    run_dirs = [out / "ckl" / m for m in runs]
    loaded = [load_run(d) for d in run_dirs]
    table = summary_table(loaded)
    plot_curves(loaded, out / "curves.png")
    heat_from = out / "ckl" / ("taalm" if "taalm" in runs else next(iter(runs)))
    for name in ("heatmap.html", "heatmap.png"):
        if (heat_from / name).is_file():
            shutil.copyfile(heat_from / name, out / name)
    results = {
        "data": "LAMA-CKL " + str(plan.data_dir) if plan.data_dir else "synthetic (taalm data synth)",
        "benchmark": benchmark(loaded[0]),  # what the runs recorded they learned (decides the paper columns)
        "build": {k: build[k] for k in ("to_learn", "not_to_forget", "meta_train")},
        "meta_train": {"steps": meta["steps"], "max_steps": meta.get("max_steps"),
                       "stopped_by_time_limit": meta.get("stopped_by_time_limit"),
                       "val_objective_start": meta["first"].get("val/objective"),
                       "val_objective_end": meta["last"].get("val/objective")},
        "methods": {m: r["summary"] for m, r in runs.items()},
        "stage_wall_s": stages.times, "total_wall_s": round(stages.elapsed, 1),
        "mlflow": f"mlflow ui --backend-store-uri {os.environ.get('MLFLOW_TRACKING_URI') or sqlite_uri(out)}",
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(_report(results, table))
    return results


def _report(results: dict, table: str) -> str:
    mt = results["meta_train"]
    lines = [
        "# taalm demo", "",
        f"Data: {results['data']}: {results['build']['to_learn']} To-Learn, {results['build']['not_to_forget']} "
        f"Not-To-Forget (the facts the model answered), {results['build']['meta_train']} meta-training pairs.", "",
        f"φ meta-trained for {mt['steps']} updates"
        + (f" (stopped by the safety time box before train.max_steps={mt['max_steps']}: not the budget of docs/demo.md)"
           if mt["stopped_by_time_limit"] else "")
        + (f"; held-out objective L(θ') {mt['val_objective_start']:.3f} → {mt['val_objective_end']:.3f}."
           if mt["val_objective_start"] is not None and mt["val_objective_end"] is not None else "."), "",
        "## Continual knowledge learning", "",
        "Top Acc = best To-Learn object accuracy over the epochs; NF Acc = Not-To-Forget accuracy at that epoch."
        + (" The paper columns are the TAALM paper's Table 1 (LAMA-CKL, Llama2-7B, 30 epochs): another model, for "
           "orientation only." if results["benchmark"] == "LAMA-CKL" else ""), "",
        table, "", "![curves](curves.png)", "",
        "## Where φ focuses", "",
        "[heatmap.html](heatmap.html) (open in a browser; hover a token for its weight)", "", "![heatmap](heatmap.png)", "",
        "## Wall time (s)", "",
        "| stage | s |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in results["stage_wall_s"].items()],
        f"| total | {results['total_wall_s']} |", "",
        f"Metrics of every stage: `{results['mlflow']}`", "",
    ]
    return "\n".join(lines)


def _print_end(out: Path, results: dict) -> None:
    print(f"\ndemo done in {_fmt_duration(results['total_wall_s'])}:")
    for m, s in results["methods"].items():
        print(f"  {m:10s} Top Acc {s['top_acc']:.3f} (epoch {s['epoch']})  NF Acc {s['nf_acc']:.3f}")
    print(f"report: {out / 'report.md'}\ncurves: {out / 'curves.png'}\nheatmap: {out / 'heatmap.html'}")
    print(f"MLflow: {results['mlflow']}")
