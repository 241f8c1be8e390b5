"""A sweep report's figures (matplotlib, optional: without it the report has its tables and no figures):
`metrics.png`, the models side by side per headline metric, and `by_popularity.png`, halu_Rate and refusal_rate
by popularity bin with a line per model, as HalluLens' paper draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_PNG, BINS_PNG = "metrics.png", "by_popularity.png"
BINS_KEY = "by_h_score_cat"
BIN_METRICS = ("halu_Rate", "refusal_rate")


def draw(folder: Path, data: dict[str, Any]) -> list[Path]:
    """metrics.png and by_popularity.png; none without matplotlib (the report's tables do not need it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    groups = [(task, key, label) for task in data["tasks"] for key, label in data["columns"][task]]
    labels = [row["label"] for row in data["models"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(labels)) / 2 + 2), 4.2))
    width = 0.8 / max(1, len(labels))
    for m, row in enumerate(data["models"]):
        values = [row["runs"].get(task, {}).get(key) for task, key, _ in groups]
        xs = [g + (m - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [100 * v if isinstance(v, int | float) else 0 for v in values], width, label=row["label"])
    ax.set_xticks(range(len(groups)), [f"{task}\n{label}" for task, _, label in groups], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"hallurun sweep · judge {data['judge']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / METRICS_PNG, dpi=110)
    plt.close(fig)
    made.append(folder / METRICS_PNG)
    binned = [(row["label"], run[BINS_KEY]) for row in data["models"] for run in row["runs"].values()
              if BINS_KEY in run]
    if binned:
        fig, axes = plt.subplots(1, len(BIN_METRICS), figsize=(10, 4), sharey=True)
        for ax, metric in zip(axes, BIN_METRICS, strict=True):
            for label, bins in binned:
                keys = sorted(bins, key=lambda b: int(b) if str(b).lstrip("-").isdigit() else str(b))
                points = [(str(b), bins[b][metric]) for b in keys if isinstance(bins[b].get(metric), int | float)]
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=label)
            ax.set_title(metric)
            ax.set_xlabel("popularity bin (h_score_cat)")
            ax.set_ylim(0, 100)
        axes[0].set_ylabel("%")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / BINS_PNG, dpi=110)
        plt.close(fig)
        made.append(folder / BINS_PNG)
    return made
