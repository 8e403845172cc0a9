"""A toy meta-training task where exactly one token of each document carries the answer.

Document: filler words with the sentence ``the code of <Entity> is <ANSWER> .`` somewhere inside.
Task: ``the code of <Entity> is <ANSWER>``, object ``<ANSWER>``. Every word is a single token of the toy
tokenizer, so a φ that learns to put its weight on the answer token makes θ's one inner step learn the
fact; uniform weights spread the step over the fillers. Rows use the LAMA-CKL schema.
"""

from __future__ import annotations

import random

from taalm_dist.models.toy_tokenizer import ANSWERS, ENTITIES, FILLERS


def toy_rows(n: int, seed: int = 0, filler_words: int = 24, entity_offset: int = 0) -> list[dict]:
    """``n`` deterministic rows in the LAMA-CKL schema (``evidence``, ``task_descriptive``, ``object``).

    Args:
        n: number of rows.
        seed: RNG seed (same seed, same rows).
        filler_words: distractor words around the fact sentence.
        entity_offset: first entity index (use disjoint ranges for train / validation).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        entity = ENTITIES[(entity_offset + i) % len(ENTITIES)]
        answer = rng.choice(ANSWERS)
        fill = [rng.choice(FILLERS) for _ in range(filler_words)]
        cut = rng.randint(0, filler_words)
        fact = f"the code of {entity} is {answer} ."
        evidence = " ".join(fill[:cut] + [fact] + fill[cut:])
        rows.append({
            "uuid": f"toy-{seed}-{entity_offset + i}",
            "evidence": evidence,
            "task_descriptive": f"the code of {entity} is {answer}",
            "object": answer,
            "subject": entity,
        })
    return rows
