"""A user's task folder that carries its own scoring code (examples/custom_task/scoring.py), end to end with real
processes: inference against the mock server, then `hallurun eval` with the heuristic judge and with a scripted
mock LLM judge, against metrics computed by hand. Nothing outside the folder knows the task."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from hallurun.eval.question import RETRY_MARKER
from tests.conftest import REPO, Hallurun, read_jsonl

CUSTOM = REPO / "examples" / "custom_task"

# id: (the tested model's answer, what the heuristic judge says, the model judge's reply or replies)
CASES: dict[str, tuple[str, str, str | tuple[str, str] | None]] = {
    "cap-01": ("Canberra.", "CORRECT", "Verdict: CORRECT"),
    "cap-02": ("The capital of Canada is Ottawa.", "CORRECT", "CORRECT"),
    "cap-03": ("Brasilia", "CORRECT", "Verdict: correct"),  # no accent: still the expected capital
    "cap-04": ("Istanbul", "WRONG", "Verdict: WRONG"),
    "cap-05": ("Lagos", "WRONG", "Lagos is the largest city, not the capital. Verdict: WRONG"),
    "cap-06": ("I don't know.", "REFUSED", "Verdict: REFUSED"),
    "cap-07": ("Astana", "CORRECT", ("It is right, I think.", "Verdict: CORRECT")),  # readable on the retry
    "cap-08": ("", "REFUSED", None),  # empty: a refusal, never sent to the judge
    "cap-09": ("Rabat", "CORRECT", "Verdict: CORRECT"),
    "cap-10": ("Hanoi", "CORRECT", "Verdict: CORRECT"),
    # A hedged answer: the heuristic reads a refusal, the judge the right capital. They disagree here.
    "cap-11": ("I'm not sure, but I think it is Accra.", "REFUSED", "Verdict: CORRECT"),
    "cap-12": ("Yangon", "WRONG", ("maybe", "still thinking")),  # unreadable twice: unparseable
}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def ok(proc: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def results(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def judge_script(path: Path, items: dict[str, dict[str, Any]]) -> Path:
    """The judge's replies, matched on the line only this item's prompt has; retries first (a retry prompt also
    holds the first prompt's text, and the first match wins)."""
    retries, firsts = [], []
    for item_id, (_, _, reply) in CASES.items():
        if reply is None:
            continue
        first, second = reply if isinstance(reply, tuple) else (reply, None)
        firsts.append({"match": f"Expected capital: {items[item_id]['answer']}\n", "response": first})
        if second is not None:
            retries.append({"match": f"{RETRY_MARKER}\n<<<\n{first}\n>>>", "response": second})
    return write_jsonl(path, retries + firsts)


def test_a_task_folder_with_its_own_scoring_runs_and_evaluates_end_to_end(hallurun: Hallurun,
                                                                           tmp_path: Path) -> None:
    items = {r["id"]: r for r in read_jsonl(CUSTOM / "prompts.jsonl")}
    assert list(items) == list(CASES)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"match": items[i]["prompt"], "response": CASES[i][0]}
                                                       for i in CASES])
    run_dir = tmp_path / "run"
    ok(hallurun.run("inference", "--task", str(CUSTOM), "--server", "mock", "--model", "m", "--run-dir",
                    str(run_dir), "--", "--script", str(answers)))
    config = orjson.loads((run_dir / "manifest.json").read_bytes())["config"]
    assert config["task"] == "capitals" and config["evaluator"] == str((CUSTOM / "scoring.py").resolve())

    # The heuristic judge (the default). Correct: 01 02 03 07 09 10; wrong: 04 05 12; refused: 06 08 11.
    proc = ok(hallurun.run("eval", str(run_dir)))
    assert "accuracy (correct / scored)" in proc.stdout and "approximate" in proc.stdout
    heur = results(run_dir / "eval" / "heuristic" / "eval_results.json")
    assert heur == results(run_dir / "eval_results.json")
    assert (heur["task"], heur["evaluator"], heur["judge"], heur["approximate"]) == ("capitals", "capitals",
                                                                                     "heuristic", True)
    assert heur["accuracy"] == pytest.approx(6 / 12)
    assert heur["refusal_rate"] == pytest.approx(3 / 12)
    assert heur["error_rate"] == pytest.approx(3 / 9)
    assert heur["counts"] == {"items": 12, "scored": 12, "correct": 6, "wrong": 3, "refused": 3, "answered": 9,
                              "unparseable": 0, "judge_failed": 0, "inference_failed": 0}
    judged = {j["id"]: j for j in read_jsonl(run_dir / "eval" / "heuristic" / "judgments.jsonl")}
    assert {i: j["verdict"] for i, j in judged.items()} == {i: c[1] for i, c in CASES.items()}
    assert judged["cap-04"]["country"] == "Turkey" and judged["cap-08"]["empty"] is True

    # A scripted LLM judge, and its agreement with the heuristic. Scored: all but cap-12 (unparseable).
    # Correct: 01 02 03 07 09 10 11; wrong: 04 05; refused: 06 08 (the empty one, decided without the judge).
    verdicts = judge_script(tmp_path / "judge.jsonl", items)
    proc = ok(hallurun.run("eval", str(run_dir), "--judge", "m", "--judge-server", "mock", "--compare-judge",
                           "heuristic", "--", "--script", str(verdicts)))
    model = results(run_dir / "eval" / "m" / "eval_results.json")
    assert results(run_dir / "eval_results.json")["judge"] == "m" and model["approximate"] is False
    assert model["accuracy"] == pytest.approx(7 / 11)
    assert model["refusal_rate"] == pytest.approx(2 / 11)
    assert model["error_rate"] == pytest.approx(2 / 9)
    assert model["counts"] == {"items": 12, "scored": 11, "correct": 7, "wrong": 2, "refused": 2, "answered": 9,
                               "unparseable": 1, "judge_failed": 0, "inference_failed": 0}
    judged = {j["id"]: j for j in read_jsonl(run_dir / "eval" / "m" / "judgments.jsonl")}
    assert judged["cap-12"]["problem"] == "unparseable" and judged["cap-12"]["verdict"] is None
    assert judged["cap-12"]["judge_replies"] == {"capital": "maybe", "capital-retry": "still thinking"}
    assert judged["cap-07"]["verdict"] == "CORRECT" and judged["cap-08"]["judge_replies"] == {}
    stages = {s.name: [r["id"] for r in read_jsonl(s / "prompts.jsonl")]
              for s in (run_dir / "eval" / "m").iterdir() if s.is_dir()}
    assert stages == {"capital": [i for i in CASES if i != "cap-08"], "capital-retry": ["cap-07", "cap-12"]}
    # Agreement on the 11 items both decided: all but cap-11. Labels (judge, heuristic): CORRECT 7 and 6,
    # WRONG 2 and 2, REFUSED 2 and 3, so p_o = 10/11, p_e = (7·6 + 2·2 + 2·3)/121 = 52/121, kappa = 58/69.
    agreement = results(run_dir / "eval" / "agreement_m_vs_heuristic.json")
    assert [(d["decision"], d["items"], d["agree"]) for d in agreement["decisions"]] == [("verdict", 11, 10)]
    assert agreement["decisions"][0]["kappa"] == pytest.approx(58 / 69)
    assert "0.841" in proc.stdout

    # compare finds the folder's headline metrics through the run's manifest.
    proc = ok(hallurun.run("compare", str(run_dir)))
    assert "accuracy (correct / scored)" in proc.stdout and "63.6%" in proc.stdout and "22.2%" in proc.stdout


def test_a_folder_whose_scoring_is_incomplete_is_refused_before_any_server_starts(hallurun: Hallurun,
                                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "prompts.jsonl").write_bytes((CUSTOM / "prompts.jsonl").read_bytes())
    spec = orjson.loads((CUSTOM / "task.json").read_bytes())
    (folder / "task.json").write_bytes(orjson.dumps(spec))
    # The example's scoring, with a headline metric its metrics never compute.
    (folder / "scoring.py").write_text((CUSTOM / "scoring.py").read_text().replace(
        'Column("error_rate", "error rate (wrong / answered)")',
        'Column("error_rate", "error rate (wrong / answered)"), Column("f1", "F1")'))
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(folder), "--server", "mock", "--model", "m", "--run-dir",
                        str(run_dir))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "its metrics lack f1" in proc.stderr and str(folder / "scoring.py") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not run_dir.exists()
