"""A sweep's report: one row per model, each task's headline metrics as HalluLens' table gives them (the task's
own scoring names them: PreciseWikiQA halu_Rate, refusal_rate, correct_rate; MixedEntities refusal_rate,
false_acceptance_rate; LongWiki precision, recall@32, F1@32), the item counts and failures, and the judge.

    SWEEP/report.md     the table, and a second one with each run's wall time and restarts
    SWEEP/report.csv    the table, one row per model
    SWEEP/report.json   the same, and the timings
    SWEEP/metrics.png   the models side by side, per metric
    SWEEP/by_popularity.png   halu_Rate and refusal_rate by popularity bin, a line per model (PreciseWikiQA)

The metrics come from each run's `eval/<judge>/eval_results.json`: the report only gathers them, so it is the
same whether the sweep ran in one go or was stopped and continued (the timings aside, which are kept apart).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from hallurun.core import timeline
from hallurun.eval import compare
from hallurun.eval.report import percent
from hallurun.store import summary as run_summary
from hallurun.store.checkpoint import read_records
from hallurun.store.durable import write_atomic
from hallurun.store.events import EVENTS
from hallurun.sweep.figures import BIN_METRICS, BINS_KEY, draw
from hallurun.sweep.spec import ModelSpec
from hallurun.tasks import registry

REPORT_MD, REPORT_CSV, REPORT_JSON = "report.md", "report.csv", "report.json"


def collect(runs: Sequence[tuple[ModelSpec, Path]], judge: str) -> dict[str, Any]:
    """Every run's headline metrics and counts under `judge`, by model and task, and the timings apart."""
    tasks: list[str] = []
    columns: dict[str, list[list[str]]] = {}
    models: dict[str, dict[str, Any]] = {}
    timing: dict[str, dict[str, Any]] = {}
    for model, run_dir in runs:
        results = compare.load(run_dir, judge)
        task = str(results["task"])
        if task not in columns:
            tasks.append(task)
            columns[task] = [[c.key, c.label] for c in registry.headline_of_run(run_dir, results)]
        counts = results["counts"]
        row = models.setdefault(model.label, {"label": model.label, "model": model.name, "runs": {}})
        row["runs"][task] = {
            **{key: results.get(key) for key, _ in columns[task]},
            "items": counts.get("items"), "scored": counts.get("scored"),
            "inference_failed": counts.get("inference_failed", 0), "judge_failed": counts.get("judge_failed", 0),
            **({BINS_KEY: {b: {k: v.get(k) for k in BIN_METRICS} for b, v in results[BINS_KEY].items()}}
               if isinstance(results.get(BINS_KEY), dict) else {}),
        }
        summary = run_summary.summarize(run_dir)
        timing.setdefault(model.label, {})[task] = {"wall_s": round(_wall_s(run_dir), 2),
                                                    "restarts": summary["restarts"]}
    return {"judge": judge, "tasks": tasks, "columns": columns, "models": list(models.values()), "timing": timing}


def _wall_s(run_dir: Path) -> float:
    """The run's time in sessions (`core.timeline.sessions`: each start or resume to its session's end), summed."""
    return sum(s.end - s.start for s in timeline.sessions(read_records(run_dir / EVENTS)))


def _value(value: Any) -> str:
    return percent(value) if isinstance(value, int | float) or value is None else str(value)


def _header(data: dict[str, Any], *, keys: bool = False) -> list[str]:
    """The table's columns: `task label` for people, `task.key` (HalluLens' metric names) for report.csv."""
    head = ["model"]
    for task in data["tasks"]:
        head += [f"{task}.{key}" if keys else f"{task} {label}" for key, label in data["columns"][task]]
        head += [f"{task}.items", f"{task}.failed"] if keys else [f"{task} items", f"{task} failed"]
    return head


def _cells(data: dict[str, Any], row: dict[str, Any], *, raw: bool) -> list[str]:
    out = [row["label"]]
    for task in data["tasks"]:
        run = row["runs"].get(task)
        keys = [key for key, _ in data["columns"][task]]
        if run is None:
            out += [""] * (len(keys) + 2)
            continue
        out += [("" if run[k] is None else f"{run[k]:.6g}") if raw else _value(run[k]) for k in keys]
        out += [str(run["items"]), str(run["inference_failed"] + run["judge_failed"])]
    return out


def markdown(data: dict[str, Any]) -> str:
    """report.md: the table, then the timings."""
    head = _header(data)
    lines = [f"# hallurun sweep: {len(data['models'])} model(s), judge {data['judge']}", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_cells(data, row, raw=False)) + " |" for row in data["models"]]
    lines += ["", "`failed`: items whose inference or judging failed (recorded with their reason in each run).", "",
              "| model | task | wall s | restarts |", "| --- | --- | --- | --- |"]
    for label, tasks in data["timing"].items():
        lines += [f"| {label} | {task} | {t['wall_s']} | {t['restarts']} |" for task, t in tasks.items()]
    return "\n".join(lines) + "\n"


def csv_text(data: dict[str, Any]) -> str:
    """report.csv: one row per model, metrics as fractions, columns named `task.metric`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_header(data, keys=True))
    for row in data["models"]:
        writer.writerow(_cells(data, row, raw=True))
    return out.getvalue()


def tables(data: dict[str, Any]) -> list[Table]:
    """The report on screen: a table per task, a row per model."""
    shown = []
    for task in data["tasks"]:
        out = Table(title=f"hallurun sweep · {task} · judge: {data['judge']}", title_justify="left")
        out.add_column("model")
        for _, label in data["columns"][task]:
            out.add_column(label, justify="right", overflow="fold")
        out.add_column("items", justify="right")
        out.add_column("failed", justify="right")
        for row in data["models"]:
            run = row["runs"].get(task)
            if run is not None:
                out.add_row(row["label"], *(_value(run[k]) for k, _ in data["columns"][task]), str(run["items"]),
                            str(run["inference_failed"] + run["judge_failed"]))
        shown.append(out)
    return shown


def write(folder: Path, runs: Sequence[tuple[ModelSpec, Path]], judge: str, console: Console) -> Path | None:
    """Write the report files and figures into `folder` and show the table; None when no run was judged."""
    if not runs:
        console.print("no run was answered; no report", highlight=False)
        return None
    data = collect(runs, judge)
    write_atomic(folder / REPORT_JSON, orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    write_atomic(folder / REPORT_CSV, csv_text(data).encode())
    write_atomic(folder / REPORT_MD, markdown(data).encode())
    figures = draw(folder, data)
    for shown in tables(data):
        console.print(shown)
    for path in (folder / REPORT_MD, *figures):
        console.print(f"report: {path}", highlight=False)
    return folder / REPORT_MD
