"""The PreciseWikiQA chart: hallucination and refusal rate by popularity bin (`h_score_cat`), as a PNG.

A rate whose denominator is empty in a bin (no answered item for the hallucination rate, no scored item for the
refusal rate) is undefined, not 0 %: "nobody answered" must not read as "nobody hallucinated". Such a bar is left
out (its value is NaN, which matplotlib does not draw) and its slot says "n/a" and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Series:
    """One metric's bars: percent per bin (NaN where undefined) and each bin's denominator for that metric."""

    key: str
    label: str
    color: str
    values: list[float]
    denominators: list[int | None]  # None: the results do not say (an older eval_results.json)
    denominator_name: str  # what the denominator counts: "answered", "scored"

    def gap_note(self, index: int) -> str | None:
        """The text drawn in an undefined bar's slot ("n/a", and its empty denominator), None for a drawn bar."""
        if not math.isnan(self.values[index]):
            return None
        count = self.denominators[index]
        return "n/a" if count is None else f"n/a\n{count} {self.denominator_name}"


# (metric key, legend label, colour, the count in the bin that is the metric's denominator)
_METRICS = (
    ("halu_Rate", "hallucination rate (of answered)", "#c0392b", "answered"),
    ("refusal_rate", "refusal rate", "#2980b9", "scored"),
)


def series(results: dict[str, Any]) -> tuple[list[str], list[Series]]:
    """The bins and the bars to draw from eval results' `by_h_score_cat`: undefined rates (None) become NaN."""
    bins = results["by_h_score_cat"]
    labels = list(bins)
    out = []
    for key, label, color, denominator in _METRICS:
        values = [math.nan if bins[b].get(key) is None else 100 * float(bins[b][key]) for b in labels]
        counts = [bins[b].get(denominator) for b in labels]
        out.append(Series(key, label, color, values, counts, denominator))
    return labels, out


def tick_labels(results: dict[str, Any]) -> list[str]:
    """Each bin's name with its item count, so a small bin's rates are read as what they are."""
    def items(n: Any) -> str:
        return "1 item" if n == 1 else f"{'?' if n is None else n} items"

    return [f"{b}\n{items(values.get('items'))}" for b, values in results["by_h_score_cat"].items()]


def write(results: dict[str, Any], path: Path) -> Path | None:
    """Draw the chart from eval results; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels, bars = series(results)
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    width = 0.4
    for k, bar in enumerate(bars):
        offset = (k - (len(bars) - 1) / 2) * width
        positions = [i + offset for i in x]
        ax.bar(positions, bar.values, width, label=bar.label, color=bar.color)
        for i, position in enumerate(positions):
            # A real 0 % has no visible bar either: say so, so that it cannot be taken for a gap, nor a gap for it.
            note = bar.gap_note(i) or ("0 %" if bar.values[i] == 0 else None)
            if note is not None:
                ax.text(position, 1, note, ha="center", va="bottom", fontsize=7, color=bar.color)
    ax.set_xlim(-0.6, len(labels) - 0.4)  # NaN bars do not count in autoscaling; every slot must show
    ax.set_xticks(list(x), tick_labels(results), fontsize=8)
    ax.set_xlabel("popularity bin (h_score_cat: 0 rare … 9 popular)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    judge = results["judge"] + (" (approximate: phrase patterns and token matching, no model)"
                                if results.get("approximate") else "")
    ax.set_title(f"PreciseWikiQA · {results['model']}\njudge: {judge}", fontsize=10)
    # Below the axes: bars reach 100% and a legend inside would hide them.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8, frameon=False,
              title="n/a: no item to divide by in that bin (undefined, not 0 %)", title_fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
