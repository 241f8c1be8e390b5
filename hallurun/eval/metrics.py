"""Metric helpers every task's metrics share, and the agreement between two judges. Pure functions.

Rates are fractions in [0, 1] (None when their denominator is empty). An item whose needed verdict could not be
read (`problem="unparseable"`) or whose judge request failed (`problem="judge_failed"`) is not scored: it is left
out of every denominator and counted under its problem, so it never silently counts as either outcome, and all of
a task's rates share one denominator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

UNPARSEABLE, JUDGE_FAILED = "unparseable", "judge_failed"
# The counts kept beside each bin's rates in eval_results.json and its tables: the rates' denominators, so that an
# undefined (null, "n/a") rate shows why, e.g. 0 answered.
BIN_COUNTS = ("items", "scored", "answered", "answering")

J = TypeVar("J")


def rate(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, None when there is nothing to divide by (never a made-up 0.0)."""
    return numerator / denominator if denominator else None


def problems(judgments: Iterable[J], scored: Callable[[J], bool]) -> dict[str, int]:
    """Counts of unscored items by problem; an unscored item with no stated problem counts as unparseable."""
    counts = Counter((getattr(j, "problem", None) or UNPARSEABLE) for j in judgments if not scored(j))
    return {UNPARSEABLE: counts[UNPARSEABLE], JUDGE_FAILED: counts[JUDGE_FAILED]}


def by_bin(judgments: Sequence[J], compute: Callable[[Sequence[J]], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The metrics per bin (each judgment's `bin`: a popularity bin, an entity type), bins in numeric order when
    numeric; judgments without a bin are in no bin."""
    groups: dict[str, list[J]] = {}
    for j in judgments:
        groups.setdefault(str(getattr(j, "bin", None)), []).append(j)
    keys = sorted(groups, key=lambda b: (0, float(b), b) if _is_number(b) else (1, 0.0, b))
    return {b: compute(groups[b]) for b in keys if b != "None"}


def bin_results(bins: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-bin part of eval_results.json: each bin's rates (null where undefined, never 0.0) and counts."""
    return {b: {k: v for k, v in m.items() if k != "counts"}
            | {k: m["counts"][k] for k in BIN_COUNTS if k in m["counts"]} for b, m in bins.items()}


def bin_of(value: Any) -> str | None:
    """A judgment's bin from a record's field (a number or a name); None: no bin."""
    return None if value is None else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- agreement between two judges ---------------------------------------------------------------------------

def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters' labels: (p_o − p_e) / (1 − p_e). None when it is undefined (no pairs, or
    both raters always gave the same single label, so chance agreement is 1)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(left[label] * right[label] for label in left) / (n * n)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def agreement(decision: str, a: dict[str, Hashable | None], b: dict[str, Hashable | None]) -> dict[str, Any]:
    """How often two judges made the same `decision`, over the items both decided (None means undecided)."""
    pairs = [(a[i], b[i]) for i in a if i in b and a[i] is not None and b[i] is not None]
    same = sum(x == y for x, y in pairs)
    return {"decision": decision, "items": len(pairs), "agree": same,
            "agreement": rate(same, len(pairs)), "kappa": cohen_kappa(pairs)}
