"""Who answers a task's questions: the `Judge` protocol, and the heuristic judge, which answers in-process.

A task's judging code is written once against this protocol: `judge.ask(question, {item_id: inputs})` returns a
`Verdict` for every item, whichever judge it is. The model judge (`model_judge.ModelJudge`) runs each question
as a hallurun run; the heuristic judge calls the question's own heuristic rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from hallurun.eval.heuristic import NOTE
from hallurun.eval.question import Question, Verdict

if TYPE_CHECKING:  # only an annotation here: a task's scoring module need not load rich
    from rich.console import Console

HEURISTIC = "heuristic"

In = TypeVar("In")
V = TypeVar("V")


class Judge(Protocol):
    """Answers judge questions about a run's items."""

    @property
    def name(self) -> str:
        """The judge's folder under RUN_DIR/eval/ and its name in every report."""
        ...

    @property
    def model(self) -> str | None:
        """The judge model, None for a judge that uses none."""
        ...

    @property
    def note(self) -> str | None:
        """Why this judge's numbers are approximate (None: they are not); written into eval_results.json."""
        ...

    def bind(self, folder: Path, label: str, console: Console) -> Judge:
        """This judge, set to work for one evaluation: in `folder` (RUN/eval/<judge>), its requests labelled
        `label` (the scoring's name), reporting progress on `console`."""
        ...

    def ask(self, question: Question[In, V], inputs: Mapping[str, In]) -> dict[str, Verdict[V]]:
        """The verdict on `question` for every item of `inputs` (item id → what the question is about)."""
        ...


@dataclass(frozen=True)
class HeuristicJudge:
    """The offline, approximate judge: each question's heuristic rule, in-process, with no stages."""

    @property
    def name(self) -> str:
        return HEURISTIC

    @property
    def model(self) -> str | None:
        return None

    @property
    def note(self) -> str | None:
        return NOTE

    def bind(self, folder: Path, label: str, console: Console) -> HeuristicJudge:
        """Nothing to set up: the heuristic judge writes no stages."""
        return self

    def ask(self, question: Question[In, V], inputs: Mapping[str, In]) -> dict[str, Verdict[V]]:
        """The question's heuristic verdict for every item."""
        return {item_id: Verdict(question.heuristic(value)) for item_id, value in inputs.items()}
