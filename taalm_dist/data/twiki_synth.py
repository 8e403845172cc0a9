"""``taalm data twiki-synth``: TemporalWiki's file layout (:mod:`taalm_dist.data.twiki`) filled with a fictional
world, small enough for a CPU run in minutes.

The world: ``entities`` fictional people (syllable names no model knows), each with one value for every relation
of :data:`RELATIONS` (employer, residence, club, instrument, ...), stated in Wikipedia-like prose. Snapshots are
months 08, 09, 10, ...; between two snapshots a share ``change_rate`` of the people change one relation's value.

- The first diffset (``0809``) is the people's articles appearing: one line per person stating every fact among
  filler sentences — what θ first learns; its ``changed`` probes are all those facts.
- Each later diffset (``0910``, ``1011``, ...) holds the lines that changed: for each person who changed, the
  paragraph that states the new value (worded by another template than the article's, among sentences about their
  other facts and filler), plus ``noise_lines`` changed lines that change no fact (an edited sentence of another
  person's article), as real diffsets are mostly such edits.
- Probes: ``changed`` — the facts that changed in the period, with their new object; ``unchanged`` — facts stated
  in the first diffset and never changed since (θ learnt them and must keep them). Both are
  ``subject, relation, object`` rows as the official probes are.

Lines and probes are written as the official CSVs are (a ``text`` column; ``subject,relation,object`` columns), so
every reader and the run are the official files' (``taalm twiki run --data-dir DIR``). Deterministic from the seed.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from taalm_dist.data.synth import CITIES, COUNTRIES, INSTRUMENTS, JOBS, LANGUAGES, SPORTS, fictional_names
from taalm_dist.data.twiki import DIFFSETS, PROBES, diffset_path, probe_path
from taalm_dist.errors import DataError

CLUBS = ["Harbour City", "Northfield United", "Redvale Athletic", "Stonebridge Rovers", "Westmoor Town",
         "Eastgate Wanderers", "Kingsport Albion", "Millbrook Rangers", "Ashford Celtic", "Brightwater FC"]
EMPLOYERS = ["Corvane Industries", "Telmar Group", "Ostrova Bank", "Quillon Press", "Varnis Motors",
             "Helmund Energy", "Brisca Airways", "Dunmore Foods", "Pellin Pharma", "Sorvik Shipping"]

RELATIONS = [  # (relation label as a probe names it, article wording, update wording, objects)
    ("employer", "{s} worked for {o} for several years.", "In the latest season of changes, {s} joined {o}.",
     EMPLOYERS),
    ("residence", "{s} has lived in {o} since moving there as an adult.", "{s} has since relocated to {o}.", CITIES),
    ("member of sports team", "{s} played for {o} in the regional league.", "{s} signed a contract with {o}.",
     CLUBS),
    ("occupation", "By training {s} is a {o}.", "{s} now works as a {o}.", JOBS),
    ("country of citizenship", "{s} holds the citizenship of {o}.", "{s} was granted the citizenship of {o}.",
     COUNTRIES),
    ("languages spoken", "{s} speaks {o} fluently.", "{s} has taken up {o} and now speaks it daily.", LANGUAGES),
    ("instrument", "{s} is known as a player of the {o}.", "{s} has switched to the {o}.", INSTRUMENTS),
    ("sport", "{s} competed in {o} at the national level.", "{s} has turned to {o}.", SPORTS),
]
"""Each relation is worded one way in the article, another in the line that updates it (the probe words neither)."""

FILLER = [
    "{f} was educated at a local school before leaving home.", "{f} is often described as private and careful.",
    "A short profile of {f} appeared in a regional newspaper.", "{f} has given several interviews on the radio.",
    "Little is known about the early life of {f}.", "{f} has two siblings.",
    "{f} is an active member of a neighbourhood association.", "Photographs of {f} are rare.",
    "{f} has occasionally written columns for a weekly magazine.", "{f} supports several small charities.",
    "According to friends, {f} rarely takes holidays.", "{f} appeared briefly in a documentary film.",
]
"""Sentences about a person that state no fact a probe asks (the bulk of real changed lines)."""


def _fact(template: str, subject: str, obj: str) -> str:
    return template.format(s=subject, o=obj)


def twiki_world(entities: int = 60, periods: int = 4, change_rate: float = 0.25, noise_lines: int = 10,
                fillers: int = 3, seed: int = 0, first_month: int = 8) -> dict:
    """The files' content: ``{"diffsets": {MMNN: [line, ...]}, "probes": {MMNN: {"changed": [(s, r, o)],
    "unchanged": [...]}}}`` (see the module docstring).

    Args:
        entities: fictional people in the world.
        periods: diffsets (the first introduces the people; ``periods - 1`` change them); months from
            ``first_month`` (≤ 12 in all).
        change_rate: share of the people that change one fact in each later period.
        noise_lines: changed lines per later period that change no fact.
        fillers: filler sentences per line.
        seed: the same seed gives the same files.
    """
    if entities < 2 or periods < 2 or not 0 < change_rate <= 1 or noise_lines < 0 or not 0 <= fillers <= 6:
        raise DataError(f"need entities ≥ 2, periods ≥ 2, change_rate in (0, 1], noise_lines ≥ 0 and fillers in 0..6; "
                        f"got {entities}, {periods}, {change_rate}, {noise_lines}, {fillers}")
    if first_month + periods > 12:
        raise DataError(f"{periods} periods from month {first_month:02d} run past month 12 (TemporalWiki's periods "
                        "are months of one year)")
    rng = random.Random(seed)
    people = fictional_names(entities, rng)
    state = {p: {label: rng.choice(objects) for label, _, _, objects in RELATIONS} for p in people}
    stable = {(p, label) for p in people for label, *_ in RELATIONS}  # facts unchanged since the articles
    months = [f"{m:02d}" for m in range(first_month, first_month + periods + 1)]
    diffsets, probes = {}, {}

    def filler(first: str, k: int) -> list[str]:
        return [t.format(f=first) for t in rng.sample(FILLER, k)]

    # the first period: every person's article
    period = months[0] + months[1]
    lines = []
    for p in people:
        sentences = [_fact(article, p, state[p][label]) for label, article, _, _ in RELATIONS]
        sentences += filler(p.split()[0], fillers)
        rng.shuffle(sentences)
        lines.append(" ".join(sentences))
    diffsets[period] = lines
    probes[period] = {"changed": [(p, label, state[p][label]) for p in people for label, *_ in RELATIONS],
                      "unchanged": []}
    for k in range(1, periods):
        period = months[k] + months[k + 1]
        movers = rng.sample(people, max(1, round(change_rate * entities)))
        lines, changed = [], []
        for p in movers:
            label, _, update, objects = rng.choice(RELATIONS)
            new = rng.choice([o for o in objects if o != state[p][label]])
            state[p][label] = new
            stable.discard((p, label))
            changed.append((p, label, new))
            others = [_fact(article, p.split()[0], state[p][other])
                      for other, article, _, _ in rng.sample([r for r in RELATIONS if r[0] != label], 2)]
            sentences = [_fact(update, p, new)] + others + filler(p.split()[0], fillers)
            rng.shuffle(sentences)
            lines.append(" ".join(sentences))
        for _ in range(noise_lines):  # an edit that changes no fact
            lines.append(" ".join(filler(rng.choice(people), min(fillers + 2, len(FILLER)))))
        rng.shuffle(lines)
        diffsets[period] = lines
        probes[period] = {"changed": changed,
                          "unchanged": [(p, label, state[p][label]) for p, label in sorted(stable)]}
    return {"diffsets": diffsets, "probes": probes}


def write_twiki_synth(out_dir: str | Path, overwrite: bool = False, **kwargs) -> dict[str, dict]:
    """Write :func:`twiki_world` in TemporalWiki's layout under ``out_dir`` (``TWiki_Diffsets/``, ``twiki_probes/``);
    returns per period the counts of lines and probes. Existing files are refused unless ``overwrite``."""
    out = Path(out_dir)
    world = twiki_world(**kwargs)
    files = [diffset_path(out, p) for p in world["diffsets"]]
    files += [probe_path(out, p, kind) for p in world["probes"] for kind in ("changed", "unchanged")]
    clash = [str(f) for f in files if f.exists()]
    if clash and not overwrite:
        raise DataError(f"{clash[0]} (and {len(clash) - 1} more) exist; pass --overwrite or choose another --out")
    (out / DIFFSETS).mkdir(parents=True, exist_ok=True)
    (out / PROBES).mkdir(parents=True, exist_ok=True)
    counts = {}
    for period, lines in world["diffsets"].items():
        with diffset_path(out, period).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text"])  # as the official files: one column, no index
            w.writerows([line] for line in lines)
        counts[period] = {"lines": len(lines)}
        for kind, rows in world["probes"][period].items():
            with probe_path(out, period, kind).open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["subject", "relation", "object"])
                w.writerows(rows)
            counts[period][kind] = len(rows)
    return counts
