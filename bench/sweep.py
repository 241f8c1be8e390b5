"""Section 8: sweep. k models over two tasks, judged by a model judge, two ways in one bench run:

- one `hallurun sweep SPEC.toml`: each model's server launched once for both its tasks, then the judge launched
  once for every run's judge stages, then SWEEP/report.md;
- the separate commands a shell loop runs: for each model, `hallurun inference` per task, then `hallurun eval RUN
  --judge judge-model --judge-server mock -- ...` per run, each process launching its own server.

Every server is the mock, with `--fault startup-delay:S` standing for a model's load time (`model_start_s` for
each model, `judge_start_s` for the judge), so the wall times show what the loading costs. Each model answers
from a `--script` of its own (right, "I do not know" or wrong answers; existing or not, for MixedEntities, drawn
per item with a seed) and the judge's script holds the verdict for every answer, with a generic verdict last for
anything else: no verdict is unreadable, no stage is retried, and the metrics are known before the run.

Launches are counted from the `server_started` events in every events.jsonl of the runs' folders (a server's
events go to the run or judge stage that borrowed it, and between runs to its pool's own log: SWEEP/<label>/ for
a sweep's model, the first judged run's eval/<judge>/ for the judge); those under an eval/ folder are the
judge's. The two ways' metrics are compared run by run (each run's eval_results.json: its task's headline
metrics and counts), and each against what the scripts make them.

Each hallurun process writes to a log file (as in a batch job), not a terminal.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import scripted_judge as judge
from bench.common import REPO, HallurunRun, read_jsonl, run_hallurun, shown
from bench.scripted_judge import write_script

TASKS = ("precisewikiqa", "mixedentities")
DATA = {"precisewikiqa": REPO / "hallurun/tasks/precisewikiqa/questions.jsonl",
        "mixedentities": REPO / "hallurun/tasks/mixedentities/entities.jsonl"}
JUDGE = "judge-model"
RIGHT, IDK, WRONG = "right", "idk", "wrong"


@dataclass(frozen=True)
class SweepPlan:
    models: int = 3  # k
    limit: int = 20  # items of each task
    model_start_s: float = 4.0  # each model server's load time (the mock's startup-delay)
    judge_start_s: float = 8.0
    latency_s: float = 0.2  # before each answer starts, models and judge alike
    timeout_s: float = 600.0  # each hallurun process


def labels(plan: SweepPlan) -> list[str]:
    return [chr(ord("a") + i) for i in range(plan.models)]


def records(task: str, limit: int) -> list[dict[str, Any]]:
    """The first `limit` items of a built-in task: what `limit` runs."""
    return [orjson.loads(line) for line in DATA[task].read_bytes().splitlines()[:limit]]


def answers_of(index: int, label: str, limit: int) -> dict[str, list[tuple[dict[str, Any], Any, str]]]:
    """Model `index`'s answers: per task, (item, what the judge will make of it, the answer's text). A later model
    answers wrong, abstains and believes in made-up entities more often; every model answers its first
    PreciseWikiQA item right, so that none has no answered item (halu_Rate of none)."""
    out: dict[str, list[tuple[dict[str, Any], Any, str]]] = {"precisewikiqa": [], "mixedentities": []}
    for j, item in enumerate(records("precisewikiqa", limit)):
        rng = random.Random(f"pwqa-{index}-{j}")
        kind = RIGHT if j == 0 else rng.choices((RIGHT, IDK, WRONG), weights=(6 - index, 1 + index, 1 + index))[0]
        text = {RIGHT: f"({label}) It is {item['answer']}.", IDK: f"({label}) I do not know.",
                WRONG: f"({label}) It is Atlantis."}[kind]
        out["precisewikiqa"].append((item, kind, text))
    for j, item in enumerate(records("mixedentities", limit)):
        believes = random.Random(f"me-{index}-{j}").random() < 0.2 + 0.2 * index
        text = (f"({label}) {item['name']} is a well-known {item['type']}." if believes else
                f"({label}) I could not find anything about {item['name']}.")
        out["mixedentities"].append((item, believes, text))
    return out


def expected(answers: dict[str, list[tuple[dict[str, Any], Any, str]]]) -> dict[str, dict[str, float]]:
    """The headline metrics the scripts make: PreciseWikiQA halu_Rate = wrong / answered, refusal_rate = idk / all,
    correct_rate = right / all; MixedEntities false_acceptance_rate = believed / all, refusal_rate the rest."""
    kinds = [kind for _, kind, _ in answers["precisewikiqa"]]
    n = len(kinds)
    believed = sum(1 for _, believes, _ in answers["mixedentities"] if believes)
    m = len(answers["mixedentities"])
    return {"precisewikiqa": {"halu_Rate": kinds.count(WRONG) / (n - kinds.count(IDK)),
                              "refusal_rate": kinds.count(IDK) / n, "correct_rate": kinds.count(RIGHT) / n},
            "mixedentities": {"refusal_rate": (m - believed) / m, "false_acceptance_rate": believed / m}}


def scripts(plan: SweepPlan, folder: Path) -> tuple[dict[str, Path], Path, dict[str, dict[str, dict[str, float]]]]:
    """Each model's answer script, the judge's verdict script (matched on the answer it is shown, as
    tests/test_sweep.py does) and the metrics they make, by label and task."""
    folder.mkdir(parents=True, exist_ok=True)
    models, verdicts, metrics = {}, [], {}
    for index, label in enumerate(labels(plan)):
        answers = answers_of(index, label, plan.limit)
        pairs = []
        for item, kind, text in answers["precisewikiqa"]:
            pairs.append((item["prompt"], text))
            verdicts.append(judge.abstains(text, kind == IDK))
            if kind != IDK:
                verdicts.append(judge.correct(item["answer"], text, kind == RIGHT))
        for item, believes, text in answers["mixedentities"]:
            pairs.append((item["prompt"], text))
            verdicts.append(judge.believes(text, believes))
        models[label] = write_script(folder / f"answers-{label}.jsonl", pairs)
        metrics[label] = expected(answers)
    # Last, for a prompt none of the above matched (the first match wins): a readable verdict all the same.
    verdicts += [("Reply with JSON only, either {\"is_abstaining\"", '{"is_abstaining": false}'),
                 ("Reply with one line and nothing else: \"Verdict: CORRECT\"", "Verdict: INCORRECT"),
                 ("Reply with JSON only, either {\"believes_exists\"", '{"believes_exists": false}')]
    return models, write_script(folder / "judge.jsonl", verdicts), metrics


def server_args(script: Path, latency_s: float, start_s: float) -> list[str]:
    """`hallurun mock-server` arguments: scripted answers, and a load time."""
    return ["--script", str(script), "--latency", f"{latency_s:g}", "--fault", f"startup-delay:{start_s:g}"]


def write_spec(path: Path, folder: Path, plan: SweepPlan, models: dict[str, Path], judge: Path) -> Path:
    """The sweep's SPEC.toml (JSON strings and lists of strings are TOML ones too)."""
    def q(value: Any) -> str:
        return orjson.dumps(value).decode()

    lines = [f"folder = {q(str(folder))}", f"tasks = {q(list(TASKS))}", f"limit = {plan.limit}", ""]
    for label, script in models.items():
        lines += ["[[models]]", f"name = {q('model-' + label)}", f"label = {q(label)}", 'server = "mock"',
                  f"args = {q(server_args(script, plan.latency_s, plan.model_start_s))}", ""]
    lines += ["[judge]", f"model = {q(JUDGE)}", 'server = "mock"',
              f"args = {q(server_args(judge, plan.latency_s, plan.judge_start_s))}", ""]
    path.write_text("\n".join(lines))
    return path


def _finish(run: HallurunRun, log: Path, what: str) -> None:
    if run.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
        raise RuntimeError(f"sweep: {what}: {shown(run.cmd)} exited {run.returncode}: " + " | ".join(tail))


def _run(args: list[str], logs: Path, name: str, plan: SweepPlan, what: str) -> HallurunRun:
    """`hallurun ARGS` to its end, its output in logs/NAME.output.log."""
    run = run_hallurun(args, logs / name, timeout=plan.timeout_s, terminal=False)
    _finish(run, logs / f"{name}.output.log", what)
    return run


# -- what the folders say ---------------------------------------------------------------------------------------


def launches(folder: Path) -> dict[str, Any]:
    """The servers started in `folder`'s tree, the models' and the judge's (under an eval/ folder), the seconds
    they took to start (their `startup_s`), and the judge stages run."""
    found = {"model_launches": 0, "judge_launches": 0, "model_start_total_s": 0.0, "judge_start_total_s": 0.0}
    for log in folder.rglob("events.jsonl"):
        who = "judge" if "eval" in log.relative_to(folder).parts else "model"
        for event in read_jsonl(log):
            if event.get("event") == "server_started":
                found[f"{who}_launches"] += 1
                found[f"{who}_start_total_s"] += event.get("startup_s") or 0.0
    found["judge_stages"] = sum(1 for m in folder.rglob("manifest.json") if "eval" in m.relative_to(folder).parts)
    return found


def last_event_t(folder: Path, *, judge: bool) -> float | None:
    """When the last run (judge: judge stage) in `folder`'s tree wrote its last event: run folders only (a
    manifest.json beside the events), not the pools' own logs, which go on until their servers are stopped."""
    times = [e["t"] for log in folder.rglob("events.jsonl") if (log.parent / "manifest.json").is_file()
             and ("eval" in log.relative_to(folder).parts) == judge for e in read_jsonl(log) if "t" in e]
    return max(times, default=None)


def report_written_t(folder: Path) -> float | None:
    """When the sweep's last report file (report.md, .csv, .json, the figures) was written."""
    times = [p.stat().st_mtime for p in folder.iterdir() if p.name.startswith("report.") or p.suffix == ".png"]
    return max(times, default=None)


def headlines(run_dir: Path) -> dict[str, Any]:
    """A run's eval_results.json: its task's headline metrics and its counts."""
    from hallurun.eval.compare import COUNTS
    from hallurun.tasks import registry

    results = orjson.loads((run_dir / "eval_results.json").read_bytes())
    counts = results.get("counts", {})
    return {**{c.key: results.get(c.key) for c in registry.headline_of_run(run_dir, results)},
            **{k: counts.get(k) for k in COUNTS}}


def metrics_of(folder: Path, plan: SweepPlan) -> dict[str, dict[str, Any]]:
    """Every run's headlines, by `<label>/<task>` (both ways lay their runs out as a sweep does)."""
    return {f"{label}/{task}": headlines(folder / label / task) for label in labels(plan) for task in TASKS}


def as_scripted(metrics: dict[str, dict[str, Any]], want: dict[str, dict[str, dict[str, float]]],
                limit: int) -> bool:
    """Whether every run scored every item, none unreadable or failed, to the metrics the scripts make."""
    for key, got in metrics.items():
        label, task = key.split("/")
        if (got["items"] != limit or got["scored"] != limit or got["unparseable"] or got["judge_failed"]
                or got["inference_failed"]):
            return False
        if any(got[name] is None or abs(got[name] - value) > 1e-9 for name, value in want[label][task].items()):
            return False
    return True


# -- the two ways -----------------------------------------------------------------------------------------------


def swept(plan: SweepPlan, spec: Path, folder: Path, logs: Path) -> dict[str, Any]:
    """One `hallurun sweep SPEC.toml`."""
    print(f"sweep: one `hallurun sweep` of {plan.models} models x {len(TASKS)} tasks ...", flush=True)
    run = _run(["sweep", str(spec)], logs, "sweep", plan, "the sweep")
    end = run.launched_at + run.wall_s
    answered, judged = last_event_t(folder, judge=False), last_event_t(folder, judge=True)
    reported = report_written_t(folder)
    if answered is None or judged is None or reported is None or not (folder / "report.md").is_file():
        raise RuntimeError(f"sweep: {shown(run.cmd)} exited 0 but left no runs, judge stages or report.md in "
                           f"{folder}; see {logs}/sweep.output.log")
    return {"way": "sweep", "processes": 1, "wall_s": run.wall_s,
            "answering_s": answered - run.launched_at, "judging_s": judged - answered,
            "report_s": reported - judged, "after_s": end - reported, "reproduce": [shown(run.cmd, folder.parent)]}


def separate(plan: SweepPlan, scripts_: dict[str, Path], judge: Path, folder: Path, logs: Path) -> dict[str, Any]:
    """For each model: `hallurun inference` per task, then `hallurun eval` per run, one process after another."""
    print(f"sweep: the separate commands, {plan.models} models x {len(TASKS)} tasks ...", flush=True)
    answering = judging = 0.0
    processes = 0
    reproduce: list[str] = []
    began = time.monotonic()
    for label in labels(plan):
        runs = []
        for task in TASKS:
            run_dir = folder / label / task
            args = ["inference", "--task", task, "--model", f"model-{label}", "--limit", str(plan.limit),
                    "--server", "mock", "--run-dir", str(run_dir), "--",
                    *server_args(scripts_[label], plan.latency_s, plan.model_start_s)]
            answering += _run(args, logs, f"inference-{label}-{task}", plan, f"{label} · {task}").wall_s
            processes += 1
            runs.append(run_dir)
            reproduce.append(shown(["hallurun", *args], folder.parent))
        for run_dir in runs:
            args = ["eval", str(run_dir), "--judge", JUDGE, "--judge-server", "mock", "--",
                    *server_args(judge, plan.latency_s, plan.judge_start_s)]
            name = f"{label}-{run_dir.name}"
            judging += _run(args, logs, f"eval-{name}", plan, f"eval of {name}").wall_s
            processes += 1
            reproduce.append(shown(["hallurun", *args], folder.parent))
    return {"way": "separate", "processes": processes, "wall_s": time.monotonic() - began,
            "answering_s": answering, "judging_s": judging, "report_s": None, "after_s": None,
            "reproduce": reproduce}


def sweep(plan: SweepPlan, work: Path) -> list[dict[str, Any]]:
    base = work / "sweep"  # left for `--keep`, as the rest of the work folder
    base.mkdir()
    models, judge, want = scripts(plan, base / "scripts")
    spec = write_spec(base / "sweep.toml", base / "SWEEP", plan, models, judge)
    logs = base / "logs"
    rows = [swept(plan, spec, base / "SWEEP", logs), separate(plan, models, judge, base / "separate", logs)]
    folders = [base / "SWEEP", base / "separate"]
    metrics = [metrics_of(folder, plan) for folder in folders]
    same = metrics[0] == metrics[1]
    runs = plan.models * len(TASKS)
    # What each way should launch: the sweep a server per model and one judge; the commands one per process.
    want_launches = [(plan.models, 1), (runs, runs)]
    first = rows[0]["wall_s"]
    for row, folder, got, (model_want, judge_want) in zip(rows, folders, metrics, want_launches, strict=True):
        row.update(launches(folder))
        scripted = as_scripted(got, want, plan.limit)
        row.update({
            "models": plan.models, "tasks": len(TASKS), "runs": runs, "limit": plan.limit,
            "model_start_s": plan.model_start_s, "judge_start_s": plan.judge_start_s, "latency_s": plan.latency_s,
            "start_total_s": row["model_start_total_s"] + row["judge_start_total_s"],
            "x_sweep": row["wall_s"] / first, "over_sweep_s": row["wall_s"] - first,
            "launches_expected": [model_want, judge_want], "same_metrics": same, "as_scripted": scripted,
            "metrics": got,
            "met": same and scripted and row["model_launches"] == model_want and row["judge_launches"] == judge_want,
        })
    return rows
