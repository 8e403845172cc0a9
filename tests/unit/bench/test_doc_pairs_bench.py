"""`taalm bench doc-pairs`: the agreement of made tasks with human-written ones, per set, as one JSON object."""

import json

import pytest

from taalm_dist.bench.doc_pairs import main
from taalm_dist.data.synth import synth_benchmark
from taalm_dist.errors import DataError


def test_the_bench_scores_each_set_and_names_a_bad_row(tmp_path, capsys):
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synth_benchmark(n_to_learn=5, n_meta=40, seed=1)["meta_train"]))
    main([f"synth={path}"])
    out = json.loads(capsys.readouterr().out)
    got = out["sets"]["synth"]["last"]
    assert got["docs"] == 40 and got["subject"] == 1.0 and got["precise"] > 0.5 and "wall_s" in got
    assert out["machine"]["cpu_count"] >= 1 and out["model"] is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({"evidence": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: a row needs the strings evidence and object"):
        main([f"bad={tmp_path / 'bad.jsonl'}"])
