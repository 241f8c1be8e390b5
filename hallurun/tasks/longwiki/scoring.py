"""How `hallurun eval` scores LongWiki: claims from every answer, a support verdict for each claim against its
evidence; HalluLens' precision, recall@32 and F1@32, overall and by popularity bin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hallurun.eval.judge import Judge
from hallurun.eval.metrics import bin_of, by_bin, problems, rate
from hallurun.eval.question import problem_of
from hallurun.eval.scoring import (
    Bins,
    Column,
    Decisions,
    Judgment,
    Metrics,
    Need,
    Note,
    Record,
    Scoring,
    TaskOption,
    TaskOptions,
)
from hallurun.eval.text import is_empty
from hallurun.tasks.longwiki.evidence import evidence_for, load_passages
from hallurun.tasks.longwiki.questions import CLAIMS, VERIFY, Checked, Essay

RECALL_K = 32
PASSAGES = "passages"  # the eval option: --passages FILE
NO_WIKIPEDIA = ("no Wikipedia database is available offline: claims are verified against each item's reference "
                "section{passages}, not against retrieved Wikipedia passages as in HalluLens")


def judge(records: Sequence[Record], judge: Judge, options: TaskOptions) -> list[Judgment]:
    """Claims from every non-empty answer, then a support verdict for every claim against its evidence."""
    passages = load_passages(options[PASSAGES]) if PASSAGES in options else None
    spoken = [r for r in records if not is_empty(r["generation"])]
    extracted = judge.ask(CLAIMS, {r["id"]: Essay(r["prompt"], r["generation"]) for r in spoken})
    by_id = {r["id"]: r for r in records}
    claim_ids = {f"{item_id}#{k}": (item_id, claim) for item_id, v in extracted.items() if v.value
                 for k, claim in enumerate(v.value)}
    checks = judge.ask(VERIFY, {cid: Checked(claim, evidence_for(by_id[i], claim, passages))
                                for cid, (i, claim) in claim_ids.items()})
    out = []
    for r in records:
        v = extracted.get(r["id"])
        problem, replies = problem_of(v)
        claims = [] if is_empty(r["generation"]) else (v.value if v else None)
        rows = None
        if claims is not None:
            rows = []
            for k, claim in enumerate(claims):
                check = checks[f"{r['id']}#{k}"]
                rows.append({"claim": claim, "supported": check.value, "problem": check.problem,
                             "judge_replies": check.replies})
        scored = [row["supported"] for row in rows or [] if row["supported"] is not None]
        precision = recall = f1 = None
        if scored:
            precision, recall, f1 = prompt_scores(sum(scored), len(scored))
        if rows and not scored and problem is None:
            problem = next(row["problem"] for row in rows)  # no claim of this answer has a verdict
        out.append({"id": r["id"], "title": r.get("title"), "h_score_cat": r.get("h_score_cat"), "prompt": r["prompt"],
                    "generation": r["generation"], "empty": is_empty(r["generation"]),
                    "abstained": None if rows is None else not rows, "claims": rows, "precision": precision,
                    "recall@32": recall, "f1@32": f1, "problem": problem, "judge_replies": replies})
    return out


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


def rates(judgments: Sequence[LongJudgment], k: int = RECALL_K) -> Metrics:
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
        "refusal_rate": rate(len(scored) - n, len(scored)),
        "counts": {"items": len(judgments), "scored": len(scored), "abstained": len(scored) - n, "answering": n,
                   "claims": claims, "supported": supported, "claims_without_verdict": unscored_claims,
                   **problems(judgments, lambda j: j.scored)},
    }


def metrics(judgments: Sequence[Judgment]) -> tuple[Metrics, Bins]:
    """The scores overall and by popularity bin, from judgments.jsonl records."""
    lw = [LongJudgment(j["id"], None if j["claims"] is None else tuple(c["supported"] for c in j["claims"]),
                       j["problem"], bin_of(j.get("h_score_cat"))) for j in judgments]
    return rates(lw), by_bin(lw, rates)


def decisions(judgments: Sequence[Judgment]) -> Decisions:
    """Two judges split answers into different claims, so only whole-answer decisions line up."""
    return {"abstained": {j["id"]: j["abstained"] for j in judgments}}


def _evidence(options: TaskOptions) -> str:
    return NO_WIKIPEDIA.format(passages=f" and the passages in {options[PASSAGES]}" if PASSAGES in options else "")


SCORING = Scoring(
    name="longwiki",
    need=Need("reference", "the reference section of every question (or give --passages)"),
    judge=judge,
    metrics=metrics,
    decisions=decisions,
    headline=(Column("precision", "precision (supported / claims)"), Column("recall@32", "recall@32"),
              Column("f1@32", "F1@32"), Column("refusal_rate", "refusal rate")),
    bins_key="by_h_score_cat",
    options=(TaskOption(PASSAGES, need=Need("title", "the page title of every question, to find its passages")),),
    notes=(Note("evidence", _evidence),),
)
