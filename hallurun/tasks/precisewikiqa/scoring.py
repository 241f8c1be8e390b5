"""How `hallurun eval` scores PreciseWikiQA: abstention, then correctness of the answers that did not abstain;
HalluLens' hallucination, refusal and correct rates, overall and by popularity bin, and the chart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hallurun.eval.judge import Judge
from hallurun.eval.metrics import bin_of, by_bin, problems, rate
from hallurun.eval.question import problem_of
from hallurun.eval.scoring import (
    Artifact,
    Bins,
    Column,
    Decisions,
    Judgment,
    Metrics,
    Need,
    Record,
    Results,
    Scoring,
    TaskOptions,
)
from hallurun.eval.text import is_empty
from hallurun.tasks.precisewikiqa import chart
from hallurun.tasks.precisewikiqa.questions import ABSTAIN, CORRECT, Answer, Graded

CHART = "by_popularity.png"


def judge(records: Sequence[Record], judge: Judge, options: TaskOptions) -> list[Judgment]:
    """Abstention for every non-empty answer, then correctness for the answers that did not abstain."""
    spoken = [r for r in records if not is_empty(r["generation"])]
    abstain = judge.ask(ABSTAIN, {r["id"]: Answer(r["prompt"], r["generation"]) for r in spoken})
    answered = [r for r in spoken if abstain[r["id"]].value is False]
    correct = judge.ask(CORRECT, {r["id"]: Graded(r["prompt"], r["answer"], r["generation"]) for r in answered})
    out = []
    for r in records:
        empty = is_empty(r["generation"])
        a, c = abstain.get(r["id"]), correct.get(r["id"])
        problem, replies = problem_of(a, c)
        abstained = True if empty else (a.value if a else None)
        verdict = c.value if c else None
        out.append({"id": r["id"], "h_score_cat": r.get("h_score_cat"), "prompt": r["prompt"], "answer": r["answer"],
                    "generation": r["generation"], "empty": empty, "abstained": abstained, "verdict": verdict,
                    "hallucinated": None if abstained is not False or verdict is None else verdict != "CORRECT",
                    "problem": problem, "judge_replies": replies})
    return out


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


def rates(judgments: Sequence[QAJudgment]) -> Metrics:
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
        "halu_Rate": rate(hallucinated, len(answered)),
        "refusal_rate": rate(abstained, len(scored)),
        "correct_rate": rate(correct, len(scored)),
        "counts": {
            "items": len(judgments), "scored": len(scored), "abstained": abstained, "answered": len(answered),
            "correct": correct, "incorrect": verdicts["INCORRECT"], "unverifiable": verdicts["UNVERIFIABLE"],
            "hallucinated": hallucinated, **problems(judgments, lambda j: j.scored),
        },
    }


def metrics(judgments: Sequence[Judgment]) -> tuple[Metrics, Bins]:
    """The rates overall and by popularity bin, from judgments.jsonl records."""
    qa = [QAJudgment(j["id"], j["abstained"], j["verdict"], j["problem"], bin_of(j.get("h_score_cat")))
          for j in judgments]
    return rates(qa), by_bin(qa, rates)


def decisions(judgments: Sequence[Judgment]) -> Decisions:
    """What two judges are compared on: abstention, and hallucination of the answers both call answered."""
    return {"abstained": {j["id"]: j["abstained"] for j in judgments},
            "hallucinated": {j["id"]: j["hallucinated"] for j in judgments}}


def _has_bins(results: Results) -> bool:
    return bool(results.get("by_h_score_cat"))


SCORING = Scoring(
    name="precisewikiqa",
    need=Need("answer", "the gold answer of every question"),
    judge=judge,
    metrics=metrics,
    decisions=decisions,
    headline=(Column("halu_Rate", "hallucination rate (of answered)"), Column("refusal_rate", "refusal rate"),
              Column("correct_rate", "correct rate (of all)")),
    bins_key="by_h_score_cat",
    artifacts=(Artifact("chart", CHART, chart.write, _has_bins),),
)
