"""``taalm twiki run``: TemporalWiki (Jang et al., 2022) as the TAALM paper runs it — period after period θ learns the
Wikipedia text that changed (the period's diffset, in windows as ``taalm learn`` learns documents), then is probed
on the facts that changed (plasticity) and the facts that did not (stability); θ carries to the next period.

Contract: ``r = TwikiRunner(cfg); r.setup(); r.run(); r.cleanup()`` (or :func:`run_twiki`). It is a ``ckl run``
(:class:`~taalm_dist.programs.ckl_run.CklRunner`: the same methods, θ on one process or under ZeRO-3, epoch
checkpoints, ``--resume auto``) whose epochs run through the periods: epoch ``e`` of ``P × E`` learns period
``(e − 1) // E`` (``twiki.epochs`` = E per period), and after a period's last epoch θ is probed and checkpointed, so
a stopped run resumes in the period it stopped in. mix_review replays windows of the earlier periods' diffsets;
recadam pulls toward θ before the first period; φ's corpus rule (:mod:`taalm_dist.familiarity`) judges each period's
diffset as its own corpus.

Scores per period, probe set ``changed`` / ``unchanged`` (:mod:`taalm_dist.data.twiki`): ``nll`` — the paper's
number, the mean over probes of the NLL (nats per token) of the object's tokens in TAALM's "Guess the object"
prompt; ``acc`` — the object tokens' accuracy in the same prompt; ``sro_ppl`` — TemporalWiki's own, exp of the mean
over probes of the per-token NLL of the text ``S R O``. Period 0 (before any learning) is scored too.

Run directory (``twiki.out_dir``): ``metrics.json`` (every period's row and the setup), ``periods.csv``,
``report.md``, ``probes.png`` (the changed and unchanged NLL per period), ``heatmap.html``, ``checkpoints/``,
``metrics.jsonl`` (MLflow too). Rank 0 writes every output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm import tqdm

from taalm_dist.config import TaalmConfig, TwikiRunConfig
from taalm_dist.data import twiki
from taalm_dist.data.documents import document_windows
from taalm_dist.data.jsonl_file import file_sha256
from taalm_dist.data.tokenize import TokenizedPair, encode_marked
from taalm_dist.engine import distributed as D
from taalm_dist.engine.preemption import run_to_end
from taalm_dist.errors import ConfigError, DataError
from taalm_dist.integrity import write_atomic
from taalm_dist.programs.ckl_run import CklRunner

PROBE_KINDS = ("changed", "unchanged")
SCORES = ("nll", "acc", "sro_ppl")


class TwikiRunner(CklRunner):
    """One TemporalWiki run; see the module docstring."""

    COMMAND = "twiki run"
    CONFIG = TwikiRunConfig
    SECTION = "twiki"
    SETTINGS = ("twiki.", "theta.", "loss.")

    # ---------------------------------------------------------------------------------------- setup
    def _check_inputs(self) -> None:
        if not self.c.data_dir:
            raise ConfigError("twiki.data_dir is not set: pass --data-dir (the TemporalWiki layout: the official files "
                              "or `taalm data twiki-synth --out DIR`)")

    def _refuse_method(self, m) -> None:
        if m.rule.needs_object_mask:
            raise ConfigError(f"twiki.method={m.name}: its weights need to know which tokens are the facts, and a "
                              "diffset line does not say; run finetune, taalm, rho1 or their combinations")

    def _files(self) -> dict[str, Path]:
        """Every file the run reads, by name (``<period>/diffset``, ``<period>/<kind>``)."""
        out = {}
        for p in self.periods:
            out[f"{p}/diffset"] = twiki.diffset_path(self.c.data_dir, p, self.c.subset)
            for kind in PROBE_KINDS:
                out[f"{p}/{kind}"] = twiki.probe_path(self.c.data_dir, p, kind)
        return out

    def _data_sha256(self) -> dict:
        return {f"twiki.data_dir/{k}": file_sha256(v) for k, v in self._files().items()}

    def _tracker_params(self) -> dict:
        return {"twiki.periods": ",".join(self.periods),
                **{f"twiki.{p}.lines": len(w) for p, w in self.lines.items()}}

    def _metrics_step(self) -> int:
        return self.epoch

    def _load_data(self) -> None:
        c = self.c
        available = twiki.find_periods(c.data_dir, c.subset)
        self.periods = list(c.periods) if c.periods else available
        missing = [p for p in self.periods if p not in available]
        if missing:
            raise DataError(f"twiki.periods {missing}: no such diffset in {Path(c.data_dir) / twiki.DIFFSETS} "
                            f"(it has {available})")
        self.lines, self.windows, self.probes = {}, {}, {}
        for p in self.periods:
            lines, dropped = twiki.read_diffset(twiki.diffset_path(c.data_dir, p, c.subset), c.max_docs)
            self.lines[p] = lines
            if dropped:
                self.notes.append(f"{p}: {dropped} diffset lines dropped by the filter (< {twiki.MIN_CHARS} characters "
                                  f"or < {twiki.MIN_LETTER_SHARE:.0%} letters)")
            self.windows[p] = document_windows(self.tokenizer, lines, c.window_tokens, c.window_overlap)
            self.probes[p] = {kind: self._probe_items(twiki.read_probes(twiki.probe_path(c.data_dir, p, kind),
                                                                        c.max_probes)) for kind in PROBE_KINDS}
        self.benchmark = "TemporalWiki layout"
        self._enter_period(self._period_of(self.epoch + 1))

    def _probe_items(self, probes: list[twiki.Probe]) -> dict[str, list[TokenizedPair]]:
        """The probes as evaluation items: ``prompt`` (the object's tokens marked) and ``sro`` (every token)."""
        prompt, sro = [], []
        for probe in probes:
            text, obj = twiki.probe_prompt(probe)
            ids, mask = encode_marked(self.tokenizer, text, [(len(text) - len(obj), len(text))])
            if not any(mask[1:]):
                raise DataError(f"{probe.where}: object {probe.object!r} has no token θ predicts in {text!r}")
            prompt.append(TokenizedPair(None, [], [], ids, mask, False))
            s = twiki.probe_sro(probe)
            ids, mask = encode_marked(self.tokenizer, s, [(0, len(s))])
            sro.append(TokenizedPair(None, [], [], ids, mask, False))
        return {"prompt": prompt, "sro": sro}

    def _setup_facts(self) -> dict:
        return {**super()._setup_facts(), "periods": self.periods,
                "data_dir": str(self.c.data_dir), "lines": {p: len(v) for p, v in self.lines.items()},
                "windows": {p: len(v) for p, v in self.windows.items()},
                "probes": {p: {k: len(v["prompt"]) for k, v in d.items()} for p, d in self.probes.items()}}

    # ------------------------------------------------------------------------------------- periods
    def _period_of(self, epoch: int) -> int:
        """The index of the period that (1-based, global) ``epoch`` learns (the last one past the end)."""
        return min((max(epoch, 1) - 1) // self.c.epochs, len(self.periods) - 1)

    def _enter_period(self, k: int) -> None:
        """Learn period ``k`` from now on: its windows, the earlier periods' as replay, φ's corpus rule on it."""
        self.period = k
        self.to_learn = self.windows[self.periods[k]]
        if self.m.change.replays:
            self.replay = [w for p in self.periods[:k] for w in self.windows[p]]
        self.not_to_forget = self.probes[self.periods[k]]["unchanged"]["prompt"]
        if getattr(getattr(self, "rule", None), "familiarity", None) is not None:
            self._set_corpus()

    # ------------------------------------------------------------------------------------- scoring
    def _scores(self, items: list[TokenizedPair]) -> tuple[float | None, float | None]:
        """(mean NLL, accuracy) of the marked tokens of ``items``; (None, None) for no items."""
        if not items:
            return None, None
        return self.theta_learner.nll_and_accuracy(items, self.pad_id, self.c.eval_batch_size, self.rt.to_device)

    def _evaluate_period(self, k: int | None, loss: float | None) -> dict:
        """θ's scores on period ``k``'s probes (``k`` None: before any learning, on the first period's)."""
        period = self.periods[k if k is not None else 0]
        row = {"epoch": self.epoch, "period": period if k is not None else None, "probes": period, "train_loss": loss}
        for kind in PROBE_KINDS:
            items = self.probes[period][kind]
            row[f"{kind}_nll"], row[f"{kind}_acc"] = self._scores(items["prompt"])
            sro, _ = self._scores(items["sro"])
            row[f"{kind}_sro_ppl"] = None if sro is None else math.exp(sro)
        self.rows.append(row)
        self.log.log_metrics({f"{period}/{k2}": v for k2, v in row.items()
                              if k2 not in ("epoch", "period", "probes") and v is not None}, step=self.epoch)
        return row

    # --------------------------------------------------------------------------------------- run
    def train_epoch(self, epoch: int) -> float:
        k = self._period_of(epoch)
        if k != self.period:
            self._enter_period(k)
        return super().train_epoch(epoch)

    def _run(self) -> dict:
        """Period 0's scores, then each period: its epochs, its probes, a checkpoint after every epoch."""
        total = len(self.periods) * self.c.epochs
        if not self.rows:
            self._write_heatmap()
            self._evaluate_period(None, None)
        bar = tqdm(range(self.epoch + 1, total + 1), desc=f"twiki {self.c.method}", initial=self.epoch, total=total,
                   disable=not (self.c.progress and D.is_main()), dynamic_ncols=True)
        for epoch in bar:
            loss = self.train_epoch(epoch)
            self.epoch = epoch
            if epoch % self.c.epochs == 0:
                row = self._evaluate_period(self.period, loss)
                bar.set_postfix(period=row["period"], changed=_cell(row["changed_nll"]))
            if self.cadence.due(epoch):
                self._save_checkpoint()
        payload = {"method": self.c.method, "periods": self.rows, "notes": self.notes, "setup": self._setup_facts()}
        if D.is_main():
            write_twiki_outputs(self.out, payload)
            for name in ("metrics.json", "periods.csv", "report.md", "probes.png", "heatmap.html", "config.yaml"):
                if (self.out / name).is_file():
                    self.log.log_artifact(self.out / name)
        return payload


# ------------------------------------------------------------------------------------------ outputs
def write_twiki_outputs(out: Path, payload: dict) -> None:
    """``metrics.json``, ``periods.csv``, ``report.md`` and ``probes.png`` of one run (atomic writes)."""
    write_atomic(out / "metrics.json", json.dumps(payload, indent=2) + "\n")
    columns = ["period", "epoch", "train_loss"] + [f"{k}_{s}" for k in PROBE_KINDS for s in SCORES]
    lines = [",".join(columns)] + [",".join("" if r.get(c) is None else str(r.get(c)) for c in columns)
                                   for r in payload["periods"]]
    write_atomic(out / "periods.csv", "\n".join(lines) + "\n")
    write_atomic(out / "report.md", f"# TemporalWiki: {payload['method']}\n\n{compare_table([payload])}\n")
    plot_probes([payload], out / "probes.png")


def load_twiki_run(path: str | Path) -> dict:
    """A finished run's ``metrics.json`` (a directory or the file), with ``path`` added.

    Raises:
        DataError: no metrics.json there, or not a ``twiki run``'s."""
    p = Path(path)
    f = p / "metrics.json" if p.is_dir() else p
    try:
        payload = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: not a finished `taalm twiki run` ({type(e).__name__}: {e})") from None
    if "periods" not in payload or "method" not in payload:
        raise DataError(f"{f} is not a `taalm twiki run` metrics.json (no periods); `taalm ckl compare` reads ckl runs")
    return {**payload, "path": str(p)}


def _cell(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def compare_table(runs: list[dict]) -> str:
    """Markdown: one row per run and learnt period — changed / unchanged NLL (the paper's), accuracy and
    TemporalWiki's S R O perplexity; period "before" is θ before any learning."""
    head = ("| run | method | period | changed NLL | unchanged NLL | changed acc | unchanged acc | changed S R O ppl "
            "| unchanged S R O ppl |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in runs:
        name = Path(r.get("path", r["method"])).name
        for p in r["periods"]:
            rows.append(f"| {name} | {r['method']} | {p['period'] or 'before (' + p['probes'] + ' probes)'} | "
                        + " | ".join(_cell(p.get(f"{k}_{s}")) for s in SCORES for k in PROBE_KINDS) + " |")
    return "\n".join([head, *rows])


def plot_probes(runs: list[dict], path: Path) -> None:
    """Changed and unchanged NLL per period, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for kind, ax in zip(PROBE_KINDS, axes):
        for r in runs:
            learnt = [p for p in r["periods"] if p["period"]]
            ax.plot([p["period"] for p in learnt], [p[f"{kind}_nll"] for p in learnt], marker="o",
                    label=Path(r.get("path", r["method"])).name)
        ax.set_title(f"{kind} probes")
        ax.set_xlabel("period learnt")
        ax.set_ylabel("object NLL (nats/token)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def run_twiki(cfg: TwikiRunConfig | TaalmConfig) -> tuple[TwikiRunner, dict]:
    """``setup``, ``run``, ``cleanup`` (always) of one :class:`TwikiRunner`; returns it and the run's result."""
    runner = TwikiRunner(cfg)
    return runner, run_to_end(runner, runner.run)
