"""LAMA-CKL outputs: metrics.json, epochs.csv, curves.png, report.md, compare (the token-weight heatmap:
:mod:`taalm_dist.tracking.heatmap`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

# The TAALM paper, Table 1 (Llama2-7B θ, QLoRA, 30 epochs, lr 1e-4): Top Acc, Epoch, NF Acc, Total.
PAPER_TABLE1 = {
    "finetune": (0.115, 16, 0.817, 0.932),
    "kadapter": (0.126, 30, 0.998, 1.124),
    "mix_review": (0.080, 25, 0.799, 0.879),
    "recadam": (0.100, 24, 0.793, 0.893),
    "rho1": (0.141, 18, 0.822, 0.963),
    "taalm": (0.429, 4, 0.898, 1.327),
}


def write_metrics(out: Path, payload: dict) -> None:
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    with (out / "epochs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "to_learn_acc", "not_to_forget_acc", "train_loss"])
        for row in payload["epochs"]:
            w.writerow([row["epoch"], row["to_learn_acc"], row["not_to_forget_acc"], row.get("train_loss")])


def plot_curves(runs: list[dict], path: Path) -> None:
    """To-Learn and Not-To-Forget accuracy per epoch, one line per run (the paper's Figure 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        epochs = [r["epoch"] for r in run["epochs"]]
        axes[0].plot(epochs, [r["to_learn_acc"] for r in run["epochs"]], marker="o", ms=3, label=run["method"])
        axes[1].plot(epochs, [r["not_to_forget_acc"] for r in run["epochs"]], marker="o", ms=3, label=run["method"])
    for ax, title in zip(axes, ("To-Learn accuracy (plasticity)", "Not-To-Forget accuracy (stability)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def benchmark(run: dict) -> str:
    """The benchmark a run learned (``setup.benchmark``: ``"LAMA-CKL"`` or ``"synthetic"``; runs that predate the
    field were LAMA-CKL's or the demo's: read as LAMA-CKL)."""
    return run.get("setup", {}).get("benchmark") or "LAMA-CKL"


def summary_table(runs: list[dict]) -> str:
    """Markdown table of several runs with the paper's row for each method beside it (LAMA-CKL runs only: the paper
    has no row for the synthetic benchmark); a run whose directory is not named after its method is labelled
    ``method (directory)`` (several φs of one method tell apart)."""
    rows = ["| method | Top Acc | Epoch | NF Acc | Total | paper Top Acc | paper Epoch | paper NF Acc | paper Total |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run["summary"]
        paper = PAPER_TABLE1.get(run["method"], ("–",) * 4) if benchmark(run) == "LAMA-CKL" else ("–",) * 4
        name = run.get("run_name")
        label = run["method"] if name in (None, run["method"]) else f"{run['method']} ({name})"
        rows.append(f"| {label} | {s['top_acc']:.3f} | {s['epoch']} | {s['nf_acc']:.3f} | "
                    f"{s['total_knowledge']:.3f} | " + " | ".join(str(v) for v in paper) + " |")
    return "\n".join(rows)


def provenance_table(runs: list[dict]) -> str:
    """Markdown table of where each run's row comes from: its date, machine, wall time (s; of the process that
    finished it: ``+`` marks a run resumed from an epoch checkpoint) and φ (with its weight floor, uniform share and
    abstention, if any)."""
    rows = ["| run | date | machine | wall s | φ |", "|---|---|---|---|---|"]
    for run in runs:
        c = run.get("setup", {})
        wall = "–" if c.get("wall_s") is None else f"{c['wall_s']:.0f}" + ("+" if c.get("resumed_at_epoch") else "")
        phi = c.get("phi") or "–"
        if c.get("phi_weight_floor"):
            phi += f" (floor {c['phi_weight_floor']:g})"
        if c.get("phi_uniform_share"):
            phi += f" (uniform share {c['phi_uniform_share']:g})"
        if c.get("phi_abstained"):
            a = c["phi_abstained"]
            corpus = a.get("corpus") or {}
            whole = f"; corpus share {corpus['share']:.2f}" if corpus.get("n") else ""
            phi += (f" (abstained: mean share {a['mean_share']:.2f}, {a['uniform']} of {a['docs_weighed']} documents "
                    f"uniform{whole})")
        rows.append(f"| {run.get('run_name') or run['method']} | {c.get('date', '–')} | {c.get('machine', '–')} | "
                    f"{wall} | {phi} |")
    return "\n".join(rows)


def write_report(out: Path, run: dict) -> None:
    c = run["setup"]
    paper_note = ["Paper: Table 1 of the TAALM paper (Llama2-7B θ, QLoRA, 30 epochs, lr 1e-4, 8 GPUs); a different "
                  "model and benchmark size, so compare the methods' order, not the values.", ""]
    text = [f"# {benchmark(run)} run: {run['method']}", "",
            f"θ: `{c['theta']}` ({c['trainable']}), {c['epochs']} epochs, lr {c['lr']}, batch {c['batch_size']}; "
            f"{c['to_learn']} To-Learn rows, {c['not_to_forget']} Not-To-Forget rows; {c['date']}, {c['machine']}.",
            "", summary_table([run]), "", *(paper_note if benchmark(run) == "LAMA-CKL" else []),
            "![curves](curves.png)", "", "Token weights of the first documents: [heatmap.html](heatmap.html)", "",
            "![heatmap](heatmap.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def load_run(path: str | Path) -> dict:
    p = Path(path)
    f = p / "metrics.json" if p.is_dir() else p
    if not f.is_file():
        from taalm_dist.errors import DataError

        raise DataError(f"{path}: no metrics.json (is it a `taalm ckl run` directory?)")
    from taalm_dist.errors import DataError

    try:
        run = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{f} is not readable JSON ({e}); it was damaged or written by something else: rerun "
                        "`taalm ckl run --resume auto` in its directory, or leave it out of the comparison") from None
    if not isinstance(run, dict) or not isinstance(run.get("summary"), dict):
        raise DataError(f"{f}: not a `taalm ckl run` metrics file (no summary); leave it out of the comparison")
    run["run_name"] = f.parent.name  # the run's directory: labels its row in summary_table
    return run
