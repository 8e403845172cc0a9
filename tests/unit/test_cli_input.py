"""Bad command-line input gets one named line and exit 2 (second reliability probe, 2026-12-06: each of these gave a
traceback, a wrong success or a refusal without a hint)."""

import json

import pytest

from taalm_dist.cli import main


@pytest.mark.parametrize("argv, message", [
    (["data", "toy", "--out", "X", "--n", "-3"], "argument --n: -3 must be >= 1"),
    (["data", "toy", "--out", "X", "--n-val", "0"], "argument --n-val: 0 must be >= 1"),
    (["data", "synth", "--out", "X", "--n-to-learn", "zero"], "argument --n-to-learn: 'zero' is not an integer"),
])
def test_counts_out_of_range_are_named(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([a.replace("X", str(tmp_path / "d")) for a in argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_overrides_split_by_an_option_get_a_hint(capsys):
    with pytest.raises(SystemExit) as e:
        main(["learn", "learn.lr=1", "--phi", "none", "learn.seed=2", "--docs", "D"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: learn.seed=2" in err
    assert "put every key=value override after the options, together" in err


@pytest.mark.parametrize("content", ["{\"summary\": ", "[1, 2]", "\xff\xfe"])
def test_ckl_compare_names_a_damaged_metrics_file(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_bytes(content.encode("latin-1"))
    assert main(["ckl", "compare", str(run)]) == 2
    err = capsys.readouterr().err
    assert "metrics.json" in err and "Traceback" not in err


def test_ckl_compare_still_reads_a_good_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"summary": {}}))
    from taalm_dist.ckl.report import load_run

    assert load_run(run)["run_name"] == "run"
