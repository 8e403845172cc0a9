"""`taalm ckl compare`'s table: one row per run, labelled by method, and by directory where a method repeats."""

import json

import pytest

from taalm_dist.ckl.report import load_run, provenance_table, summary_table, write_report
from taalm_dist.errors import DataError


def _run(path, method, top):
    path.mkdir(parents=True)
    summary = {"top_acc": top, "epoch": 2, "nf_acc": 0.8, "total_knowledge": top + 0.8}
    (path / "metrics.json").write_text(json.dumps({"method": method, "summary": summary, "epochs": []}))
    return path


def test_rows_are_labelled_by_method_and_by_directory_when_it_is_not_the_method(tmp_path):
    runs = [load_run(_run(tmp_path / "finetune", "finetune", 0.1)),
            load_run(_run(tmp_path / "taalm", "taalm", 0.3)),
            load_run(_run(tmp_path / "synth_phi_on_lama", "taalm", 0.2))]
    table = summary_table(runs).splitlines()
    assert table[2].startswith("| finetune | 0.100 | 2 | 0.800 | 0.900 |")
    assert table[3].startswith("| taalm | 0.300 |")
    assert table[4].startswith("| taalm (synth_phi_on_lama) | 0.200 |")


def test_a_directory_without_metrics_is_named():
    with pytest.raises(DataError, match="no metrics.json"):
        load_run("/nonexistent/run")


def test_provenance_names_date_machine_wall_time_and_phi(tmp_path):
    run = load_run(_run(tmp_path / "synth_phi_on_lama", "taalm", 0.2))
    run["setup"] = {"date": "2026-12-04", "machine": "x86_64, 1 threads", "wall_s": 610.4, "resumed_at_epoch": None,
                    "phi": "runs/demo/meta_train/phi", "phi_weight_floor": 0.01, "phi_uniform_share": 0.5,
                    "phi_abstained": {"docs_weighed": 300, "mean_share": 0.93, "uniform": 270}}
    resumed = load_run(_run(tmp_path / "finetune", "finetune", 0.1))
    resumed["setup"] = {"date": "2026-12-05", "machine": "x86_64, 2 threads", "wall_s": 100.0, "resumed_at_epoch": 3,
                        "phi": None, "phi_weight_floor": None}
    lines = provenance_table([run, resumed]).splitlines()
    assert lines[2] == ("| synth_phi_on_lama | 2026-12-04 | x86_64, 1 threads | 610 | runs/demo/meta_train/phi (floor 0.01) "
                        "(uniform share 0.5) (abstained: mean share 0.93, 270 of 300 documents uniform) |")
    assert lines[3] == "| finetune | 2026-12-05 | x86_64, 2 threads | 100+ | – |"
    run["setup"]["phi_abstained"]["corpus"] = {"n": 60, "median": 1.13, "known_n": 0.78, "unknown_n": 1.05, "share": 1.0}
    assert provenance_table([run]).splitlines()[2].endswith("270 of 300 documents uniform; corpus share 1.00) |")


def test_the_papers_row_stands_beside_lama_ckl_runs_only(tmp_path):
    lama = load_run(_run(tmp_path / "lama", "taalm", 0.3))
    synth = load_run(_run(tmp_path / "synth", "taalm", 0.2))
    synth["setup"] = {"benchmark": "synthetic"}
    rows = summary_table([lama, synth]).splitlines()
    assert rows[2].endswith("| 0.429 | 4 | 0.898 | 1.327 |")  # no setup.benchmark (older runs): LAMA-CKL
    assert rows[3].endswith("| – | – | – | – |")
    setup = {"theta": "m", "trainable": "lora", "epochs": 2, "lr": 1e-4, "batch_size": 4, "to_learn": 1,
             "not_to_forget": 1, "date": "2026-12-06", "machine": "x86_64"}
    for run, name in ((lama, "LAMA-CKL"), (synth, "synthetic")):
        run["setup"] = {**setup, "benchmark": name}
        write_report(tmp_path / run["run_name"], run)
    assert "Paper: Table 1" in (tmp_path / "lama" / "report.md").read_text()
    report = (tmp_path / "synth" / "report.md").read_text()
    assert report.startswith("# synthetic run: taalm") and "Paper" not in report
