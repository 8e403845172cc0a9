"""Token-weight heatmaps: where a weight rule (φ, the oracle, RHO-1...) puts θ's loss, as HTML and PNG."""

from __future__ import annotations

import html
from pathlib import Path


def heatmap(docs: list[tuple[list[str], list[float], list[int]]], title: str, out: Path) -> None:
    """Token weights of a few documents as ``heatmap.html`` (open in a browser) and ``heatmap.png``.

    ``docs``: (tokens, weights, object flags) per document; the object's tokens are underlined. Colour is
    the weight relative to the document's largest weight (the loss normalises by Σw, so only relative
    weights matter; a meta-trained φ can be tiny in absolute terms); hovering shows the raw weight."""
    (out / "heatmap.html").write_text(heatmap_html(docs, title), encoding="utf-8")
    _heatmap_png(docs, title, out / "heatmap.png")


def heatmap_html(docs: list[tuple[list[str], list[float], list[int]]], title: str,
                 captions: list[str] | None = None) -> str:
    """The HTML page of :func:`heatmap` (one paragraph per document, each under its caption when given)."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h3>{html.escape(title)}</h3><p>background = weight / the document's largest weight (white 0 → red 1); "
             "underlined = the object; hover for the raw weight</p>"]
    for k, (tokens, raw, obj) in enumerate(docs):
        if captions:
            parts.append(f"<p><b>{html.escape(captions[k])}</b></p>")
        top = max(raw) if raw and max(raw) > 0 else 1.0
        weights = [w / top for w in raw]
        spans = []
        for t, w, r, o in zip(tokens, weights, raw, obj):
            style = f"background: rgba(220,30,30,{max(0.0, min(1.0, w)):.3f});" + (" text-decoration: underline;" if o else "")
            spans.append(f"<span title='{r:.3g}' style='{style}'>{html.escape(t)}</span>")
        parts.append("<p style='font-family: monospace; line-height: 1.8'>" + " ".join(spans) + "</p><hr>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _heatmap_png(docs, title: str, path: Path, per_line: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for tokens, raw, obj in docs:
        top = max(raw) if raw and max(raw) > 0 else 1.0
        weights = [w / top for w in raw]
        for s in range(0, len(tokens), per_line):
            lines.append(list(zip(tokens[s : s + per_line], weights[s : s + per_line], obj[s : s + per_line])))
        lines.append([])
    fig, ax = plt.subplots(figsize=(12, 0.32 * len(lines) + 0.8))
    ax.set_axis_off()
    ax.set_xlim(0, per_line)
    ax.set_ylim(len(lines), -1)
    ax.set_title(title, fontsize=10)
    for y, line in enumerate(lines):
        for x, (tok, w, o) in enumerate(line):
            ax.add_patch(plt.Rectangle((x, y - 0.45), 0.95, 0.9, color=(1.0, 1 - 0.85 * w, 1 - 0.85 * w)))
            ax.text(x + 0.47, y, tok.replace("\n", " ")[:10], ha="center", va="center", fontsize=6,
                    fontweight="bold" if o else "normal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
