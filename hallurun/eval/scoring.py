"""What a task gives `hallurun eval`: its `Scoring`, the one value that says how the task's answers are judged,
measured and shown. eval knows no task: it runs whichever Scoring the registry hands it.

A task's scoring module builds its `Question`s (eval.question), judges records with them through whichever
`Judge` it is given, turns the judgments into metrics (eval.metrics has the shared helpers), and names its
headline metrics. `validate` checks a Scoring when it is loaded, so an incomplete one fails before judging.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallurun.errors import UsageError
from hallurun.eval.judge import Judge
from hallurun.eval.metrics import JUDGE_FAILED, UNPARSEABLE

# A run's answer as eval reads it: the dataset record's own fields (any JSON), plus `id`, `prompt`, `generation`.
Record = dict[str, Any]
# One judgments.jsonl line: the item's fields, its verdicts, its `problem` and its judge's raw replies.
Judgment = dict[str, Any]
# Rates by name plus a "counts" dict; bins map a bin's name to the same.
Metrics = dict[str, Any]
Bins = dict[str, Metrics]
# Per decision (e.g. "abstained"), each item's decision; None: not decided. Two judges' are compared.
Decisions = dict[str, dict[str, Hashable | None]]
# The task options given to `hallurun eval` (e.g. passages → its file), by option name.
TaskOptions = Mapping[str, Path]
# eval_results.json as a dict (written with orjson; its fields are the report's contract).
Results = dict[str, Any]


class ScoringError(UsageError):
    """A Scoring that does not hold what eval needs (found when it is loaded, before any judging)."""


@dataclass(frozen=True)
class Need:
    """The field every record must carry for this scoring, and why (the error message says it)."""

    field: str
    why: str


@dataclass(frozen=True)
class Column:
    """A headline metric: its key in eval_results.json and its label in the tables."""

    key: str
    label: str


@dataclass(frozen=True)
class TaskOption:
    """An option of `hallurun eval` that only this scoring takes (`--<name> PATH`)."""

    name: str
    need: Need | None = None  # what every record must carry instead when the option is given


@dataclass(frozen=True)
class Artifact:
    """An extra file an evaluation writes beside its judgments (e.g. a chart), listed under results["files"]."""

    name: str  # its key under results["files"]
    file: str  # its file name in RUN_DIR/eval/<judge>/
    write: Callable[[Results, Path], Path | None]  # writes it; None when it cannot be made (a missing library)
    applies: Callable[[Results], bool] = lambda results: True  # whether these results get one at all


@dataclass(frozen=True)
class Note:
    """A line about how the numbers were made, kept in eval_results.json as `key` and printed after the tables."""

    key: str
    text: Callable[[TaskOptions], str]


@dataclass(frozen=True)
class Scoring:
    """How a task's answers are judged and measured."""

    name: str  # eval_results.json's "evaluator"; stage runs are named <name>-judge-<stage>
    need: Need
    judge: Callable[[Sequence[Record], Judge, TaskOptions], list[Judgment]]  # records → judgments, in order
    metrics: Callable[[Sequence[Judgment]], tuple[Metrics, Bins]]  # judgments → (metrics, per-bin metrics)
    decisions: Callable[[Sequence[Judgment]], Decisions]  # judgments → what two judges are compared on
    headline: tuple[Column, ...]  # the metrics the tables show, in order
    bins_key: str | None = None  # eval_results.json's key of the per-bin results, "by_<bin field>"
    artifacts: tuple[Artifact, ...] = ()
    options: tuple[TaskOption, ...] = ()
    notes: tuple[Note, ...] = ()

    def need_for(self, options: TaskOptions) -> Need:
        """What every record must carry, given these task options."""
        for option in self.options:
            if option.name in options and option.need is not None:
                return option.need
        return self.need


def validate(scoring: Scoring) -> Scoring:
    """Check that `scoring` can fill every table and file eval writes; raise ScoringError naming what is missing.

    Its metrics of no judgments must hold every headline key and the counts eval reports (`unparseable`,
    `judge_failed`), so a scoring that would fail in the report fails here, when it is loaded."""
    where = f"scoring {scoring.name!r}"
    if not scoring.name or not scoring.headline:
        raise ScoringError(f"{where}: needs a name and at least one headline metric")
    if scoring.bins_key is not None and not scoring.bins_key.startswith("by_"):
        raise ScoringError(f"{where}: bins_key {scoring.bins_key!r} must start with 'by_'")
    try:
        metrics, bins = scoring.metrics([])
        decisions = scoring.decisions([])
    except Exception as exc:  # any failure of the task's code on no input is the task's bug
        raise ScoringError(f"{where}: its metrics or decisions fail on no judgments ({exc!r})") from None
    if not isinstance(metrics, dict) or not isinstance(bins, dict) or not isinstance(decisions, dict):
        raise ScoringError(f"{where}: metrics must return (dict, dict) and decisions a dict")
    missing = [c.key for c in scoring.headline if c.key not in metrics]
    counts = metrics.get("counts")
    if not isinstance(counts, dict):
        missing.append("counts")
    else:
        missing += [f"counts.{k}" for k in (UNPARSEABLE, JUDGE_FAILED) if k not in counts]
    if missing:
        raise ScoringError(f"{where}: its metrics lack {', '.join(missing)}")
    return scoring
