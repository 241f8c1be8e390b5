"""A judge question: one decision asked about many items, and the verdicts it gets back.

A `Question` holds, side by side, everything any judge needs to decide it: the stage name (a model judge's run
folder and the key of its replies in judgments.jsonl), the prompt a model judge is sent, the parser that reads
its reply, the heuristic judge's answer for the same inputs, the reply's token budget, and the one reply format
the strict retry prompt asks for. A task writes its questions once; every judge asks them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")  # what one item's question is asked about (the task's own value)
V = TypeVar("V")  # the verdict's value

RETRY_MARKER = "Your previous reply was:"
_MAX_QUOTED_REPLY = 2000  # chars of an unreadable reply quoted back in the retry prompt


@dataclass(frozen=True)
class Question(Generic[In, V]):
    """One judge decision, as every judge asks it."""

    stage: str  # e.g. "abstain": RUN/eval/<judge>/<stage>/, and `<stage>-retry` for the re-asked ones
    prompt: Callable[[In], str]  # the model judge's prompt for one item
    parse: Callable[[str], V | None]  # a model judge's reply → the verdict, None when it cannot be read
    heuristic: Callable[[In], V]  # the heuristic judge's verdict for the same inputs
    max_tokens: int  # the model judge's reply budget
    reply_format: str  # the one reply format the strict retry prompt names, e.g. 'the JSON object {...}'


@dataclass(frozen=True)
class Verdict(Generic[V]):
    """A parsed verdict (`value`), or why there is none (`problem`), with the judge's raw replies by stage."""

    value: V | None
    problem: str | None = None
    replies: dict[str, str] = field(default_factory=dict)


def retry_prompt(original: str, reply: str, reply_format: str) -> str:
    """The stricter re-prompt for an unreadable verdict: the same question, the reply it gave, and the one format
    that will be read. Quoting the reply makes each retry prompt specific to what went wrong."""
    quoted = reply.strip()[:_MAX_QUOTED_REPLY] or "(an empty reply)"
    return (f"{original}\n\n{RETRY_MARKER}\n<<<\n{quoted}\n>>>\n"
            f"That reply could not be read. Reply again with only {reply_format}: no explanation, no other text.")


def problem_of(*verdicts: Verdict[object] | None) -> tuple[str | None, dict[str, str]]:
    """The first problem among an item's verdicts, and all of its raw replies (for its judgments.jsonl line)."""
    replies: dict[str, str] = {}
    problem = None
    for verdict in verdicts:
        if verdict is None:
            continue
        replies.update(verdict.replies)
        problem = problem or verdict.problem
    return problem, replies
