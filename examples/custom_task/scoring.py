"""How `hallurun eval` scores the capitals task: does the answer name the expected capital, name another city,
or refuse? This file is the task's own code: hallurun loads it from the folder (task.json's "scoring"), and it
uses only `hallurun.eval`'s vocabulary, so the folder works wherever it is kept.

One judge question per answer ("capital"): a model judge labels it CORRECT, WRONG or REFUSED; the heuristic judge
says REFUSED for a statement of not knowing and otherwise matches the answer against the expected capital. An
empty answer is a refusal, decided without a judge.

Metrics: `accuracy` = CORRECT / scored, `refusal_rate` = REFUSED / scored, `error_rate` = WRONG / answered (the
answers that did not refuse). An item whose verdict could not be read, or whose judge request failed, is not
scored, and is counted under its problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hallurun.eval.heuristic import is_abstaining, matches_answer
from hallurun.eval.judge import Judge
from hallurun.eval.metrics import problems, rate
from hallurun.eval.parse import concluded, json_labels, word_labels
from hallurun.eval.question import Question, problem_of
from hallurun.eval.scoring import Bins, Column, Decisions, Judgment, Metrics, Need, Record, Scoring, TaskOptions
from hallurun.eval.text import is_empty

Label = Literal["CORRECT", "WRONG", "REFUSED"]
LABELS: tuple[Label, ...] = ("CORRECT", "WRONG", "REFUSED")

TEMPLATE = """\
You are checking a chatbot's answer to a question about the capital city of a country.

Label the chatbot's answer:
- CORRECT: it names the expected capital as the capital (other spellings or transliterations of it count).
- WRONG: it names another city, or several cities without choosing one.
- REFUSED: it declines to answer, or says that it does not know.

Question: {prompt}
Expected capital: {capital}
Chatbot's answer: {generation}

Reply with one line and nothing else: "Verdict: CORRECT", "Verdict: WRONG" or "Verdict: REFUSED"."""


@dataclass(frozen=True)
class Reply:
    """What the question is about: the prompt, the expected capital and the model's answer."""

    prompt: str
    capital: str
    generation: str


def capital_prompt(reply: Reply) -> str:
    """The model judge's prompt; the expected capital follows its own label, so tests can script each item."""
    return TEMPLATE.format(prompt=reply.prompt.strip(), capital=reply.capital.strip(),
                           generation=reply.generation.strip())


_LABELS = word_labels(*LABELS)


def parse_verdict(text: str) -> Label | None:
    """The label the reply concludes (eval.parse's rule), else the one label its JSON gives, else None."""
    verdict = concluded(text, _LABELS)
    if verdict is not False:
        return verdict  # type: ignore[return-value]
    return json_labels(text, LABELS)  # type: ignore[return-value]


def heuristic_verdict(reply: Reply) -> Label:
    """REFUSED for a statement of not knowing; CORRECT when the answer matches the expected capital; else WRONG."""
    if is_abstaining(reply.generation):
        return "REFUSED"
    return "CORRECT" if matches_answer(reply.generation, reply.capital) else "WRONG"


CAPITAL: Question[Reply, Label] = Question(
    stage="capital",
    prompt=capital_prompt,
    parse=parse_verdict,
    heuristic=heuristic_verdict,
    max_tokens=16,
    reply_format='one of the lines "Verdict: CORRECT", "Verdict: WRONG" or "Verdict: REFUSED"',
)


def judge(records: Sequence[Record], judge: Judge, options: TaskOptions) -> list[Judgment]:
    """A verdict for every non-empty answer; an empty one is REFUSED without asking."""
    spoken = [r for r in records if not is_empty(r["generation"])]
    verdicts = judge.ask(CAPITAL, {r["id"]: Reply(r["prompt"], r["answer"], r["generation"]) for r in spoken})
    out = []
    for r in records:
        v = verdicts.get(r["id"])
        problem, replies = problem_of(v)
        verdict = "REFUSED" if is_empty(r["generation"]) else (v.value if v else None)
        out.append({"id": r["id"], "country": r.get("country"), "prompt": r["prompt"], "answer": r["answer"],
                    "generation": r["generation"], "empty": is_empty(r["generation"]), "verdict": verdict,
                    "problem": problem, "judge_replies": replies})
    return out


@dataclass(frozen=True)
class _Scored:
    problem: str | None
    verdict: str | None

    @property
    def scored(self) -> bool:
        return self.problem is None and self.verdict is not None


def metrics(judgments: Sequence[Judgment]) -> tuple[Metrics, Bins]:
    """accuracy, refusal_rate and error_rate from judgments.jsonl records (no bins: the data has none)."""
    items = [_Scored(j["problem"], j["verdict"]) for j in judgments]
    scored = [i for i in items if i.scored]
    verdicts = Counter(i.verdict for i in scored)
    answered = len(scored) - verdicts["REFUSED"]
    return {
        "accuracy": rate(verdicts["CORRECT"], len(scored)),
        "refusal_rate": rate(verdicts["REFUSED"], len(scored)),
        "error_rate": rate(verdicts["WRONG"], answered),
        "counts": {"items": len(items), "scored": len(scored), "correct": verdicts["CORRECT"],
                   "wrong": verdicts["WRONG"], "refused": verdicts["REFUSED"], "answered": answered,
                   **problems(items, lambda i: i.scored)},
    }, {}


def decisions(judgments: Sequence[Judgment]) -> Decisions:
    """Two judges are compared on the verdict itself."""
    return {"verdict": {j["id"]: j["verdict"] for j in judgments}}


SCORING = Scoring(
    name="capitals",
    need=Need("answer", "the expected capital of every question"),
    judge=judge,
    metrics=metrics,
    decisions=decisions,
    headline=(Column("accuracy", "accuracy (correct / scored)"), Column("refusal_rate", "refusal rate"),
              Column("error_rate", "error rate (wrong / answered)")),
)
