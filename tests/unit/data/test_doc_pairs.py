"""Pairs from plain documents: the subject, the facts about it, tasks in other words than the document's, and the
agreement with human-written tasks."""

import json

from taalm_dist.cli import main as cli_main
from taalm_dist.data.doc_pairs import agreement, document_subject, facts, names, pair_rows, sentences
from taalm_dist.data.synth import synth_benchmark

DOC = ("Kliasas Vivpouv is a citizen of Ireland. As a child, Kliasas wanted to become a librarian. "
       "Kliasas's brother works as a pilot. Kliasas Vivpouv plays the cello in Vienna.")


def test_sentences_names_and_the_subject():
    assert len(sentences(DOC)) == 4
    s = sentences(DOC)[0]
    assert [s[a:b] for a, b in names(s)] == ["Kliasas Vivpouv", "Ireland"]
    assert [sentences(DOC)[1][a:b] for a, b in names(sentences(DOC)[1])] == ["Kliasas"]  # "As" starts the sentence
    assert document_subject(DOC) == "Kliasas Vivpouv"
    assert document_subject("a text without names at all.") is None


def test_facts_name_the_subject_in_full_and_ask_in_other_words():
    made = facts(DOC)
    assert [(f.relation, f.object) for f in made] == [("is a citizen", "Ireland"), ("plays the cello", "Vienna")]
    for f in made:  # the brother's job (first name only) is not a fact about the subject
        assert f.task.startswith("Guess the object. \n  subject is Kliasas Vivpouv , relation is ")
        assert f.sentence not in f.task and f.task.endswith(f.object)


def test_rows_and_agreement_with_the_synthetic_benchmarks_human_tasks():
    rows = synth_benchmark(n_to_learn=10, n_meta=60, seed=3)["meta_train"]
    made = pair_rows([(r["uuid"], r["evidence"]) for r in rows])
    assert made and all(r["evidence"] in {x["evidence"] for x in rows} for r in made)
    got = agreement(rows)
    assert got["docs"] == 60 and got["subject"] == 1.0  # every synthetic paragraph is about its person
    assert got["precise"] > 0.5 and 0.3 < got["covered"] <= 1.0
    assert agreement([{"evidence": DOC, "object": "Ireland", "subject": "Kliasas Vivpouv"}]) == {
        "docs": 1, "made": 2, "covered": 1.0, "precise": 0.5, "subject": 1.0}


def test_the_command_writes_train_and_validation_by_document_and_never_overwrites(tmp_path, capsys):
    rows = synth_benchmark(n_to_learn=10, n_meta=60, seed=3)["meta_train"]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": r["evidence"]}) + "\n" for r in rows))
    assert cli_main(["data", "pairs", "--docs", str(docs), "--out", str(tmp_path / "p"), "--val-share", "0.2"]) == 0
    train = [json.loads(x) for x in (tmp_path / "p" / "meta_train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "p" / "meta_val.jsonl").read_text().splitlines()]
    assert train and val and not {r["evidence"] for r in train} & {r["evidence"] for r in val}
    assert cli_main(["data", "pairs", "--docs", str(docs), "--out", str(tmp_path / "p")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "none.jsonl").write_text(json.dumps({"text": "no names here."}) + "\n")
    assert cli_main(["data", "pairs", "--docs", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "q")]) == 2
    assert "only 0 of 1 documents gave a task" in capsys.readouterr().err
