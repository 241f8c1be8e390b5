"""The PreciseWikiQA chart: hallucination and refusal rate by popularity bin (`h_score_cat`), as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write(results: dict[str, Any], path: Path) -> Path | None:
    """Draw the chart from eval results; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bins = results["by_h_score_cat"]
    labels = list(bins)
    x = range(len(labels))

    def series(key: str) -> list[float]:
        return [100 * (bins[b].get(key) or 0.0) for b in labels]

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    width = 0.4
    ax.bar([i - width / 2 for i in x], series("halu_Rate"), width, label="hallucination rate (of answered)",
           color="#c0392b")
    ax.bar([i + width / 2 for i in x], series("refusal_rate"), width, label="refusal rate", color="#2980b9")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("popularity bin (h_score_cat: 0 rare … 9 popular)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    judge = results["judge"] + (" (approximate: phrase patterns and token matching, no model)"
                                if results.get("approximate") else "")
    ax.set_title(f"PreciseWikiQA · {results['model']}\njudge: {judge}", fontsize=10)
    # Below the axes: bars reach 100% and a legend inside would hide them.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
