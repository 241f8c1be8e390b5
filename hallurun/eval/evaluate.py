"""`hallurun eval`: judge a finished run's answers and compute HalluLens' metrics.

An LLM judge works in stages, and every stage is an ordinary hallurun run (supervised server, crash-safe
checkpoint, exactly once) in `RUN_DIR/eval/<judge>/<stage>/`, whose dataset is the stage's `prompts.jsonl`. A
stage's prompts are a pure function of the run's answers and of earlier stages' verdicts, so running `eval` again
after a crash rebuilds byte-identical prompt files, skips finished stages without starting a server, and continues
the unfinished one where it stopped. Verdicts that cannot be read are asked again once, in a `<stage>-retry` stage
with a stricter prompt, and then recorded as unparseable.

The heuristic judge (`heuristic.py`) runs in-process and has no stages.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from hallurun import __version__
from hallurun.core import runner
from hallurun.core import stage as run_stage
from hallurun.errors import RunStopped, UsageError
from hallurun.eval import heuristic, judges
from hallurun.eval.metrics import (
    BIN_COUNTS,
    JUDGE_FAILED,
    UNPARSEABLE,
    EntityJudgment,
    LongJudgment,
    QAJudgment,
    agreement,
    by_bin,
    longwiki,
    mixedentities,
    precisewikiqa,
    prompt_scores,
)
from hallurun.store import manifest
from hallurun.store import summary as status
from hallurun.store.checkpoint import RESULTS, read_records
from hallurun.store.durable import write_atomic
from hallurun.store.jsonl import JsonlError, read_objects

EVALUATORS = ("precisewikiqa", "mixedentities", "longwiki")
HEURISTIC = "heuristic"
EVAL_DIR = "eval"
EVAL_RESULTS = "eval_results.json"
JUDGMENTS = "judgments.jsonl"
PROMPTS = "prompts.jsonl"
CHART = "by_popularity.png"
EVIDENCE_PASSAGES = 5  # passages per claim, besides the reference section, when --passages is given
# Judge replies are short verdicts, except claim lists, which can be as long as the answer they split.
MAX_TOKENS = {"abstain": 32, "correct": 16, "exists": 32, "claims": 1024, "verify": 16}
NO_WIKIPEDIA = ("no Wikipedia database is available offline: claims are verified against each item's reference "
                "section{passages}, not against retrieved Wikipedia passages as in HalluLens")


class EvalError(UsageError):
    """Bad or mismatched input: a one-line message, exit code 2."""


class EvalStopped(RunStopped):
    """A judge stage stopped before finishing (server failure: 3, interrupted: 130)."""

    @property
    def code(self) -> int:
        return self.exit_code


@dataclass(frozen=True)
class Judge:
    """Who judges: a model served by a launched or external server, or the heuristic (model None)."""

    model: str | None
    server: dict[str, Any] = field(default_factory=dict)  # for config.build(server=...)
    operational: dict[str, Any] = field(default_factory=dict)  # for config.build(operational=...)

    @property
    def name(self) -> str:
        """The judge's folder under RUN_DIR/eval/: `heuristic`, or the model name made safe for a path."""
        if self.model is None:
            return HEURISTIC
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.model.strip("/")) or "judge"

    @property
    def approximate(self) -> bool:
        return self.model is None


@dataclass(frozen=True)
class RunInput:
    """What eval reads from a finished run: its identity and its answers in dataset order."""

    run_dir: Path
    task: str
    evaluator: str
    model: str
    source: Path  # generation.jsonl
    records: list[dict[str, Any]]
    inference_failed: int


def make_judge(model: str | None, url: str | None, server: dict[str, Any], operational: dict[str, Any]) -> Judge:
    """A judge from the CLI's options. No model and no URL: the heuristic. A URL without a model: the first
    model the server lists."""
    if model == HEURISTIC or (model is None and url is None):
        return Judge(None)
    if model is None:
        model = served_model(str(url))
    return Judge(model, server={**server, "url": url}, operational=operational)


def served_model(url: str) -> str:
    """The first model an OpenAI-compatible server lists at /v1/models."""
    endpoint = url.rstrip("/") + "/v1/models"
    try:
        with urllib.request.urlopen(endpoint, timeout=10) as resp:
            return str(orjson.loads(resp.read())["data"][0]["id"])
    except (OSError, urllib.error.URLError, orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise EvalError(f"cannot learn the judge's model name from {endpoint} ({exc}); give --judge MODEL") from None


# --- reading the run --------------------------------------------------------------------------------------

_REQUIRED = {
    "precisewikiqa": ("answer", "the gold answer of every question"),
    "mixedentities": ("name", "the made-up name of every entity"),
    "longwiki": ("reference", "the reference section of every question (or give --passages)"),
}


def load_run(run_dir: Path, evaluator: str | None = None, *, passages: bool = False) -> RunInput:
    """Check that `run_dir` is a finished run whose answers this evaluator can score, and read them."""
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    try:
        saved = manifest.read(run_dir)
        summary = status.summarize(run_dir)
    except manifest.ManifestError as exc:
        raise EvalError(str(exc)) from None
    cfg = saved.get("config", {})
    task, own = cfg.get("task", "?"), cfg.get("evaluator")
    if evaluator and own and evaluator != own:
        raise EvalError(f"{run_dir} is a run of task {task!r}, which is scored as {own}; "
                        f"--evaluator {evaluator} does not apply to it")
    chosen = evaluator or own
    if chosen is None:
        raise EvalError(f"{run_dir} is a run of {task!r}, which names no evaluator; pass --evaluator "
                        f"{'|'.join(EVALUATORS)} to score its answers as that task")
    if chosen not in EVALUATORS:
        raise EvalError(f"{run_dir}: unknown evaluator {chosen!r}; hallurun scores {', '.join(EVALUATORS)}")
    if passages and chosen != "longwiki":
        raise EvalError(f"--passages applies to longwiki runs; {run_dir} is scored as {chosen}")
    if summary["running_pid"]:
        raise EvalError(f"{run_dir} is still running (pid {summary['running_pid']}); evaluate it once it finishes")
    if not summary["finished"] or summary["pending"]:
        raise EvalError(f"{run_dir} is not finished ({summary['done']}/{summary['total']} done, "
                        f"{summary['pending']} pending); finish it with `hallurun resume {run_dir}`")
    source = run_dir / runner.GENERATION
    if not source.is_file():
        raise EvalError(f"{source}: not found; finish the run with `hallurun resume {run_dir}`")
    records = _read_answers(run_dir, source, chosen, passages)
    if not records:
        raise EvalError(f"{source}: no answers to evaluate")
    return RunInput(run_dir=run_dir, task=task, evaluator=chosen, model=str(cfg.get("model", "?")), source=source,
                    records=records, inference_failed=int(summary["failed"]))


def _read_answers(run_dir: Path, source: Path, evaluator: str, passages: bool) -> list[dict[str, Any]]:
    """The run's answers in generation.jsonl's (dataset) order, each keyed by the run's own id for that item.

    generation.jsonl is HalluLens' format: dataset records plus `generation`, with failed items missing, so a
    record without an `id` cannot be told apart by its position there (the run gave it its dataset position).
    results.jsonl holds every answer beside its item's id and input fields, written as one line, so it is the
    authority: a generation.jsonl line with an `id` is that item; the lines without one are, in order, the run's
    remaining ids, which are dataset positions, in numeric order. Each pairing is checked (same prompt, same
    answer), and the item's fields are taken from results.jsonl, so an answer only ever sits with its question.
    """
    wanted, why = _REQUIRED[evaluator]
    if evaluator == "longwiki" and passages:
        wanted, why = "title", "the page title of every question, to find its passages"
    answers = {str(r["id"]): r for r in read_records(run_dir / RESULTS) if "id" in r}
    try:
        lines = list(read_objects(source))
    except JsonlError as exc:
        raise EvalError(str(exc)) from None
    named = {str(record["id"]) for _, record in lines if "id" in record}
    positional = [i for i in answers if i not in named]
    unnamed = sum(1 for _, record in lines if "id" not in record)
    rebuild = f"rebuild it with `hallurun resume {run_dir}`"
    if unnamed != len(positional) or not all(i.isdecimal() for i in positional):
        raise EvalError(f"{source}: its {len(lines)} answer(s) do not match the {len(answers)} in "
                        f"{run_dir / RESULTS}; {rebuild}")
    by_position = iter(sorted(positional, key=int))
    records = []
    for line_no, line in lines:
        where = f"{source}:{line_no}"
        item_id = str(line["id"]) if "id" in line else next(by_position)
        result = answers.get(item_id)
        if result is None or any(line.get(name) != result.get(name) for name in ("prompt", "generation")):
            raise EvalError(f"{where}: this question and answer are not item {item_id!r} of "
                            f"{run_dir / RESULTS}; {rebuild}")
        record = dict(result)  # also the run's bookkeeping (finish_reason, ...), which the judges do not read
        for name in ("prompt", "generation"):
            if not isinstance(record.get(name), str):
                raise EvalError(f"{where}: field {name!r}: missing or not a string")
        value = record.get(wanted)
        if isinstance(value, int | float) and not isinstance(value, bool):
            record[wanted] = value = str(value)  # a numeric gold answer such as 1889
        if not isinstance(value, str) or not value.strip():
            raise EvalError(f"{where}: field {wanted!r}: missing; a {evaluator} evaluation needs {why}")
        record["id"] = item_id
        records.append(record)
    return records


def load_passages(path: Path) -> dict[str, list[str]]:
    """A `--passages` file: JSONL records `{"title", "text"}`, grouped by title (and by its lower case)."""
    found: dict[str, list[str]] = {}
    try:
        for line_no, record in read_objects(path):
            for name in ("title", "text"):
                if not isinstance(record.get(name), str):
                    raise EvalError(f"{path}:{line_no}: field {name!r}: must be a string")
            found.setdefault(record["title"].strip().lower(), []).append(record["text"])
    except JsonlError as exc:
        raise EvalError(f"passages: {exc}") from None
    return found


def evidence_for(record: dict[str, Any], claim: str, passages: dict[str, list[str]] | None) -> str:
    """What a claim is checked against: the item's reference section, then the passages of its page that share
    the most words with the claim (a stand-in for HalluLens' retrieval over a Wikipedia database)."""
    parts = []
    if str(record.get("reference", "")).strip():
        parts.append(f"Title: {record.get('title', '')}\nText: {record['reference'].strip()}")
    if passages:
        words = set(heuristic.content_tokens(claim))
        candidates = passages.get(str(record.get("title", "")).strip().lower(), [])
        ranked = sorted(candidates, key=lambda text: -len(words & set(heuristic.content_tokens(text))))
        parts += [f"Title: {record.get('title', '')}\nText: {text.strip()}" for text in ranked[:EVIDENCE_PASSAGES]]
    return "\n\n".join(parts) or "(no evidence)"


# --- judge stages -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """A parsed verdict (`value`), or why there is none (`problem`), with the judge's raw replies by stage."""

    value: Any
    problem: str | None = None
    replies: dict[str, str] = field(default_factory=dict)


class Stages:
    """Runs a judge's stages as hallurun runs under RUN_DIR/eval/<judge>/."""

    def __init__(self, judge_dir: Path, judge: Judge, evaluator: str, console: Console) -> None:
        self.judge_dir, self.judge, self.evaluator, self.console = judge_dir, judge, evaluator, console

    def ask(self, stage: str, prompts: dict[str, str], parse: Callable[[str], Any], fmt: str) -> dict[str, Verdict]:
        """Ask every prompt, parse the replies, re-ask the unreadable ones once in `<stage>-retry`."""
        replies, failures = self._run(stage, prompts, MAX_TOKENS[fmt])
        verdicts: dict[str, Verdict] = {}
        retry: dict[str, str] = {}
        for item_id, prompt in prompts.items():
            reply = replies.get(item_id)
            if reply is None:
                verdicts[item_id] = Verdict(None, JUDGE_FAILED, {stage: failures.get(item_id, "no reply recorded")})
                continue
            value = parse(reply)
            if value is None:
                retry[item_id] = judges.retry_prompt(prompt, reply, fmt)
            verdicts[item_id] = Verdict(value, None, {stage: reply})
        if retry:
            again, failed_again = self._run(f"{stage}-retry", retry, MAX_TOKENS[fmt])
            for item_id in retry:
                replies_so_far = verdicts[item_id].replies
                reply = again.get(item_id)
                if reply is None:
                    verdicts[item_id] = Verdict(None, JUDGE_FAILED, {
                        **replies_so_far, f"{stage}-retry": failed_again.get(item_id, "no reply recorded")})
                    continue
                value = parse(reply)
                verdicts[item_id] = Verdict(value, UNPARSEABLE if value is None else None,
                                            {**replies_so_far, f"{stage}-retry": reply})
        return verdicts

    def _run(self, stage: str, prompts: dict[str, str], max_tokens: int) -> tuple[dict[str, str], dict[str, str]]:
        """One stage as a hallurun run in RUN_DIR/eval/<judge>/<stage>/: (replies by id, failure reasons by id)."""
        stage_dir = self.judge_dir / stage
        settings = run_stage.Settings(model=str(self.judge.model), server=self.judge.server,
                                      operational=self.judge.operational)
        sampling = {"api": "chat", "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0}
        records = [{"id": item_id, "prompt": prompt} for item_id, prompt in prompts.items()]
        if records:
            self.console.print(f"[bold]judge stage {stage}[/]: {len(prompts)} prompt(s) to {self.judge.model}")
        try:
            outcome = run_stage.run(f"{self.evaluator}-judge-{stage}", stage_dir, records, sampling, settings,
                                    self.console, run_dir=stage_dir)
        except run_stage.StageError as exc:
            raise EvalError(f"{exc} (the run's answers or an earlier stage changed since)") from None
        if outcome.code == runner.EXIT_INTERRUPTED:
            raise EvalStopped(outcome.code, f"interrupted in judge stage {stage}; run the same `hallurun eval` "
                                            "command again to continue where it stopped")
        if outcome.code not in (runner.EXIT_OK, runner.EXIT_FAILED_ITEMS):
            raise EvalStopped(outcome.code, f"judge stage {stage} stopped (exit {outcome.code}, see "
                                            f"{stage_dir}/server.log); run the same `hallurun eval` command again")
        return outcome.generations, outcome.failures



# --- the three evaluations --------------------------------------------------------------------------------

def _problem_of(*verdicts: Verdict | None) -> tuple[str | None, dict[str, str]]:
    """The first problem among an item's verdicts, and all of its raw replies."""
    replies: dict[str, str] = {}
    problem = None
    for verdict in verdicts:
        if verdict is None:
            continue
        replies.update(verdict.replies)
        problem = problem or verdict.problem
    return problem, replies


def judge_precisewikiqa(records: list[dict[str, Any]], stages: Stages | None) -> list[dict[str, Any]]:
    """Abstention for every non-empty answer, then correctness for the answers that did not abstain."""
    spoken = [r for r in records if not judges.is_empty(r["generation"])]
    if stages is None:
        abstain = {r["id"]: Verdict(heuristic.is_abstaining(r["generation"])) for r in spoken}
    else:
        abstain = stages.ask("abstain", {r["id"]: judges.abstain_prompt(r["prompt"], r["generation"])
                                         for r in spoken}, judges.parse_abstention, "abstain")
    answered = [r for r in spoken if abstain[r["id"]].value is False]
    if stages is None:
        correct = {r["id"]: Verdict(heuristic.correctness(r["generation"], r["answer"])) for r in answered}
    else:
        correct = stages.ask("correct", {r["id"]: judges.correctness_prompt(r["prompt"], r["answer"], r["generation"])
                                         for r in answered}, judges.parse_correctness, "correct")
    out = []
    for r in records:
        empty = judges.is_empty(r["generation"])
        a, c = abstain.get(r["id"]), correct.get(r["id"])
        problem, replies = _problem_of(a, c)
        abstained = True if empty else (a.value if a else None)
        verdict = c.value if c else None
        out.append({"id": r["id"], "h_score_cat": r.get("h_score_cat"), "prompt": r["prompt"], "answer": r["answer"],
                    "generation": r["generation"], "empty": empty, "abstained": abstained, "verdict": verdict,
                    "hallucinated": None if abstained is not False or verdict is None else verdict != "CORRECT",
                    "problem": problem, "judge_replies": replies})
    return out


def judge_mixedentities(records: list[dict[str, Any]], stages: Stages | None) -> list[dict[str, Any]]:
    """Whether each non-empty answer treats the made-up entity as real."""
    spoken = [r for r in records if not judges.is_empty(r["generation"])]
    if stages is None:
        exists = {r["id"]: Verdict(heuristic.believes_exists(r["generation"])) for r in spoken}
    else:
        exists = stages.ask("exists", {
            r["id"]: judges.exists_prompt(r["prompt"], r["name"], str(r.get("type") or "entity"), r["generation"])
            for r in spoken}, judges.parse_exists, "exists")
    out = []
    for r in records:
        v = exists.get(r["id"])
        problem, replies = _problem_of(v)
        believes = False if judges.is_empty(r["generation"]) else (v.value if v else None)
        out.append({"id": r["id"], "name": r["name"], "type": r.get("type"), "prompt": r["prompt"],
                    "generation": r["generation"], "empty": judges.is_empty(r["generation"]),
                    "believes_exists": believes, "refused": None if believes is None else not believes,
                    "problem": problem, "judge_replies": replies})
    return out


def judge_longwiki(records: list[dict[str, Any]], stages: Stages | None,
                   passages: dict[str, list[str]] | None) -> list[dict[str, Any]]:
    """Claims from every non-empty answer, then a support verdict for every claim against its evidence."""
    spoken = [r for r in records if not judges.is_empty(r["generation"])]
    if stages is None:
        extracted = {r["id"]: Verdict(heuristic.extract_claims(r["generation"])) for r in spoken}
    else:
        extracted = stages.ask("claims", {r["id"]: judges.claims_prompt(r["prompt"], r["generation"]) for r in spoken},
                               judges.parse_claims, "claims")
    by_id = {r["id"]: r for r in records}
    claim_ids = {f"{item_id}#{k}": (item_id, claim) for item_id, v in extracted.items() if v.value
                 for k, claim in enumerate(v.value)}
    if stages is None:
        checks = {cid: Verdict(heuristic.supported(claim, evidence_for(by_id[i], claim, passages)))
                  for cid, (i, claim) in claim_ids.items()}
    else:
        checks = stages.ask("verify", {cid: judges.verify_prompt(claim, evidence_for(by_id[i], claim, passages))
                                       for cid, (i, claim) in claim_ids.items()}, judges.parse_support, "verify")
    out = []
    for r in records:
        v = extracted.get(r["id"])
        problem, replies = _problem_of(v)
        claims = [] if judges.is_empty(r["generation"]) else (v.value if v else None)
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
                    "generation": r["generation"], "empty": judges.is_empty(r["generation"]),
                    "abstained": None if rows is None else not rows, "claims": rows, "precision": precision,
                    "recall@32": recall, "f1@32": f1, "problem": problem, "judge_replies": replies})
    return out


# --- metrics from judgments -------------------------------------------------------------------------------

def to_metrics(evaluator: str, judgments: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The task's metrics and its per-bin breakdown from judgments.jsonl records."""
    if evaluator == "precisewikiqa":
        qa = [QAJudgment(j["id"], j["abstained"], j["verdict"], j["problem"], _bin(j.get("h_score_cat")))
              for j in judgments]
        return precisewikiqa(qa), by_bin(qa, precisewikiqa)
    if evaluator == "mixedentities":
        me = [EntityJudgment(j["id"], j["believes_exists"], j["problem"], _bin(j.get("type"))) for j in judgments]
        return mixedentities(me), by_bin(me, mixedentities)
    lw = [LongJudgment(j["id"], None if j["claims"] is None else tuple(c["supported"] for c in j["claims"]),
                       j["problem"], _bin(j.get("h_score_cat"))) for j in judgments]
    return longwiki(lw), by_bin(lw, longwiki)


def bin_results(bins: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-bin part of eval_results.json: each bin's rates (null where undefined, never 0.0) and counts."""
    return {b: {k: v for k, v in m.items() if k != "counts"}
            | {k: m["counts"][k] for k in BIN_COUNTS if k in m["counts"]} for b, m in bins.items()}


def _bin(value: Any) -> str | None:
    return None if value is None else str(value)


def decisions(evaluator: str, judgments: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each judge decision by item (None: not decided), for measuring agreement between two judges."""
    if evaluator == "precisewikiqa":
        return {"abstained": {j["id"]: j["abstained"] for j in judgments},
                "hallucinated": {j["id"]: j["hallucinated"] for j in judgments}}
    if evaluator == "mixedentities":
        return {"believes_exists": {j["id"]: j["believes_exists"] for j in judgments}}
    # Two judges split answers into different claims, so only whole-answer decisions line up.
    return {"abstained": {j["id"]: j["abstained"] for j in judgments}}


# --- one evaluation, end to end ---------------------------------------------------------------------------

@dataclass
class Evaluation:
    """A finished evaluation: what was written and where."""

    results: dict[str, Any]
    judgments: list[dict[str, Any]]
    judge_dir: Path


def evaluate(run: RunInput, judge: Judge, console: Console, *, passages_path: Path | None = None,
             passages: dict[str, list[str]] | None = None, primary: bool = True) -> Evaluation:
    """Judge the run, write RUN_DIR/eval/<judge>/{judgments.jsonl, eval_results.json, chart} and, for the primary
    judge, RUN_DIR/eval_results.json."""
    judge_dir = run.run_dir / EVAL_DIR / judge.name
    judge_dir.mkdir(parents=True, exist_ok=True)
    stages = None if judge.model is None else Stages(judge_dir, judge, run.evaluator, console)
    if run.evaluator == "precisewikiqa":
        judgments = judge_precisewikiqa(run.records, stages)
    elif run.evaluator == "mixedentities":
        judgments = judge_mixedentities(run.records, stages)
    else:
        judgments = judge_longwiki(run.records, stages, passages)
    metrics, bins = to_metrics(run.evaluator, judgments)
    counts = {**metrics.pop("counts"), "inference_failed": run.inference_failed}
    results: dict[str, Any] = {
        "task": run.task, "evaluator": run.evaluator, "model": run.model, "run_dir": str(run.run_dir),
        "judge": judge.name, "judge_model": judge.model, "approximate": judge.approximate,
        **({"note": heuristic.NOTE} if judge.approximate else {}),
        **metrics, "counts": counts,
    }
    if bins:
        results["by_type" if run.evaluator == "mixedentities" else "by_h_score_cat"] = bin_results(bins)
    if run.evaluator == "longwiki":
        results["evidence"] = NO_WIKIPEDIA.format(passages=f" and the passages in {passages_path}"
                                                  if passages_path else "")
    write_atomic(judge_dir / JUDGMENTS, b"".join(orjson.dumps(j) + b"\n" for j in judgments))
    results["files"] = {"judgments": str(judge_dir / JUDGMENTS)}
    if run.evaluator == "precisewikiqa" and results.get("by_h_score_cat"):
        from hallurun.tasks.precisewikiqa import chart

        made = chart.write(results, judge_dir / CHART)
        results["files"]["chart"] = str(made) if made else None
    results["hallurun_version"] = __version__
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    blob = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    write_atomic(judge_dir / EVAL_RESULTS, blob)
    if primary:
        write_atomic(run.run_dir / EVAL_RESULTS, blob)
    return Evaluation(results, judgments, judge_dir)


def compare_judges(run: RunInput, a: Evaluation, b: Evaluation) -> dict[str, Any]:
    """Per decision, how often judges A and B agree on this run, and Cohen's kappa; written beside their folders."""
    ours, theirs = decisions(run.evaluator, a.judgments), decisions(run.evaluator, b.judgments)
    report = {"run_dir": str(run.run_dir), "evaluator": run.evaluator, "judge_a": a.results["judge"],
              "judge_b": b.results["judge"], "decisions": [agreement(name, ours[name], theirs[name])
                                                           for name in ours]}
    path = run.run_dir / EVAL_DIR / f"agreement_{a.results['judge']}_vs_{b.results['judge']}.json"
    write_atomic(path, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    report["file"] = str(path)
    return report
