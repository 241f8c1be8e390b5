"""HalluLens' metrics from per-item judgments, and the agreement between two judges. Pure functions.

Rates are fractions in [0, 1] (None when their denominator is empty). An item whose needed verdict could not be
read (`problem="unparseable"`) or whose judge request failed (`problem="judge_failed"`) is not scored: it is left
out of every denominator and counted under its problem, so it never silently counts as either outcome, and all of
a task's rates share one denominator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

RECALL_K = 32
UNPARSEABLE, JUDGE_FAILED = "unparseable", "judge_failed"
# The counts kept beside each bin's rates in eval_results.json and its tables: the rates' denominators, so that an
# undefined (null, "n/a") rate shows why, e.g. 0 answered.
BIN_COUNTS = ("items", "scored", "answered", "answering")

J = TypeVar("J")


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class QAJudgment:
    """One PreciseWikiQA item. `verdict` (CORRECT / INCORRECT / UNVERIFIABLE) matters only when not abstained."""

    id: str
    abstained: bool | None
    verdict: str | None = None
    problem: str | None = None
    bin: str | None = None  # h_score_cat, the popularity bin

    @property
    def scored(self) -> bool:
        return self.problem is None and self.abstained is not None and (self.abstained or self.verdict is not None)


def precisewikiqa(judgments: Sequence[QAJudgment]) -> dict[str, Any]:
    """`halu_Rate` = answered and not CORRECT / answered; `refusal_rate` = abstained / scored;
    `correct_rate` = answered and CORRECT / scored (HalluLens: abstentions count as not correct).

    "Answered" means not abstained. A hallucination is any answered verdict other than CORRECT (INCORRECT or
    UNVERIFIABLE). An abstention is never a hallucination, whatever its correctness verdict says.
    """
    scored = [j for j in judgments if j.scored]
    abstained = sum(1 for j in scored if j.abstained)
    answered = [j for j in scored if not j.abstained]
    verdicts = Counter(j.verdict for j in answered)
    correct = verdicts["CORRECT"]
    hallucinated = len(answered) - correct
    return {
        "halu_Rate": _rate(hallucinated, len(answered)),
        "refusal_rate": _rate(abstained, len(scored)),
        "correct_rate": _rate(correct, len(scored)),
        "counts": {
            "items": len(judgments), "scored": len(scored), "abstained": abstained, "answered": len(answered),
            "correct": correct, "incorrect": verdicts["INCORRECT"], "unverifiable": verdicts["UNVERIFIABLE"],
            "hallucinated": hallucinated, **_problems(judgments, lambda j: j.scored),
        },
    }


@dataclass(frozen=True)
class EntityJudgment:
    """One MixedEntities item: does the answer treat the made-up entity as real?"""

    id: str
    believes_exists: bool | None
    problem: str | None = None
    bin: str | None = None  # the entity type (animal, plant, ...)

    @property
    def scored(self) -> bool:
        return self.problem is None and self.believes_exists is not None


def mixedentities(judgments: Sequence[EntityJudgment]) -> dict[str, Any]:
    """`refusal_rate` = answers that do not treat the entity as real / scored; `false_acceptance_rate` = 1 − it."""
    scored = [j for j in judgments if j.scored]
    accepted = sum(1 for j in scored if j.believes_exists)
    refusal = _rate(len(scored) - accepted, len(scored))
    return {
        "refusal_rate": refusal,
        "false_acceptance_rate": None if refusal is None else 1 - refusal,
        "counts": {"items": len(judgments), "scored": len(scored), "refused": len(scored) - accepted,
                   "accepted": accepted, **_problems(judgments, lambda j: j.scored)},
    }


@dataclass(frozen=True)
class LongJudgment:
    """One LongWiki item: the support verdict of each extracted claim (None: that claim's verdict is missing).

    `claims` is None when the claims themselves could not be extracted; an empty tuple means the answer makes no
    claim, which HalluLens counts as abstaining.
    """

    id: str
    claims: tuple[bool | None, ...] | None
    problem: str | None = None
    bin: str | None = None

    @property
    def abstained(self) -> bool:
        return self.claims == ()

    @property
    def scored(self) -> bool:
        if self.problem is not None or self.claims is None:
            return False
        return self.abstained or any(v is not None for v in self.claims)


def prompt_scores(supported: int, claims: int, k: int = RECALL_K) -> tuple[float, float, float]:
    """One answer's (precision, recall@k, F1@k): supported/claims, min(supported/k, 1), their harmonic mean.

    An answer without a claim that has a verdict has no precision (it is an abstention, or not scored): callers
    leave it out, and passing `claims=0` is an error rather than a made-up 0.0.
    """
    if claims <= 0:
        raise ValueError("precision is undefined for an answer without a claim with a verdict")
    precision = supported / claims
    recall = min(supported / k, 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def longwiki(judgments: Sequence[LongJudgment], k: int = RECALL_K) -> dict[str, Any]:
    """`precision`, `recall@k`, `f1@k`: per-answer scores averaged over the answers that make claims.

    Answers with no claim are abstentions (counted in `refusal_rate`, left out of the averages, as in HalluLens).
    A claim whose verdict is missing is left out of its answer's counts; an answer none of whose claims has a
    verdict is not scored.
    """
    scored = [j for j in judgments if j.scored]
    answering = [j for j in scored if not j.abstained]
    per_prompt = []
    claims = supported = 0
    for j in answering:
        verdicts = [v for v in j.claims or () if v is not None]
        claims += len(verdicts)
        supported += sum(verdicts)
        per_prompt.append(prompt_scores(sum(verdicts), len(verdicts), k))
    n = len(per_prompt)
    unscored_claims = sum(1 for j in judgments if j.claims for v in j.claims if v is None)
    return {
        "precision": sum(p for p, _, _ in per_prompt) / n if n else None,
        f"recall@{k}": sum(r for _, r, _ in per_prompt) / n if n else None,
        f"f1@{k}": sum(f for _, _, f in per_prompt) / n if n else None,
        "refusal_rate": _rate(len(scored) - n, len(scored)),
        "counts": {"items": len(judgments), "scored": len(scored), "abstained": len(scored) - n, "answering": n,
                   "claims": claims, "supported": supported, "claims_without_verdict": unscored_claims,
                   **_problems(judgments, lambda j: j.scored)},
    }


def _problems(judgments: Iterable[J], scored: Callable[[J], bool]) -> dict[str, int]:
    """Counts of unscored items by problem; an unscored item with no stated problem counts as unparseable."""
    counts = Counter((getattr(j, "problem", None) or UNPARSEABLE) for j in judgments if not scored(j))
    return {UNPARSEABLE: counts[UNPARSEABLE], JUDGE_FAILED: counts[JUDGE_FAILED]}


def by_bin(judgments: Sequence[J], compute: Callable[[Sequence[J]], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The metrics per bin (popularity bin `h_score_cat`, or entity type), bins in numeric order when numeric."""
    groups: dict[str, list[J]] = {}
    for j in judgments:
        groups.setdefault(str(getattr(j, "bin", None)), []).append(j)
    keys = sorted(groups, key=lambda b: (0, float(b), b) if _is_number(b) else (1, 0.0, b))
    return {b: compute(groups[b]) for b in keys if b != "None"}


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
            "agreement": _rate(same, len(pairs)), "kappa": cohen_kappa(pairs)}
