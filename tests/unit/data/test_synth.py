"""`taalm data synth`: the synthetic CKL benchmark is valid LAMA-CKL, deterministic, and its splits are disjoint."""

import json

import pytest

from taalm_dist.data import load_pairs
from taalm_dist.data.common_facts import common_facts
from taalm_dist.data.synth import DISTRACTORS, benchmark_of, fictional_names, synth_benchmark, write_synth
from taalm_dist.errors import DataError


def test_same_seed_same_rows_other_seed_other_rows():
    assert synth_benchmark(10, 20, seed=3) == synth_benchmark(10, 20, seed=3)
    assert synth_benchmark(10, 20, seed=3)["variant"] != synth_benchmark(10, 20, seed=4)["variant"]


def test_to_learn_and_meta_entities_are_disjoint_and_fictional():
    files = synth_benchmark(50, 200, seed=0)
    tl = {r["subject"] for r in files["variant"]}
    meta = {r["subject"] for r in files["meta_train"]}
    assert len(tl) == 50 and len(meta) == 200 and not tl & meta
    real = {f[1] for f in common_facts()}
    assert not (tl | meta) & real


def test_fact_is_paraphrased_among_distractors_that_name_other_objects_of_its_type():
    from taalm_dist.data.synth import RELATIONS, TYPED_DISTRACTORS

    objects = {code: pool for code, *_, pool in RELATIONS}
    for row in synth_benchmark(60, 0, seed=1, distractors=4)["variant"]:
        task, obj, evidence = row["task_descriptive"], row["object"], row["evidence"]
        assert task.endswith(obj)
        assert task not in evidence  # the task asks in other words than the evidence
        assert evidence.count(obj) == 1  # the object's one mention is the fact (oracle mask is exact)
        first = row["subject"].split()[0]
        generic = sum(evidence.count(d.format(s=first)) for d in DISTRACTORS)
        assert generic == 2
        same_type = [x for x in objects[row["relation_code"]] if x != obj and x in evidence]
        assert same_type, evidence  # another candidate of the asked type is in the document
        assert row["masked_evidence"].count("[MASK]") == 1 and obj not in row["masked_evidence"]
    assert len(TYPED_DISTRACTORS) >= 12


def test_written_files_load_as_lama_ckl_and_overwrite_is_refused(tmp_path):
    counts = write_synth(tmp_path, n_to_learn=5, n_meta=7, seed=0)
    assert counts == {"variant": 5, "invariant_descriptive": len(common_facts()),
                      "invariant_schematic": len(common_facts()), "meta_train": 7}
    for stem in counts:
        pairs, report = load_pairs(tmp_path / f"{stem}.jsonl")
        assert report.skipped == 0 and len(pairs) == counts[stem]
        assert all(p.task.endswith(p.object) for p in pairs)
    uids = [json.loads(line)["uuid"] for line in (tmp_path / "variant.jsonl").read_text().splitlines()]
    assert len(set(uids)) == 5
    with pytest.raises(DataError, match="overwrite"):
        write_synth(tmp_path, n_to_learn=5, n_meta=7)


def test_common_facts_end_with_their_object_and_bad_sizes_are_refused():
    facts = common_facts()
    assert len(facts) >= 80 and all(sentence.endswith(obj) for _, _, sentence, obj in facts)
    with pytest.raises(DataError, match="n_to_learn"):
        synth_benchmark(0, 5)
    with pytest.raises(DataError, match="distractors"):
        synth_benchmark(5, 5, distractors=len(DISTRACTORS) + 1)


def test_fictional_names_are_distinct():
    import random

    names = fictional_names(500, random.Random(0))
    assert len(set(names)) == 500 and all(len(n.split()) == 2 for n in names)


def test_its_rows_are_told_apart_from_lama_ckl_rows():
    rows = synth_benchmark(n_to_learn=3, n_meta=2)
    assert all(benchmark_of([r["uuid"] for r in rows[f]]) == "synthetic" for f in rows)
    assert benchmark_of(["synth-tl-0-0", "0f3c5a2e-1b7d-4c55-9a0e-2d1f6b7c8e90"]) == "LAMA-CKL"
    assert benchmark_of([]) == "LAMA-CKL"
