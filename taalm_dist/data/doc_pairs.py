"""Meta-training pairs from plain documents, with no hand-written task (``taalm data pairs``).

φ is meta-trained on (document, task) pairs: θ learns the document, then is scored on the task's answer. A user has
documents and no tasks, so this makes them: in each document, the facts about its **subject** (the name it is
about) become tasks that ask for a fact's **object** in other words than the document's — the schematic form of
LAMA-CKL's tasks, ``Guess the object. \\n  subject is S , relation is R , object is O`` — never the document's
sentence itself (φ would learn a position, not a fact).

1. Sentences are split at ``. ! ?`` before a capital; **names** are runs of capitalised words (a sentence's first
   word only when the next is capitalised too) and numbers.
2. The **subject** is the name the document mentions most, a name counting each mention of any of its words
   (``Kliasas Vivpouv`` gathers ``Kliasas`` too; a tie goes to the shorter name); a document without a name of two
   mentions has no subject.
3. A **fact** is a sentence that names the subject in full (a sentence with only a part of it is often about
   someone close: "Kliasas's brother works as a pilot"), and its **object** the span the ``method`` picks:
   ``last`` — the sentence's last name or number, else its last word; ``surprise`` — of those candidates (every name
   and number, and the last word), the one θ finds least likely after the sentence's start (a fact θ does not
   know; needs a model); ``every`` — each candidate its own task (recall before precision: the fact a person would
   ask is among them more often, beside tasks about words that are not facts); ``rare`` — of every word of the
   sentence that is not a function word or the subject (names and numbers whole, wherever they stand: "*Madrid* is
   where X was born"), the one in the fewest documents of the corpus (a fact is what sets a document apart; the
   words that frame it recur), the first in that order that gives a relation.
4. The **relation** is the words between the subject and the object (or after the object when it comes first),
   without leading and trailing function words; with ``rare``, when none are left ("By profession, X is a surgeon"),
   the sentence's other words that are neither function words nor names ("profession"); a fact with no relation
   words is dropped.
   ``links`` needs no subject (a one-sentence passage — LAMA-CKL's web text — seldom names anything twice): in each
   sentence, each two neighbouring names (a run broken at punctuation: "Gruyères (Switzerland)" is two) with relation
   words between them is a fact, the earlier name its subject and the later its object, a sentence's closest pairs
   first.
   ``keywords`` needs no subject either: of each sentence's content words and names, the ones the corpus uses far
   more than the language does (a **keyword**: a fact's object is what a corpus is about — LAMA-CKL's human tasks ask
   "jazz", "bishop", "opera", words of many of its passages that English seldom uses, where ``rare`` finds words of a
   single passage and ``links`` only names) become the objects, the sentence's closest other name the subject, the
   words between them the relation (the copula rule of ``rare`` where none are left); the two best of a sentence
   (:data:`KEYWORDS_PER_SENTENCE`). A word's keyness is log(documents of the corpus holding it) + log(its rarity in
   θ's tokenizer): a byte-pair vocabulary numbers its tokens in merge order, roughly by frequency, so a one-token
   word's id grows with its rank (Zipf: frequency ∝ 1/rank) and a word of several tokens counts as the vocabulary's
   size per token; a word of one document ranks after every other (needs θ's tokenizer: ``--model``).
5. A fact whose subject or object runs past ``MAX_NAME_WORDS`` words, or whose relation past ``MAX_RELATION_WORDS``,
   is dropped: in a list, a table or a run of titles (web text: "Galerie X, Tours (France) Galerie Y, Paris ...")
   capitalised words run on for lines and the "relation" between two of them is not one (LAMA-CKL's passages made
   tasks of up to 2,558 characters; its human tasks' subjects have at most 6 words, the synthetic ones' relations 7).
   So is a fact whose object stands in the document only inside other words (a name in unspaced Chinese or Japanese
   text: "富士急行8000系"): meta-training's loader refuses such a row, its tokens are not the object's.

Every choice is measured against human-written tasks where both exist (``taalm bench doc-pairs``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from taalm_dist.config import PAIR_METHODS

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z])")
_WORD = re.compile(r"[A-Za-zÀ-ÿ0-9][\w'’\-]*")
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with as and or is are was were be been has have had its his her their "
    "this that these those which who whom it he she they there here also then than into onto over under since "
    "until while during after before about".split())
MAX_NAME_WORDS = 6
"""The most words a made task's subject or object may have (module docstring, 5.)."""
MAX_RELATION_WORDS = 8
"""The most words a made task's relation may have (module docstring, 5.)."""
TASK_TEMPLATE = "Guess the object. \n  subject is {s} , relation is {r} , object is {o}"
"""LAMA-CKL's schematic task (and TAALM's TemporalWiki probe): the made tasks read like the benchmark's."""


@dataclass(frozen=True)
class Fact:
    """One made task: the document's ``subject``, a ``relation`` phrase, the ``object`` asked, the ``sentence`` it
    came from."""

    subject: str
    relation: str
    object: str
    sentence: str

    @property
    def task(self) -> str:
        return TASK_TEMPLATE.format(s=self.subject, r=self.relation, o=self.object)


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (at ``. ! ?`` followed by a capital or an opening quote)."""
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def names(sentence: str, split_at_punctuation: bool = False) -> list[tuple[int, int]]:
    """Character spans of the names (runs of capitalised words; the first word of the sentence only in a run of two or
    more) and numbers in ``sentence``; ``split_at_punctuation``: a run also ends where anything but spaces stands
    between two of its words (a period after an initial excepted: "John F. Kennedy")."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(sentence)]
    out, run = [], []

    def close():
        if run and not (run[0][0] == words[0][0] and len(run) == 1):
            out.append((run[0][0], run[-1][1]))
        run.clear()

    for start, end, w in words:
        if w[0].isupper() or w[0].isdigit():
            if run and split_at_punctuation:
                gap, before = sentence[run[-1][1]:start], sentence[run[-1][0]:run[-1][1]]
                if not (gap.isspace() or (gap.strip() == "." and len(before) == 1)):
                    close()
            run.append((start, end))
        else:
            close()
    close()
    return out


def document_subject(text: str) -> str | None:
    """The name ``text`` is about: the name with the most mentions of any of its words (two at least)."""
    found = [s[a:b] for s in sentences(text) for a, b in names(s)]
    words = Counter(w for n in found for w in set(n.split()))
    scored = [(sum(words[w] for w in set(n.split())), -len(n.split()), n) for n in set(found) if not n.isdigit()]
    if not scored:
        return None
    best = max(scored)
    return best[2] if best[0] >= 2 else None


def _keeps(text: str, relation: str, answer: str) -> bool:
    """Whether a fact of ``text`` asking ``answer`` through ``relation`` is made (module docstring, 4. and 5.): a
    relation of 1 to ``MAX_RELATION_WORDS`` words, an answer of at most ``MAX_NAME_WORDS`` that is not a function word
    and stands in ``text`` as a word of its own (meta-training's loader refuses an object found only inside other
    words: :func:`~taalm_dist.data.lama_ckl.object_spans`)."""
    from taalm_dist.data.lama_ckl import object_spans

    return bool(relation and len(relation.split()) <= MAX_RELATION_WORDS and answer.lower() not in FUNCTION_WORDS
                and len(answer.split()) <= MAX_NAME_WORDS and object_spans(text, answer))


def _relation(sentence: str, subj: tuple[int, int], obj: tuple[int, int], context: bool = False) -> str:
    between = sentence[subj[1]:obj[0]] if subj[1] <= obj[0] else sentence[obj[1]:subj[0]]
    words = [w.lower() for w in _WORD.findall(between)]
    while words and words[0] in FUNCTION_WORDS - {"is", "was", "has", "are", "were", "had"}:
        words.pop(0)
    while words and words[-1] in FUNCTION_WORDS:
        words.pop()
    if not words and context:  # a copula between them: the sentence's other words say what is asked (not its names)
        named = {i for a, b in names(sentence) for i in range(a, b)}
        words = [m.group().lower() for m in _WORD.finditer(sentence) if m.group().lower() not in FUNCTION_WORDS
                 and m.start() not in named and not subj[0] <= m.start() < subj[1] and not obj[0] <= m.start() < obj[1]]
    return " ".join(words)


def candidates(sentence: str, subject: str, wide: bool = False) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """The subject's span in ``sentence`` (None: not named in full) and the object candidates: every name or number
    that is not part of the subject, and the sentence's last word; ``wide``: every word that is not a function word
    or part of the subject too (a name or number whole, the sentence's first word included), in sentence order."""
    at = sentence.find(subject)
    if at < 0:
        return None, []
    subj = (at, at + len(subject))
    spans = [s for s in names(sentence) if s[1] <= subj[0] or s[0] >= subj[1]]
    if wide:
        inside = {i for a, b in [*spans, subj] for i in range(a, b)}
        spans += [(m.start(), m.end()) for m in _WORD.finditer(sentence)
                  if m.start() not in inside and m.group().lower() not in FUNCTION_WORDS]
        return subj, sorted(spans)
    last = list(_WORD.finditer(sentence))
    if last and (last[-1].start(), last[-1].end()) not in spans and last[-1].start() >= subj[1]:
        spans.append((last[-1].start(), last[-1].end()))
    return subj, spans


def facts(text: str, pick=None, max_facts: int = 4) -> list[Fact]:
    """The made tasks of one document (module docstring): at most ``max_facts``, in document order. ``pick(sentence,
    spans) -> span`` chooses each sentence's object among its candidates (default: the last name or number, else the
    last word); a ``pick`` that returns a list of spans makes a task of each (:func:`pick_every`), one whose
    ``ranked`` is true a task of the first that gives a relation (:class:`RarePicker`); a ``pick`` whose ``wide`` is
    true is offered every content word (:func:`candidates`) and, where only a copula joins subject and object, the
    sentence's other words as the relation (module docstring, 4.)."""
    if hasattr(pick, "facts"):  # a method that finds its own subjects (links)
        return pick.facts(text, max_facts)
    subject = document_subject(text)
    if subject is None or len(subject.split()) > MAX_NAME_WORDS:
        return []
    pick = pick or pick_last
    out = []
    for s in sentences(text):
        subj, spans = candidates(s, subject, wide=getattr(pick, "wide", False))
        if not spans:
            continue
        picked = pick(s, spans)
        made = []
        for obj in picked if isinstance(picked, list) else [picked]:
            relation = _relation(s, subj, obj, context=getattr(pick, "wide", False))
            answer = s[obj[0]:obj[1]]
            if _keeps(text, relation, answer):
                made.append(Fact(subject, relation, answer, s))
        for f in made[:1] if getattr(pick, "ranked", False) else made:
            out.append(f)
            if len(out) == max_facts:
                return out
    return out


def pick_last(sentence: str, spans: list[tuple[int, int]]) -> tuple[int, int]:
    """The ``last`` method: the last name or number, else the last word."""
    named = [s for s in spans if sentence[s[0]].isupper() or sentence[s[0]].isdigit()]
    return max(named or spans)


def pick_every(sentence: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``every`` method: every candidate, in sentence order."""
    return sorted(spans)


def document_frequency(texts) -> Counter:
    """How many of ``texts`` hold each word (lowercased): a text given twice counts twice."""
    frequency: Counter = Counter()
    for text in texts:
        frequency.update({w.lower() for w in _WORD.findall(text)})
    return frequency


class RarePicker:
    """The ``rare`` method: a sentence's content words (``wide`` candidates) ranked by how few documents of the corpus
    hold them (a name's rarest word; ties: the later word), for :func:`facts` to take the first that gives a relation.
    Made from the corpus's texts; document frequency of lowercased words."""

    wide = True
    ranked = True

    def __init__(self, texts: list[str]):
        self.document_frequency = document_frequency(texts)

    def __call__(self, sentence: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        def frequency(span):
            return min(self.document_frequency[w.lower()] for w in _WORD.findall(sentence[span[0]:span[1]]))

        return sorted(spans, key=lambda span: (frequency(span), -span[0]))


class LinksMethod:
    """The ``links`` method: the facts between two neighbouring names of one sentence, no document subject needed
    (module docstring, 3.). A sentence's pairs closest first (fewest relation words, then sentence order), sentences
    in document order; the same limits on names and relations as every method."""

    @staticmethod
    def facts(text: str, max_facts: int = 4) -> list[Fact]:
        out = []
        for s in sentences(text):
            spans = names(s, split_at_punctuation=True)
            made = []
            for subj, obj in zip(spans, spans[1:]):  # neighbours: no other name in the relation
                subject, answer, relation = s[subj[0]:subj[1]], s[obj[0]:obj[1]], _relation(s, subj, obj)
                if (_keeps(text, relation, answer) and not subject.isdigit()
                        and len(subject.split()) <= MAX_NAME_WORDS and subject.lower() not in FUNCTION_WORDS):
                    made.append((len(relation.split()), subj[0], Fact(subject, relation, answer, s)))
            out += [m[-1] for m in sorted(made, key=lambda m: m[:2])]
            if len(out) >= max_facts:
                return out[:max_facts]
        return out


KEYWORDS_PER_SENTENCE = 2
"""The ``keywords`` method's tasks from one sentence, at most (its two best keywords that give a fact)."""
NOT_OBJECTS = frozenset(
    "known best born based located called named also well most more first one two three new former later many several "
    "other only very such same own now still just including like via within without among between through across "
    "against toward towards upon whose where when".split())
"""Lowercase words the ``keywords`` method never asks (besides :data:`FUNCTION_WORDS`): participles, adverbs,
quantifiers and prepositions that frame a fact, not hold it."""


class KeywordsMethod:
    """The ``keywords`` method (module docstring, 3.): each sentence's best keywords asked about its closest other name.

    Args:
        texts: the corpus's documents (each distinct text counts once in a word's document frequency).
        vocabulary_rank: ``word -> rank`` in the base model's vocabulary, larger for a rarer word
            (:meth:`tokenizer_rank`).
        per_sentence: tasks one sentence gives, at most."""

    def __init__(self, texts: list[str], vocabulary_rank, per_sentence: int = KEYWORDS_PER_SENTENCE):
        self.document_frequency = document_frequency(set(texts))
        self.vocabulary_rank, self.per_sentence = vocabulary_rank, per_sentence

    @staticmethod
    def tokenizer_rank(tokenizer):
        """``word -> rank`` of a byte-pair ``tokenizer``: the id of `` word``'s one token (merge order, roughly
        frequency order), or the vocabulary's size times its number of tokens; memoised."""
        from functools import lru_cache

        size = len(tokenizer)

        @lru_cache(maxsize=None)
        def rank(word: str) -> int:
            ids = tokenizer.encode(" " + word, add_special_tokens=False)
            return ids[0] if len(ids) == 1 else size * len(ids)

        return rank

    @classmethod
    def from_source(cls, texts: list[str], source: str) -> "KeywordsMethod":
        """The method for the corpus ``texts`` with the tokenizer of the base model at ``source`` (θ's)."""
        from taalm_dist.config import ModelSourceConfig
        from taalm_dist.models import load_tokenizer

        return cls(texts, cls.tokenizer_rank(load_tokenizer(ModelSourceConfig(source=source))))

    def keyness(self, word: str) -> float:
        """log(documents holding ``word``, case folded) + log(its vocabulary rank); -1e9 for a word of one document."""
        import math

        frequency = self.document_frequency[word.lower()]
        return math.log(frequency) + math.log(self.vocabulary_rank(word)) if frequency >= 2 else -1e9

    def facts(self, text: str, max_facts: int = 4) -> list[Fact]:
        """The made tasks of ``text``: at most ``max_facts``, sentences in document order, a sentence's best keywords
        first (ties in sentence order, its words before its names)."""
        out = []
        for s in sentences(text):
            spans = names(s, split_at_punctuation=True)
            named = {i for a, b in spans for i in range(a, b)}
            words = [(m.start(), m.end()) for m in _WORD.finditer(s) if m.start() not in named
                     and m.group()[0].islower() and len(m.group()) > 2
                     and m.group().lower() not in FUNCTION_WORDS | NOT_OBJECTS]
            not_numbers = [n for n in spans if not s[n[0]:n[1]].isdigit()]
            ranked = sorted(words + not_numbers,
                            key=lambda span: -max(self.keyness(w) for w in s[span[0]:span[1]].split()))
            made = 0
            for obj in ranked:
                subjects = [n for n in not_numbers if n[1] <= obj[0] or n[0] >= obj[1]]
                if subjects:
                    subj = min(subjects, key=lambda n: min(abs(n[0] - obj[1]), abs(obj[0] - n[1])))
                    relation = _relation(s, subj, obj, context=True)
                    subject, answer = s[subj[0]:subj[1]], s[obj[0]:obj[1]]
                    if _keeps(text, relation, answer) and len(subject.split()) <= MAX_NAME_WORDS:
                        out.append(Fact(subject, relation, answer, s))
                        made += 1
                        if len(out) == max_facts:
                            return out
                if made >= self.per_sentence:
                    break
        return out


MODEL_METHODS = ("surprise", "keywords")
"""The methods that read the base model: ``surprise`` its likelihoods, ``keywords`` its tokenizer."""
METHODS = PAIR_METHODS
"""The pair-making methods by name (module docstring, 3.), for :func:`make_pick` (their one list: the config's)."""


def make_pick(method: str, texts: list[str], model: str | None = None):
    """The object picker of ``method`` (:data:`METHODS`) for the corpus ``texts``; ``model`` (θ's source) is needed by
    ``surprise`` and ``keywords`` (its tokenizer) alone.

    Raises:
        ConfigError: an unknown method, or ``surprise`` or ``keywords`` without a model."""
    from taalm_dist.errors import ConfigError

    if method not in METHODS:
        raise ConfigError(f"pair-making method {method!r} is not one of {list(METHODS)}")
    if method in MODEL_METHODS and not model:
        raise ConfigError(f"the {method} method scores the candidates with the base model's "
                          f"{'likelihoods' if method == 'surprise' else 'tokenizer'}: give its source (--model, θ's)")
    if method == "surprise":
        return SurprisePicker.from_source(model)
    if method == "keywords":
        return KeywordsMethod.from_source(texts, model)
    if method == "rare":
        return RarePicker(texts)
    if method == "links":
        return LinksMethod()
    return {"last": pick_last, "every": pick_every}[method]


def pair_rows(docs: list[tuple[str, str]], pick=None, max_facts: int = 4) -> list[dict]:
    """Meta-training rows (LAMA-CKL schema: ``evidence``, ``task_schematic`` = ``task_descriptive``, ``object``,
    ``subject``, ``relation_label``, ``uuid``) of ``(id, text)`` documents, each fact of each document a row."""
    rows = []
    for doc_id, text in docs:
        for k, f in enumerate(facts(text, pick, max_facts)):
            rows.append({"uuid": f"doc-pairs:{doc_id}:{k}", "evidence": text, "task_schematic": f.task,
                         "task_descriptive": f.task, "object": f.object, "subject": f.subject,
                         "relation_label": f.relation, "sentence": f.sentence})
    return rows


def held_out_count(n: int, val_share: float, min_val_docs: int) -> int:
    """How many of ``n`` documents (those that gave a task) are held out for φ's validation: ``val_share`` of them,
    but at least ``min_val_docs`` while that leaves three quarters for training (a selection decided on two
    documents is a coin toss), at least 1, and never all."""
    return max(1, min(n - 1, max(round(val_share * n), min(min_val_docs, n // 4))))


def write_doc_pairs(docs: list[tuple[str, str]], out, pick=None, max_facts: int = 4, val_share: float = 0.05,
                    seed: int = 0, overwrite: bool = False, min_val_docs: int = 8) -> dict:
    """:func:`pair_rows` of ``docs`` written as ``out/meta_train.jsonl`` and ``out/meta_val.jsonl``, whole documents
    held out for validation (:func:`held_out_count` of those that gave a task, a seeded draw). Returns the counts.

    Raises:
        DataError: the files exist (without ``overwrite``), or fewer than 2 documents gave a task."""
    import random
    from pathlib import Path

    from taalm_dist.data.lama_ckl import write_pairs
    from taalm_dist.errors import DataError

    out = Path(out)
    files = [out / "meta_train.jsonl", out / "meta_val.jsonl"]
    if any(f.exists() for f in files) and not overwrite:
        raise DataError(f"{out} holds meta_train.jsonl / meta_val.jsonl; pass --overwrite or choose another --out")
    rows = pair_rows(docs, pick, max_facts)
    made = sorted({r["evidence"] for r in rows})
    if len(made) < 2:
        raise DataError(f"only {len(made)} of {len(docs)} documents gave a task (a document needs a name it mentions "
                        "twice and a sentence naming it in full with another name or word after it; with --method "
                        "links, a sentence with two names and words between them)")
    held = set(random.Random(seed).sample(made, held_out_count(len(made), val_share, min_val_docs)))
    write_pairs([r for r in rows if r["evidence"] not in held], files[0])
    write_pairs([r for r in rows if r["evidence"] in held], files[1])
    return {"documents": len(docs), "with_tasks": len(made), "pairs": len(rows), "held_out_documents": len(held)}


def agreement(rows: list[dict], pick=None, max_facts: int = 4) -> dict:
    """How the made tasks meet human-written ones on rows that have both (LAMA-CKL schema): ``docs`` — documents;
    ``made`` — tasks made; ``covered`` — share of documents one of whose made tasks asks the human task's object;
    ``precise`` — share of made tasks whose object is a human task's object of the same document; ``subject`` — share
    of documents whose found subject is the human task's."""
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r["evidence"], []).append(r)
    covered = made = precise = subject = 0
    for text, human in by_doc.items():
        objects = {h["object"].strip().lower() for h in human}
        fs = facts(text, pick, max_facts)
        made += len(fs)
        hits = [f.object.strip().lower() in objects for f in fs]
        covered += any(hits)
        precise += sum(hits)
        subject += document_subject(text) in {h.get("subject") for h in human}
    n = max(len(by_doc), 1)
    return {"docs": len(by_doc), "made": made, "covered": covered / n, "precise": precise / max(made, 1),
            "subject": subject / n}


class SurprisePicker:
    """The ``surprise`` method: of a sentence's object candidates, the one whose tokens the base model finds least
    likely (highest mean NLL after the sentence's start) — the fact it does not know. One forward per sentence (all
    candidates from it); ``model`` and ``tokenizer`` are the base model's (θ's), the tokenizer a fast one (offsets)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @classmethod
    def from_source(cls, source: str) -> "SurprisePicker":
        """The picker of the base model at ``source`` (a model source: hub id, directory, .gguf, pkg:...)."""
        from taalm_dist.config import ModelSourceConfig
        from taalm_dist.models import load_causal_lm, load_tokenizer

        spec = ModelSourceConfig(source=source)
        return cls(load_causal_lm(spec), load_tokenizer(spec))

    @torch.no_grad()
    def __call__(self, sentence: str, spans: list[tuple[int, int]]) -> tuple[int, int]:
        from taalm_dist.losses import eager_per_token_nll

        enc = self.tokenizer(sentence, return_offsets_mapping=True, add_special_tokens=True)
        ids = torch.tensor([enc["input_ids"]])
        nll = eager_per_token_nll(self.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0]
        offsets = enc["offset_mapping"]

        def surprise(span):
            tokens = [i for i, (a, b) in enumerate(offsets) if i > 0 and b > a and a < span[1] and b > span[0]]
            return float(nll[tokens].mean()) if tokens else float("-inf")

        return max(spans, key=surprise)
