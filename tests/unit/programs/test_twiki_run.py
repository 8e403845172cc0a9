"""`twiki run` on a tiny θ and a small fictional TemporalWiki: the methods run period by period, θ carries over,
probes are scored after each period, an interrupted run resumes exactly, and bad input is refused clearly."""

import dataclasses
import json
import os
import signal

import pytest

from taalm_dist.cli import main as cli_main
from taalm_dist.config import ModelSourceConfig, PhiConfig, TinyModelConfig, load_config
from taalm_dist.data import toy_rows
from taalm_dist.data.twiki_synth import write_twiki_synth
from taalm_dist.errors import ConfigError, DataError
from taalm_dist.models import build_phi, save_phi
from taalm_dist.programs.twiki_run import TwikiRunner, compare_table, load_twiki_run

TINY = ["theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("twiki")
    write_twiki_synth(d / "data", entities=6, periods=3, change_rate=0.34, noise_lines=1, seed=0)
    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)))
    save_phi(build_phi(cfg), cfg, d / "phi")
    return d


def _cfg(world, out, method="finetune", *extra):
    return load_config(None, TINY + [f"twiki.data_dir={world / 'data'}", f"twiki.method={method}",
                                     f"twiki.out_dir={out}", f"twiki.phi_path={world / 'phi'}", "twiki.max_probes=8",
                                     "twiki.batch_size=2", "twiki.window_tokens=64", "twiki.window_overlap=8",
                                     "twiki.progress=false", "tracking.mlflow=false", *extra])


def _run(cfg) -> tuple[TwikiRunner, dict]:
    runner = TwikiRunner(cfg)
    try:
        runner.setup()
        return runner, runner.run()
    finally:
        runner.cleanup()


@pytest.mark.parametrize("method", ["finetune", "taalm+kadapter", "mix_review", "recadam"])
def test_each_method_learns_period_by_period_and_is_probed_after_each(world, tmp_path, method):
    runner, run = _run(_cfg(world, tmp_path / method, method))
    assert [r["period"] for r in run["periods"]] == [None, "0809", "0910", "1011"]
    assert [r["epoch"] for r in run["periods"]] == [0, 1, 2, 3]
    before, first, later = run["periods"][0], run["periods"][1], run["periods"][2]
    assert before["probes"] == "0809" and before["unchanged_nll"] is None  # nothing stated before the articles
    assert all(r["changed_nll"] > 0 and r["changed_sro_ppl"] > 1 and 0 <= r["changed_acc"] <= 1
               for r in run["periods"])
    assert later["unchanged_nll"] > 0 and first["train_loss"] is not None
    for name in ("metrics.json", "periods.csv", "report.md", "probes.png", "heatmap.html"):
        assert (tmp_path / method / name).is_file(), name
    assert run["setup"]["periods"] == ["0809", "0910", "1011"] and run["setup"]["probes"]["0910"]["changed"] == 2
    if method == "mix_review":  # the earlier periods' windows, none of the current one's
        assert len(runner.replay) == len(runner.windows["0809"]) + len(runner.windows["0910"])
    else:
        assert runner.replay == []
    table = compare_table([load_twiki_run(tmp_path / method)])
    assert table.count(f"| {method} |") == 4 and "before (0809 probes)" in table


def test_theta_carries_from_period_to_period(world, tmp_path):
    _, whole = _run(_cfg(world, tmp_path / "whole"))
    _, last_only = _run(_cfg(world, tmp_path / "last", "finetune", "twiki.periods=[1011]"))
    # the same probes of 1011, after learning 0809 and 0910 first or not
    assert whole["periods"][-1]["changed_nll"] != last_only["periods"][-1]["changed_nll"]
    assert last_only["periods"][0]["probes"] == "1011" and [r["period"] for r in last_only["periods"]] == [None, "1011"]


def test_an_interrupted_run_resumes_in_its_period_exactly(world, tmp_path):
    _, whole = _run(_cfg(world, tmp_path / "whole", "taalm", "twiki.epochs=2"))
    cfg = _cfg(world, tmp_path / "run", "taalm", "twiki.epochs=2")
    runner = TwikiRunner(cfg)
    update = runner._theta_update
    first_period_updates = []

    def update_then_signal(items):
        loss = update(items)
        if runner.epoch == 2 and not first_period_updates:  # in period 0910's first epoch
            first_period_updates.append(runner.step)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    runner._theta_update = update_then_signal
    runner.setup()
    try:
        with pytest.raises(Exception, match="during epoch 3;.*after epoch 2; continue with --resume auto"):
            runner.run()
    finally:
        runner.cleanup("KILLED")
    resumed = TwikiRunner(dataclasses.replace(cfg, twiki=dataclasses.replace(cfg.twiki, resume="auto")))
    try:
        resumed.setup()
        assert resumed.epoch == 2 and [r["period"] for r in resumed.rows] == [None, "0809"]
        run = resumed.run()
    finally:
        resumed.cleanup()
    assert run["periods"] == whole["periods"]  # every period's scores, bit for bit
    assert [r["period"] for r in json.loads((tmp_path / "run" / "metrics.json").read_text())["periods"]] == \
        [None, "0809", "0910", "1011"]


def test_phis_corpus_rule_judges_each_periods_diffset(world, tmp_path):
    import shutil

    from taalm_dist.familiarity import document_ids, make_familiarity
    from taalm_dist.models.train_attention import load_phi_tokenizer

    phi = tmp_path / "phi"
    shutil.copytree(world / "phi", phi)
    tok = load_phi_tokenizer(phi)
    texts = [r["evidence"] for r in toy_rows(40, seed=5, filler_words=6)]  # words the toy tokenizer knows
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ids = document_ids(tmp_path / "docs.jsonl", tok)
    make_familiarity(phi, ids[:30], ids[30:], {"test": True}).save(phi)
    runner, run = _run(_cfg(world, tmp_path / "run", "taalm", f"twiki.phi_path={phi}"))
    corpus = run["setup"]["phi_abstained"]["corpus"]
    assert corpus["n"] == len(runner.windows["1011"])  # the last period's windows were the last corpus judged


def test_bad_input_is_refused_clearly(world, tmp_path):
    with pytest.raises(DataError, match=r"twiki.periods \['1112'\]: no such diffset"):
        _run(_cfg(world, tmp_path / "a", "finetune", "twiki.periods=[1112]"))
    with pytest.raises(ConfigError, match="twiki.data_dir is not set"):
        _run(_cfg(world, tmp_path / "b", "finetune", "twiki.data_dir=''"))
    with pytest.raises(ConfigError, match="twiki.method=oracle: its weights need to know which tokens are the facts"):
        _run(_cfg(world, tmp_path / "c", "oracle"))
    with pytest.raises(ConfigError, match=r"twiki.method='taalm\+nope' is not one of \['finetune', 'oracle'"):
        _run(_cfg(world, tmp_path / "e", "taalm+nope"))
    with pytest.raises(ConfigError, match="needs twiki.phi_path"):
        _run(_cfg(world, tmp_path / "d", "taalm", "twiki.phi_path=null"))


def test_the_command_line_runs_compares_and_makes_phis_pairs(world, tmp_path, capsys):
    base = ["twiki", "run", "--data-dir", str(world / "data"), "--method", "finetune", *TINY, "twiki.max_probes=4",
            "twiki.periods=[0809,0910]", "twiki.progress=false", "tracking.mlflow=false"]
    assert cli_main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "after period 0910, changed-probe NLL" in capsys.readouterr().out
    assert cli_main(["twiki", "compare", str(tmp_path / "a"), "--plot", str(tmp_path / "p.png")]) == 0
    assert "| a | finetune | 0910 |" in capsys.readouterr().out and (tmp_path / "p.png").is_file()
    assert cli_main(["twiki", "compare", str(world)]) == 2  # not a run: a clear error
    assert "not a finished `taalm twiki run`" in capsys.readouterr().err
    assert cli_main(["twiki", "pairs", "--data-dir", str(world / "data"), "--period", "0809", "--out",
                     str(tmp_path / "pairs"), "--val", "8"]) == 0
    train = [json.loads(x) for x in (tmp_path / "pairs" / "meta_train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "pairs" / "meta_val.jsonl").read_text().splitlines()]
    assert len(train) + len(val) == 48 and 8 <= len(val) < 16  # whole lines of 8 facts each: one line
    assert not {r["evidence"] for r in train} & {r["evidence"] for r in val}  # whole lines held out
    assert cli_main(["twiki", "pairs", "--data-dir", str(world / "data"), "--period", "0809", "--out",
                     str(tmp_path / "pairs")]) == 2  # never overwritten unasked
