"""`taalm data mix`: every row of every source once, tagged and shuffled by the seed; bad input named."""

import json

import pytest

from taalm_dist.cli import main
from taalm_dist.data import load_pairs
from taalm_dist.data.lama_ckl import write_pairs
from taalm_dist.data.mix import mix_pairs, parse_source
from taalm_dist.data.synth import synth_benchmark
from taalm_dist.errors import DataError


@pytest.fixture
def two_sources(tmp_path):
    a = synth_benchmark(1, 12, seed=0)["meta_train"]
    b = synth_benchmark(1, 8, seed=1)["meta_train"]
    for r in b:
        r["uuid"] = "b-" + r["uuid"]
    write_pairs(a, tmp_path / "a" / "meta_train.jsonl")
    write_pairs(b, tmp_path / "b" / "meta_train.jsonl")
    return tmp_path / "a" / "meta_train.jsonl", tmp_path / "b" / "meta_train.jsonl", a, b


def test_every_row_once_with_its_source_and_the_seed_decides_the_order(tmp_path, two_sources):
    pa, pb, a, b = two_sources
    counts = mix_pairs([("lama", pa), ("synth", pb)], tmp_path / "m0.jsonl", seed=0)
    assert counts == {"lama": 12, "synth": 8}
    rows = [json.loads(line) for line in (tmp_path / "m0.jsonl").read_text().splitlines()]
    assert sorted(r["uuid"] for r in rows) == sorted(r["uuid"] for r in a + b)
    assert {r["uuid"]: r["source"] for r in rows} == {**{r["uuid"]: "lama" for r in a}, **{r["uuid"]: "synth" for r in b}}
    assert [r["uuid"] for r in rows] != [r["uuid"] for r in a + b]  # shuffled, not concatenated
    mix_pairs([("lama", pa), ("synth", pb)], tmp_path / "same" / "m.jsonl", seed=0)
    mix_pairs([("lama", pa), ("synth", pb)], tmp_path / "other" / "m.jsonl", seed=1)
    assert (tmp_path / "same" / "m.jsonl").read_text() == (tmp_path / "m0.jsonl").read_text()
    assert (tmp_path / "other" / "m.jsonl").read_text() != (tmp_path / "m0.jsonl").read_text()
    pairs, report = load_pairs(tmp_path / "m0.jsonl")  # what meta-training reads
    assert len(pairs) == 20 and report.skipped == 0
    record = json.loads((tmp_path / "mix.json").read_text())
    assert [(s["name"], s["rows"]) for s in record["sources"]] == [("lama", 12), ("synth", 8)]
    assert all(len(s["sha256"]) == 64 for s in record["sources"])


def test_max_per_source_takes_the_first_rows(tmp_path, two_sources):
    pa, pb, a, b = two_sources
    assert mix_pairs([("a", pa), ("b", pb)], tmp_path / "m.jsonl", max_per_source=5) == {"a": 5, "b": 5}
    uuids = {json.loads(line)["uuid"] for line in (tmp_path / "m.jsonl").read_text().splitlines()}
    assert uuids == {r["uuid"] for r in a[:5] + b[:5]}


def test_refusals_name_the_problem(tmp_path, two_sources):
    pa, pb, _, _ = two_sources
    out = tmp_path / "m.jsonl"
    mix_pairs([("a", pa), ("b", pb)], out)
    before = out.read_text()
    with pytest.raises(DataError, match="exists.*--overwrite"):
        mix_pairs([("a", pa), ("b", pb)], out, seed=5)
    assert out.read_text() == before  # nothing written
    with pytest.raises(DataError, match="shares? a fact|also in"):
        mix_pairs([("a", pa), ("again", pa)], tmp_path / "dup.jsonl")
    with pytest.raises(DataError, match="different names"):
        mix_pairs([("a", pa), ("a", pb)], tmp_path / "same_name.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"evidence": "x", "task_descriptive": "y is z", "object": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1.*object 'q' is not found"):
        mix_pairs([("a", pa), ("bad", bad)], tmp_path / "m2.jsonl")
    assert not (tmp_path / "m2.jsonl").exists()
    with pytest.raises(DataError, match="NAME=PATH"):
        parse_source("=x.jsonl")
    assert parse_source("lama=dir/meta_train.jsonl") == ("lama", tmp_path.__class__("dir/meta_train.jsonl"))
    assert parse_source(str(pa))[0] == "a"  # a bare path is named by its directory


def test_cli_writes_the_mix_and_refuses_an_existing_file(tmp_path, two_sources, capsys):
    pa, pb, _, _ = two_sources
    out = tmp_path / "mixed" / "meta_train.jsonl"
    assert main(["data", "mix", f"lama={pa}", f"synth={pb}", "--out", str(out)]) == 0
    assert "lama: 12 rows, synth: 8 rows; 20 shuffled rows" in capsys.readouterr().out
    assert main(["data", "mix", f"lama={pa}", f"synth={pb}", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["data", "mix", f"lama={pa}", f"synth={pb}", "--out", str(out), "--overwrite", "--seed", "3"]) == 0
