"""`hallurun eval`: judge a finished run's answers with one judge or two, and write what they found.

eval knows no task: the run's `Scoring` (from the task registry) says which questions to ask, how to turn the
verdicts into metrics and what to show. Per judge, RUN_DIR/eval/<judge>/ gets judgments.jsonl, eval_results.json
and the scoring's artifacts (a chart); the primary judge's eval_results.json is also RUN_DIR/eval_results.json;
two judges get RUN_DIR/eval/agreement_<a>_vs_<b>.json. A model judge's questions run as resumable hallurun runs
(`model_judge`); the heuristic judge (`judge.HeuristicJudge`) runs in-process and has no stages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from hallurun import __version__
from hallurun.eval import report
from hallurun.eval.answers import RunInput, load_run
from hallurun.eval.errors import EvalError, EvalStopped
from hallurun.eval.judge import Judge
from hallurun.eval.layout import EVAL_DIR, EVAL_RESULTS, JUDGMENTS
from hallurun.eval.metrics import agreement, bin_results
from hallurun.eval.scoring import Judgment, Results, Scoring, TaskOptions
from hallurun.store.durable import write_atomic

__all__ = ["EVAL_DIR", "EVAL_RESULTS", "JUDGMENTS", "EvalError", "EvalStopped", "Evaluated", "Evaluation",
           "compare_judges", "evaluate", "evaluate_run"]


@dataclass
class Evaluation:
    """A finished evaluation by one judge: what was written and where."""

    results: Results
    judgments: list[Judgment]
    judge_dir: Path


@dataclass
class Evaluated:
    """`evaluate_run`'s outcome: one evaluation per judge, and the first judge's agreement with each other one."""

    evaluations: list[Evaluation]
    agreements: list[dict[str, Any]]

    @property
    def results(self) -> Results:
        """The first (primary) judge's results: what RUN_DIR/eval_results.json holds."""
        return self.evaluations[0].results

    @property
    def judge_failed(self) -> bool:
        """True when some judge request failed (its items are reported, not scored)."""
        return any(e.results["counts"]["judge_failed"] for e in self.evaluations)


def evaluate_run(run_dir: Path, scoring: Scoring, judges: Sequence[Judge], console: Console, *,
                 options: TaskOptions | None = None) -> Evaluated:
    """Judge a finished run with each judge in turn (the first is the primary one), print each one's tables,
    and, with more than one judge, measure how often the first agrees with each other one."""
    options = dict(options or {})
    for name in options:
        if name not in {o.name for o in scoring.options}:
            raise EvalError(f"--{name} does not apply to {scoring.name} runs; {run_dir} is scored as {scoring.name}")
    run = load_run(run_dir, scoring, options)
    done: list[Evaluation] = []
    for k, judge in enumerate(judges):
        done.append(evaluate(run, scoring, judge, console, options=options, primary=k == 0))
        report.show(done[-1].results, scoring, console)
    agreements = []
    for other in done[1:]:
        found = compare_judges(run, scoring, done[0], other)
        console.print(report.agreement_table(found))
        console.print(f"agreement: {found['file']}", highlight=False)
        agreements.append(found)
    return Evaluated(done, agreements)


def evaluate(run: RunInput, scoring: Scoring, judge: Judge, console: Console, *, options: TaskOptions | None = None,
             primary: bool = True) -> Evaluation:
    """Judge the run, write RUN_DIR/eval/<judge>/{judgments.jsonl, eval_results.json, artifacts} and, for the
    primary judge, RUN_DIR/eval_results.json."""
    options = options or {}
    judge_dir = run.run_dir / EVAL_DIR / judge.name
    judge_dir.mkdir(parents=True, exist_ok=True)
    judgments = scoring.judge(run.records, judge.bind(judge_dir, scoring.name, console), options)
    metrics, bins = scoring.metrics(judgments)
    counts = {**metrics.pop("counts"), "inference_failed": run.inference_failed}
    results: Results = {
        "task": run.task, "evaluator": scoring.name, "model": run.model, "run_dir": str(run.run_dir),
        "judge": judge.name, "judge_model": judge.model, "approximate": judge.note is not None,
        **({"note": judge.note} if judge.note is not None else {}),
        **metrics, "counts": counts,
    }
    if bins and scoring.bins_key:
        results[scoring.bins_key] = bin_results(bins)
    results.update({note.key: note.text(options) for note in scoring.notes})
    write_atomic(judge_dir / JUDGMENTS, b"".join(orjson.dumps(j) + b"\n" for j in judgments))
    results["files"] = {"judgments": str(judge_dir / JUDGMENTS)}
    for artifact in scoring.artifacts:
        if artifact.applies(results):
            made = artifact.write(results, judge_dir / artifact.file)
            results["files"][artifact.name] = str(made) if made else None
    results["hallurun_version"] = __version__
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    blob = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    write_atomic(judge_dir / EVAL_RESULTS, blob)
    if primary:
        write_atomic(run.run_dir / EVAL_RESULTS, blob)
    return Evaluation(results, judgments, judge_dir)


def compare_judges(run: RunInput, scoring: Scoring, a: Evaluation, b: Evaluation) -> dict[str, Any]:
    """Per decision, how often judges A and B agree on this run, and Cohen's kappa; written beside their folders."""
    ours, theirs = scoring.decisions(a.judgments), scoring.decisions(b.judgments)
    found = {"run_dir": str(run.run_dir), "evaluator": scoring.name, "judge_a": a.results["judge"],
             "judge_b": b.results["judge"], "decisions": [agreement(name, ours[name], theirs[name])
                                                          for name in ours]}
    path = run.run_dir / EVAL_DIR / f"agreement_{a.results['judge']}_vs_{b.results['judge']}.json"
    write_atomic(path, orjson.dumps(found, option=orjson.OPT_INDENT_2))
    found["file"] = str(path)
    return found
