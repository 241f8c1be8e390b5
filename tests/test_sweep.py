"""`hallurun sweep`: three models (mock servers, each scripted with its own answers) over two tasks, judged by a
scripted model judge served once; killed with SIGKILL during the second model and again during the judging,
then continued; and specs that cannot run. Real hallurun and mock-server processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, Hallurun, read_jsonl, server_processes, wait_until

from bench import scripted_judge as judge
from bench.scripted_judge import write_script

LIMIT = 4
PWQA = [orjson.loads(line) for line in (REPO / "hallurun/tasks/precisewikiqa/questions.jsonl").read_bytes()
        .splitlines()[:LIMIT]]
ME = [orjson.loads(line) for line in (REPO / "hallurun/tasks/mixedentities/entities.jsonl").read_bytes()
      .splitlines()[:LIMIT]]

# Each model's answers, and what the scripted judge makes of each: (answer, abstains, verdict) for PreciseWikiQA
# (the verdict is asked only of answers), (answer, believes it exists) for MixedEntities.
RIGHT, IDK, WRONG = "right", "idk", "wrong"
PLAN = {
    "a": ([RIGHT, RIGHT, RIGHT, RIGHT], [False, False, False, False]),
    "b": ([RIGHT, IDK, WRONG, WRONG], [False, True, False, True]),
    "c": ([IDK, RIGHT, RIGHT, WRONG], [True, True, True, True]),
}
# By hand, from PLAN. PreciseWikiQA: halu_Rate = wrong / answered, refusal_rate = idk / 4, correct_rate = right / 4.
# MixedEntities: false_acceptance_rate = believed / 4, refusal_rate = the rest / 4.
EXPECTED = {
    "a": {"halu_Rate": 0.0, "refusal_rate": 0.0, "correct_rate": 1.0, "me_refusal": 1.0, "me_fa": 0.0},
    "b": {"halu_Rate": 2 / 3, "refusal_rate": 0.25, "correct_rate": 0.25, "me_refusal": 0.5, "me_fa": 0.5},
    "c": {"halu_Rate": 1 / 3, "refusal_rate": 0.25, "correct_rate": 0.5, "me_refusal": 0.0, "me_fa": 1.0},
}


def pwqa_answer(label: str, kind: str, record: dict[str, Any]) -> str:
    return {RIGHT: f"({label}) It is {record['answer']}.", IDK: f"({label}) I do not know.",
            WRONG: f"({label}) It is Atlantis."}[kind]


def me_answer(label: str, believes: bool, record: dict[str, Any]) -> str:
    return (f"({label}) {record['name']} is a well-known {record['type']}." if believes else
            f"({label}) I could not find anything about {record['name']}.")


def scripts(folder: Path) -> tuple[dict[str, str], str]:
    """Each model's answer script, and the judge's verdict script (matched on the answer it is shown)."""
    answers, verdicts = {}, []
    for label, (pwqa, me) in PLAN.items():
        pairs = []
        for kind, record in zip(pwqa, PWQA, strict=True):
            text = pwqa_answer(label, kind, record)
            pairs.append((record["prompt"], text))
            verdicts.append(judge.abstains(text, kind == IDK))
            if kind != IDK:
                verdicts.append(judge.correct(record["answer"], text, kind == RIGHT))
        for believes, record in zip(me, ME, strict=True):
            text = me_answer(label, believes, record)
            pairs.append((record["prompt"], text))
            verdicts.append(judge.believes(text, believes))
        answers[label] = str(write_script(folder / f"answers-{label}.jsonl", pairs))
    return answers, str(write_script(folder / "judge.jsonl", verdicts))


def write_spec(path: Path, folder: Path, latency: float) -> Path:
    answers, verdicts = scripts(path.parent)
    models = "".join(f'[[models]]\nname = "model-{label}"\nlabel = "{label}"\nserver = "mock"\n'
                     f'args = ["--script", "{script}", "--latency", "{latency}"]\n\n'
                     for label, script in answers.items())
    path.write_text(f'folder = "{folder}"\ntasks = ["precisewikiqa", "mixedentities"]\nlimit = {LIMIT}\n\n'
                    f'[options]\nconcurrency = 1\n\n{models}'
                    f'[judge]\nmodel = "judge-model"\nserver = "mock"\n'
                    f'args = ["--script", "{verdicts}", "--latency", "{latency}"]\n')
    return path


def starts(folder: Path, *, judge: bool) -> int:
    """How many times a server was started in `folder`'s tree: the judge's (under eval/), or the models'."""
    count = 0
    for events in folder.rglob("events.jsonl"):
        if ("eval" in events.relative_to(folder).parts) == judge:
            count += sum(1 for e in read_jsonl(events) if e["event"] == "server_started")
    return count


def kill_when(proc: subprocess.Popen[bytes], ready: Any, what: str, sweep: Path) -> None:
    wait_until(ready, 120, what)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    # The guardians reap the servers of a killed hallurun.
    deadline = time.monotonic() + 30
    while any(server_processes(m.parent) for m in sweep.rglob("manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.2)


def report_without_timing(sweep: Path) -> dict[str, Any]:
    report = orjson.loads((sweep / "report.json").read_bytes())
    report.pop("timing")
    return report


def test_a_sweep_killed_twice_and_continued_reports_what_an_uninterrupted_one_does(hallurun: Hallurun,
                                                                                    tmp_path: Path) -> None:
    sweep = tmp_path / "SWEEP"
    spec = write_spec(tmp_path / "sweep.toml", sweep, latency=0.15)

    # Killed during the second model.
    first = hallurun.start("sweep", str(spec), log=tmp_path / "first.log")
    kill_when(first, lambda: read_jsonl(sweep / "b" / "precisewikiqa" / "results.jsonl"), "model b's answers",
              sweep)
    # Continued, and killed again while the judge works.
    second = hallurun.start("sweep", str(spec), log=tmp_path / "second.log")
    kill_when(second, lambda: any(read_jsonl(p) for p in (sweep / "a").rglob("eval/*/*/results.jsonl")),
              "the judge's first answers", sweep)
    # Continued to the end, as `hallurun resume SWEEP`.
    last = hallurun.run("resume", str(sweep), timeout=300)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr
    assert "Traceback" not in last.stderr

    # Every run answered every item exactly once.
    for label in PLAN:
        for task, records in (("precisewikiqa", PWQA), ("mixedentities", ME)):
            ids = [r["id"] for r in read_jsonl(sweep / label / task / "results.jsonl")]
            assert sorted(ids) == sorted(r["id"] for r in records), (label, task)
            assert read_jsonl(sweep / label / task / "failures.jsonl") == []
    # Each model's server was launched once per sweep process that ran its items (b's twice: it was killed
    # during it); the judge's once per process that judged (the second and the last).
    assert [starts(sweep / label, judge=False) for label in PLAN] == [1, 2, 1]
    assert starts(sweep, judge=True) == 2

    # The report's numbers are the hand-computed ones.
    report = report_without_timing(sweep)
    rows = {row["label"]: row["runs"] for row in report["models"]}
    for label, want in EXPECTED.items():
        pwqa, me = rows[label]["precisewikiqa"], rows[label]["mixedentities"]
        assert (pwqa["halu_Rate"], pwqa["refusal_rate"], pwqa["correct_rate"]) == pytest.approx(
            (want["halu_Rate"], want["refusal_rate"], want["correct_rate"])), label
        assert (me["refusal_rate"], me["false_acceptance_rate"]) == pytest.approx((want["me_refusal"],
                                                                                   want["me_fa"])), label
        assert pwqa["items"] == me["items"] == LIMIT and pwqa["judge_failed"] == me["judge_failed"] == 0
    assert report["judge"] == "judge-model" and report["tasks"] == ["precisewikiqa", "mixedentities"]
    for name in ("report.md", "report.csv"):
        assert (sweep / name).stat().st_size > 0
    for name in ("metrics.png", "by_popularity.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # An uninterrupted sweep of the same spec (another folder) reports the same, line for line.
    again = tmp_path / "AGAIN"
    other = write_spec(tmp_path / "again.toml", again, latency=0.0)
    done = hallurun.run("sweep", str(other), timeout=300)
    assert done.returncode == 0, done.stderr
    assert report_without_timing(again) == report
    assert (again / "report.csv").read_bytes() == (sweep / "report.csv").read_bytes()

    # The grid, and compare reading the sweep.
    status = orjson.loads(hallurun.run("status", str(sweep), "--json").stdout)
    assert {row["label"]: {t: c["state"] for t, c in row["runs"].items()} for row in status["models"]} == {
        label: {"precisewikiqa": "judged", "mixedentities": "judged"} for label in PLAN}
    compared = orjson.loads(hallurun.run("compare", str(sweep), "--json").stdout)
    assert [(r["model"], r["task"]) for r in compared] == [(f"model-{label}", task) for label in PLAN
                                                            for task in ("precisewikiqa", "mixedentities")]


def test_a_spec_may_only_add_models_or_tasks_to_its_sweep(hallurun: Hallurun, tmp_path: Path) -> None:
    sweep = tmp_path / "SWEEP"
    spec = tmp_path / "s.toml"
    head = f'folder = "{sweep}"\nlimit = 2\n'
    model = '[[models]]\nname = "m1"\nserver = "mock"\n'
    spec.write_text(head + 'tasks = ["mixedentities"]\n' + model)
    assert hallurun.run("sweep", str(spec)).returncode == 0
    # Adding a task and a model continues the sweep; the first run is not asked again.
    spec.write_text(head + 'tasks = ["mixedentities", "precisewikiqa"]\n' + model +
                    '[[models]]\nname = "m2"\nserver = "mock"\n')
    grown = hallurun.run("sweep", str(spec))
    assert grown.returncode == 0, grown.stderr
    assert len(read_jsonl(sweep / "m1" / "mixedentities" / "results.jsonl")) == 2
    assert (sweep / "m2" / "precisewikiqa" / "eval_results.json").is_file()
    # Changing what a model is, or the limit, is refused: the table would mix two sweeps.
    spec.write_text(head + 'tasks = ["mixedentities", "precisewikiqa"]\n' + model.replace('"mock"', '"mock"\n'
                    'args = ["--latency", "0.1"]') + '[[models]]\nname = "m2"\nserver = "mock"\n')
    changed = hallurun.run("sweep", str(spec))
    assert changed.returncode == 2 and changed.stderr.splitlines() == [
        f"error: {spec}: models[0] (m1): differs from the sweep in {sweep}; a spec may only add models or tasks "
        "to a sweep"]
    spec.write_text(head.replace("limit = 2", "limit = 3") + 'tasks = ["mixedentities"]\n' + model)
    assert "limit: differs from the sweep" in hallurun.run("sweep", str(spec)).stderr
    # A sweep continues with its spec's settings: options given to `resume` would be silently lost.
    ignored = hallurun.run("resume", str(sweep), "--concurrency", "3")
    assert ignored.returncode == 2 and "is a sweep: it continues with its spec's settings" in ignored.stderr


@pytest.mark.parametrize(("body", "says"), [
    ('tasks = ["nosuchtask"]\n[[models]]\nname = "m"\n', "tasks[0]: unknown task 'nosuchtask'"),
    ('tasks = ["mixedentities"]\n[[models]]\nlabel = "x"\n', "models[0].name: missing"),
    ('tasks = ["mixedentities"]\nlimit = "ten"\n[[models]]\nname = "m"\n', "limit: must be a whole number"),
    ('tasks = ["mixedentities"]\n', "models: give at least one [[models]] table"),
    ('tasks = ["mixedentities"]\n[[models]]\nname = "m"\nreplicas = 0\n', "models[0].replicas: must be"),
    ('tasks = ["mixedentities"]\n[[models]]\nname = "m"\nserver = "tpu"\n', "models[0].server: must be"),
    ('tasks = ["mixedentities"]\n[options]\nconcurency = 4\n[[models]]\nname = "m"\n', "options.concurency: unknown"),
    ('tasks = ["mixedentities"]\n[[models]]\nname = "m"\n[[models]]\nname = "m"\n', "two models have the label"),
    ('tasks = [\n', "not valid TOML"),
])
def test_a_bad_spec_is_one_line_naming_its_key(hallurun: Hallurun, tmp_path: Path, body: str, says: str) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(f'folder = "{tmp_path / "SWEEP"}"\n' + body)
    proc = hallurun.run("sweep", str(spec))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"error: {spec}: "), proc.stderr
    assert says in proc.stderr
    assert not (tmp_path / "SWEEP").exists() or not any((tmp_path / "SWEEP").iterdir())


def test_a_model_whose_server_fails_is_reported_and_the_others_still_run(hallurun: Hallurun, tmp_path: Path) -> None:
    sweep = tmp_path / "SWEEP"
    spec = tmp_path / "s.toml"
    spec.write_text(f'folder = "{sweep}"\ntasks = ["mixedentities", "precisewikiqa"]\nlimit = 2\n'
                    '[options]\nmax_restarts = 0\n'
                    '[[models]]\nname = "broken"\nserver = "mock"\nargs = ["--fault", "fail-start"]\n'
                    'startup_timeout = 20\n'
                    '[[models]]\nname = "fine"\nserver = "mock"\n')
    proc = hallurun.run("sweep", str(spec), timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr
    assert "broken: its server failed; its other tasks are left for the next try" in proc.stdout
    assert not (sweep / "broken" / "precisewikiqa").exists()  # not tried: the same server would fail again
    report = orjson.loads((sweep / "report.json").read_bytes())
    assert [row["label"] for row in report["models"]] == ["fine"]
    assert set(report["models"][0]["runs"]) == {"mixedentities", "precisewikiqa"}
    assert not [pid for m in sweep.rglob("manifest.json") for pid in server_processes(m.parent)]
