"""``taalm data synth``: a continual-knowledge-learning benchmark of the project's own, in the LAMA-CKL schema.

LAMA-CKL cannot ship with the project, so this writes a benchmark with the same files and fields:

* ``variant.jsonl`` (To-Learn): facts about *fictional* people (names built from syllables, so no model can
  know them). The evidence is a short paragraph about the person in which the fact is one sentence among
  distractor sentences, half of which name other objects of the same kinds (a city the person visited, the
  brother's occupation, ...); the task asks the fact in other words (paraphrase templates per relation) and
  ends with the object.
* ``invariant_descriptive.jsonl`` / ``invariant_schematic.jsonl`` (Not-To-Forget candidates): real
  common-knowledge facts from :mod:`taalm_dist.data.common_facts`; ``taalm ckl build`` keeps the ones the
  model answers, as it does for LAMA-CKL.
* ``meta_train.jsonl``: meta-training pairs from the same generator with entities disjoint from To-Learn
  (``taalm ckl build`` uses this file, when present, instead of carving pairs out of invariant_schematic).

So φ cannot succeed by weighting "the sentence that looks like the task" or "every name-like word": it must
learn which fact is asked. Everything is deterministic from the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from taalm_dist.data.common_facts import UUID_PREFIX, common_fact_rows
from taalm_dist.data.lama_ckl import write_pairs
from taalm_dist.errors import DataError

CITIES = ["Lisbon", "Vienna", "Oslo", "Cairo", "Lima", "Dublin", "Prague", "Nairobi", "Seoul", "Athens",
          "Madrid", "Warsaw", "Helsinki", "Santiago", "Manila", "Toronto", "Munich", "Kyoto", "Havana", "Zurich"]
COUNTRIES = ["Portugal", "Norway", "Egypt", "Peru", "Ireland", "Kenya", "Greece", "Poland", "Finland", "Chile",
             "Canada", "Japan", "Cuba", "Brazil", "Mexico", "Sweden", "Turkey", "India", "Morocco", "Iceland"]
JOBS = ["carpenter", "pilot", "surgeon", "baker", "lawyer", "chemist", "farmer", "sculptor", "librarian",
        "dentist", "plumber", "journalist", "architect", "nurse", "jeweller", "tailor"]
INSTRUMENTS = ["violin", "cello", "trumpet", "flute", "harp", "piano", "guitar", "clarinet", "drums", "banjo",
               "saxophone", "accordion"]
LANGUAGES = ["Spanish", "German", "French", "Italian", "Russian", "Arabic", "Dutch", "Greek", "Swedish",
             "Polish", "Turkish", "Korean", "Hindi", "Portuguese"]
SPORTS = ["tennis", "rugby", "hockey", "cricket", "chess", "golf", "rowing", "boxing", "fencing", "cycling",
          "swimming", "volleyball"]

RELATIONS = [  # (code, relation label, evidence templates, task templates ending with the object, objects)
    ("S1", "place of birth", ["{s} was born in {o}", "{o} is where {s} was born", "{s} came into the world in {o}"],
     ["The birthplace of {s} is {o}", "{s} is a native of {o}"], CITIES),
    ("S2", "occupation", ["{s} works as a {o}", "By profession, {s} is a {o}", "{s} earns a living as a {o}"],
     ["The occupation of {s} is {o}", "{s} is employed as a {o}"], JOBS),
    ("S3", "citizenship", ["{s} is a citizen of {o}", "{s} holds a passport from {o}", "{o} granted {s} citizenship"],
     ["{s} has the citizenship of {o}", "The country of citizenship of {s} is {o}"], COUNTRIES),
    ("S4", "instrument", ["{s} plays the {o}", "{s} has practised the {o} since childhood",
                          "The {o} is the instrument {s} plays"],
     ["The instrument of {s} is the {o}", "{s} is a player of the {o}"], INSTRUMENTS),
    ("S5", "language spoken", ["At home {s} speaks {o}", "{s} speaks {o} with the family",
                               "{o} is the language {s} speaks at home"],
     ["The language {s} uses at home is {o}", "With the family, {s} talks in {o}"], LANGUAGES),
    ("S6", "sport", ["The favourite sport of {s} is {o}", "{s} loves playing {o} more than any other sport",
                     "Of all sports, {s} likes {o} best"],
     ["{s}'s favourite sport is {o}", "The sport {s} likes most is {o}"], SPORTS),
    ("S7", "residence", ["{s} lives in {o}", "{s} has made a home in {o}", "{o} is the city where {s} lives"],
     ["{s} resides in {o}", "The city where {s} lives today is {o}"], CITIES),
]
"""The evidence words each fact one way, the task another (the model must learn the fact, not the sentence)."""

TYPED_DISTRACTORS = [  # (template, objects): same-type candidates that are *not* the asked fact
    ("{f} once spent a week in {o}.", CITIES), ("{f}'s mother was born in {o}.", CITIES),
    ("Last spring {f} flew to {o} for a wedding.", CITIES),
    ("{f}'s brother works as a {o}.", JOBS), ("As a child, {f} wanted to become a {o}.", JOBS),
    ("{f} has a pen friend in {o}.", COUNTRIES), ("{f}'s grandfather was a citizen of {o}.", COUNTRIES),
    ("{f}'s daughter is learning the {o}.", INSTRUMENTS), ("{f} once bought an old {o} at a market.", INSTRUMENTS),
    ("{f} took a short course in {o} last year.", LANGUAGES), ("{f}'s neighbours speak {o}.", LANGUAGES),
    ("{f} sometimes watches {o} on television.", SPORTS), ("{f}'s cousin coaches {o}.", SPORTS),
]
"""Distractor sentences naming other places, occupations, countries, instruments, languages and sports, so
that a document holds several candidate objects and φ must learn which one the task asks about."""

DISTRACTORS = [
    "{s} is known for a quiet sense of humour.", "Friends describe {s} as patient and curious.",
    "{s} usually wakes up before sunrise.", "Most evenings, {s} reads for an hour before bed.",
    "{s} rarely talks about the past.", "{s} keeps a small notebook in every coat pocket.",
    "Neighbours say {s} is always ready to help.", "{s} once spent a whole summer repairing an old boat.",
    "{s} prefers tea to coffee.", "{s} has a habit of humming while working.",
    "Last winter {s} took up painting as a hobby.", "{s} enjoys long walks on rainy afternoons.",
    "{s} collects postcards from every trip.", "Some colleagues find {s} hard to read at first.",
    "{s} answers letters by hand.", "{s} likes to cook for large groups of friends.",
    "In interviews {s} speaks slowly and carefully.", "{s} grew up in a large and noisy family.",
    "{s} tends to arrive early to every meeting.", "A photograph of {s} hangs in the town hall.",
]

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "st",
          "th", "tr", "vr", "sk", "j"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "ia", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "th", "x", "nd", "rk", "v"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def fictional_names(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct two-word names that are neither words nor real names (two syllables each)."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        first = (_syllable(rng) + _syllable(rng)).capitalize()
        last = (_syllable(rng) + _syllable(rng)).capitalize()
        name = f"{first} {last}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def benchmark_of(uids) -> str:
    """``"synthetic"`` when every one of ``uids`` (row ``uuid``s) is `taalm data synth`'s, else ``"LAMA-CKL"``."""
    uids = list(uids)
    return "synthetic" if uids and all(u.startswith(UUID_PREFIX) for u in uids) else "LAMA-CKL"


def fact_row(subject: str, rng: random.Random, uid: str, distractors: int) -> dict:
    """One To-Learn-style row about ``subject``: a random relation and object; the evidence words the fact
    with one of the relation's evidence templates, placed at a random position among ``distractors``
    distinct distractor sentences — half of them (rounded up) naming other objects of the same types as the
    relations' objects (one of the fact's own type first), the rest generic; the task words it with one of
    the relation's task templates and ends with the object."""
    code, label, evidence_templates, task_templates, objects = rng.choice(RELATIONS)
    obj = rng.choice(objects)
    template = rng.choice(evidence_templates)
    fact = template.format(s=subject, o=obj)  # templates that start with {o} are only used for capitalised objects
    task = rng.choice(task_templates).format(s=subject, o=obj)
    first = subject.split()[0]  # distractors name the person by first name, as a paragraph would
    n_typed = (distractors + 1) // 2
    own_type = [d for d in TYPED_DISTRACTORS if d[1] is objects]
    typed = rng.sample(own_type, 1) + rng.sample([d for d in TYPED_DISTRACTORS if d not in own_type], n_typed - 1) \
        if n_typed else []
    others = [t.format(f=first, o=rng.choice([x for x in pool if x != obj])) for t, pool in typed]
    others += [d.format(s=first) for d in rng.sample(DISTRACTORS, distractors - n_typed)]
    rng.shuffle(others)
    at = rng.randint(0, distractors)
    sentences = others[:at] + [fact + "."] + others[at:]
    masked = others[:at] + [template.format(s=subject, o="[MASK]") + "."] + others[at:]
    return {
        "relation_code": code, "uuid": uid, "task_descriptive": task,
        "task_schematic": f"Guess the object. \n  subject is {subject} , relation is {label} , object is {obj}",
        "subject": subject, "relation_label": label, "object": obj,
        "masked_evidence": " ".join(masked), "evidence": " ".join(sentences),
    }


def synth_benchmark(n_to_learn: int = 120, n_meta: int = 400, seed: int = 0, distractors: int = 4) -> dict[str, list[dict]]:
    """The rows of every file (see the module docstring), keyed by file stem.

    Args:
        n_to_learn: To-Learn rows (fictional facts to learn).
        n_meta: meta-training rows (fictional, entities disjoint from To-Learn).
        seed: RNG seed: the same seed gives the same files.
        distractors: distractor sentences per evidence paragraph (0 .. len(DISTRACTORS)).
    """
    if n_to_learn < 1 or n_meta < 0:
        raise DataError(f"need n_to_learn ≥ 1 and n_meta ≥ 0, got {n_to_learn} and {n_meta}")
    if not 0 <= distractors <= len(DISTRACTORS):
        raise DataError(f"distractors must be in 0..{len(DISTRACTORS)}, got {distractors}")
    if (distractors + 1) // 2 > len(TYPED_DISTRACTORS) - 2:
        raise DataError(f"distractors={distractors} needs more typed distractor templates than the "
                        f"{len(TYPED_DISTRACTORS)} there are")
    rng = random.Random(seed)
    names = fictional_names(n_to_learn + n_meta, rng)
    variant = [fact_row(s, rng, f"{UUID_PREFIX}tl-{seed}-{i}", distractors) for i, s in enumerate(names[:n_to_learn])]
    meta = [fact_row(s, rng, f"{UUID_PREFIX}meta-{seed}-{i}", distractors) for i, s in enumerate(names[n_to_learn:])]
    common = common_fact_rows()
    return {"variant": variant, "invariant_descriptive": common, "invariant_schematic": common, "meta_train": meta}


def write_synth(out_dir: str | Path, overwrite: bool = False, **kwargs) -> dict[str, int]:
    """Write :func:`synth_benchmark` as ``<stem>.jsonl`` files in ``out_dir``; returns rows per file.

    An existing file is refused unless ``overwrite``."""
    out = Path(out_dir)
    files = synth_benchmark(**kwargs)
    clash = [str(out / f"{k}.jsonl") for k in files if (out / f"{k}.jsonl").exists()]
    if clash and not overwrite:
        raise DataError(f"{', '.join(clash)} exist(s); pass --overwrite or choose another --out")
    for stem, rows in files.items():
        write_pairs(rows, out / f"{stem}.jsonl")
    return {k: len(v) for k, v in files.items()}
