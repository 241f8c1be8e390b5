"""How `hallurun eval` scores MixedEntities: whether each answer treats the made-up entity as real; the refusal
and false acceptance rates, overall and by entity type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hallurun.eval.judge import Judge
from hallurun.eval.metrics import bin_of, by_bin, problems, rate
from hallurun.eval.question import problem_of
from hallurun.eval.scoring import Bins, Column, Decisions, Judgment, Metrics, Need, Record, Scoring, TaskOptions
from hallurun.eval.text import is_empty
from hallurun.tasks.mixedentities.questions import EXISTS, Described


def judge(records: Sequence[Record], judge: Judge, options: TaskOptions) -> list[Judgment]:
    """Whether each non-empty answer treats the made-up entity as real; an empty answer is a refusal."""
    spoken = [r for r in records if not is_empty(r["generation"])]
    exists = judge.ask(EXISTS, {r["id"]: Described(r["prompt"], r["name"], str(r.get("type") or "entity"),
                                                   r["generation"]) for r in spoken})
    out = []
    for r in records:
        v = exists.get(r["id"])
        problem, replies = problem_of(v)
        believes = False if is_empty(r["generation"]) else (v.value if v else None)
        out.append({"id": r["id"], "name": r["name"], "type": r.get("type"), "prompt": r["prompt"],
                    "generation": r["generation"], "empty": is_empty(r["generation"]),
                    "believes_exists": believes, "refused": None if believes is None else not believes,
                    "problem": problem, "judge_replies": replies})
    return out


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


def rates(judgments: Sequence[EntityJudgment]) -> Metrics:
    """`refusal_rate` = answers that do not treat the entity as real / scored; `false_acceptance_rate` = 1 − it."""
    scored = [j for j in judgments if j.scored]
    accepted = sum(1 for j in scored if j.believes_exists)
    refusal = rate(len(scored) - accepted, len(scored))
    return {
        "refusal_rate": refusal,
        "false_acceptance_rate": None if refusal is None else 1 - refusal,
        "counts": {"items": len(judgments), "scored": len(scored), "refused": len(scored) - accepted,
                   "accepted": accepted, **problems(judgments, lambda j: j.scored)},
    }


def metrics(judgments: Sequence[Judgment]) -> tuple[Metrics, Bins]:
    """The rates overall and by entity type, from judgments.jsonl records."""
    me = [EntityJudgment(j["id"], j["believes_exists"], j["problem"], bin_of(j.get("type"))) for j in judgments]
    return rates(me), by_bin(me, rates)


def decisions(judgments: Sequence[Judgment]) -> Decisions:
    """What two judges are compared on: whether the answer treats the entity as real."""
    return {"believes_exists": {j["id"]: j["believes_exists"] for j in judgments}}


SCORING = Scoring(
    name="mixedentities",
    need=Need("name", "the made-up name of every entity"),
    judge=judge,
    metrics=metrics,
    decisions=decisions,
    headline=(Column("refusal_rate", "refusal rate"), Column("false_acceptance_rate", "false acceptance rate")),
    bins_key="by_type",
)
