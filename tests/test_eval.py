"""End-to-end `hallurun eval` and `hallurun compare`: real inference runs against the mock server, then the
heuristic judge and a model judge whose verdicts the test scripts through `mock-server --script`."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from hallurun.eval.question import RETRY_MARKER
from tests.conftest import REPO, Hallurun, read_jsonl, server_processes, wait_until, write_dataset

SAMPLE = REPO / "hallurun" / "tasks" / "precisewikiqa" / "questions.jsonl"


def sample() -> list[dict[str, Any]]:
    return read_jsonl(SAMPLE)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def script(path: Path, pairs: list[tuple[str, str]]) -> Path:
    return write_jsonl(path, [{"match": m, "response": r} for m, r in pairs])


def abstain_match(question: str) -> str:
    return f"Question: {question}\nChatbot's answer:"


def correct_match(question: str) -> str:
    return f"Question: {question}\nGold answer:"


def retry_match(previous_reply: str) -> str:
    return f"{RETRY_MARKER}\n<<<\n{previous_reply}\n>>>"


def results(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def ok(proc: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def infer(hallurun: Hallurun, run_dir: Path, *task: str, answers: Path | None = None) -> None:
    server = ("--", "--script", str(answers)) if answers else ()
    ok(hallurun.run("inference", *task, "--model", "tested-model", "--server", "mock", "--run-dir", str(run_dir),
                    *server))


# One question per popularity bin from the built-in sample, each with a scripted answer from the tested model,
# the model judge's scripted verdicts, and what the heuristic judge makes of it.
CASES = {  # id: (answer, abstain reply(ies), correctness reply(ies), heuristic abstains, heuristic verdict)
    "pwqa-0001": ("The Eiffel Tower was completed in 1889.", '{"is_abstaining": false}', "CORRECT", False, "CORRECT"),
    "pwqa-0013": ("Lionel Messi was born in Buenos Aires.", '{"is_abstaining": false}', "INCORRECT", False,
                  "INCORRECT"),
    # A hedged answer: the judge reads an answer, the heuristic an abstention. They disagree here.
    "pwqa-0025": ("I'm not certain, but I believe Tesla was born in Smiljan.", '{"is_abstaining": false}', "CORRECT",
                  True, None),
    # Unreadable, then readable on the stricter re-prompt.
    "pwqa-0037": ("Ada Lovelace wrote her notes on Babbage's analytical engine.",
                  ("I think it did not abstain.", '{"is_abstaining": false}'), "CORRECT", False, "CORRECT"),
    "pwqa-0049": ("", None, None, True, None),  # empty: an abstention, never sent to the judge
    # Unreadable twice: recorded as unparseable, outside every denominator.
    "pwqa-0061": ("She worked with the composer George Antheil.", ("maybe", "still thinking"), None, False,
                  "CORRECT"),
    "pwqa-0073": ("There is no evidence that a Danish king funded Uraniborg; Tycho Brahe paid for it himself.",
                  '{"is_abstaining": false}', "UNVERIFIABLE", False, "INCORRECT"),
    "pwqa-0085": ("I don't know.", '{"is_abstaining": true}', None, True, None),
    "pwqa-0097": ("He described it to Galileo Galilei.", '{"is_abstaining": false}',
                  ("The answer names another astronomer.", "INCORRECT"), False, "INCORRECT"),
    "pwqa-0109": ("There are 4 elements named after Ytterby.", '{"is_abstaining": false}', "CORRECT", False,
                  "CORRECT"),
}


def judge_script(path: Path, questions: dict[str, str]) -> Path:
    """Retry entries first: a retry prompt also holds the first prompt's text, and the first match wins."""
    retries, firsts = [], []
    for item_id, (_, abstain, correct, _, _) in CASES.items():
        for reply, match in ((abstain, abstain_match), (correct, correct_match)):
            if reply is None:
                continue
            first, second = reply if isinstance(reply, tuple) else (reply, None)
            firsts.append((match(questions[item_id]), first))
            if second is not None:
                retries.append((retry_match(first), second))
    return script(path, retries + firsts)


@pytest.fixture
def sample_run(hallurun: Hallurun, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A finished precisewikiqa run over ten questions of the built-in sample, with scripted answers."""
    picked = [r for r in sample() if r["id"] in CASES]
    questions = {r["id"]: r["prompt"] for r in picked}
    answers = script(tmp_path / "answers.jsonl", [(questions[i], CASES[i][0]) for i in CASES])
    run_dir = tmp_path / "run"
    infer(hallurun, run_dir, "--task", "precisewikiqa", "--dataset", str(write_jsonl(tmp_path / "ten.jsonl", picked)),
          answers=answers)
    return run_dir, questions


def test_eval_with_heuristic_and_scripted_model_judge(hallurun: Hallurun, tmp_path: Path,
                                                      sample_run: tuple[Path, dict[str, str]]) -> None:
    run_dir, questions = sample_run
    assert read_jsonl(run_dir / "generation.jsonl")[4]["generation"] == ""  # the empty answer came through

    # The heuristic judge is the default: 3 abstentions (hedge, empty, "I don't know"); of 7 answers, 4 correct.
    proc = ok(hallurun.run("eval", str(run_dir)))
    assert "approximate" in proc.stdout
    heur = results(run_dir / "eval" / "heuristic" / "eval_results.json")
    assert heur == results(run_dir / "eval_results.json")
    assert heur["judge"] == "heuristic" and heur["approximate"] is True and "approximate" in heur["note"]
    assert heur["halu_Rate"] == pytest.approx(3 / 7)
    assert heur["refusal_rate"] == pytest.approx(3 / 10)
    assert heur["correct_rate"] == pytest.approx(4 / 10)
    assert heur["counts"]["unparseable"] == 0 and heur["counts"]["scored"] == 10
    assert set(heur["by_h_score_cat"]) == {str(b) for b in range(10)}
    judgments = {j["id"]: j for j in read_jsonl(run_dir / "eval" / "heuristic" / "judgments.jsonl")}
    assert list(judgments) == list(CASES)
    for item_id, (_, _, _, abstains, verdict) in CASES.items():
        assert judgments[item_id]["abstained"] is abstains, item_id
        assert judgments[item_id]["verdict"] == verdict, item_id
    chart = run_dir / "eval" / "heuristic" / "by_popularity.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and heur["files"]["chart"] == str(chart)

    # The model judge, served by the mock with scripted verdicts, and its agreement with the heuristic.
    verdicts = judge_script(tmp_path / "judge.jsonl", questions)
    proc = ok(hallurun.run("eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock",
                           "--compare-judge", "heuristic", "--", "--script", str(verdicts)))
    model = results(run_dir / "eval" / "judge-model" / "eval_results.json")
    assert results(run_dir / "eval_results.json")["judge"] == "judge-model"  # the primary judge's results
    assert model["approximate"] is False and "note" not in model
    # Scored: all but pwqa-0061 (unparseable). Abstained: the empty one and "I don't know". Answered 7: CORRECT
    # 0001, 0025, 0037, 0109; hallucinated 0013 (INCORRECT), 0073 (UNVERIFIABLE), 0097 (INCORRECT on retry).
    assert model["halu_Rate"] == pytest.approx(3 / 7)
    assert model["refusal_rate"] == pytest.approx(2 / 9)
    assert model["correct_rate"] == pytest.approx(4 / 9)
    assert model["counts"] | {"inference_failed": 0} == {
        "items": 10, "scored": 9, "abstained": 2, "answered": 7, "correct": 4, "incorrect": 2, "unverifiable": 1,
        "hallucinated": 3, "unparseable": 1, "judge_failed": 0, "inference_failed": 0}
    judged = {j["id"]: j for j in read_jsonl(run_dir / "eval" / "judge-model" / "judgments.jsonl")}
    assert judged["pwqa-0061"]["problem"] == "unparseable"
    assert judged["pwqa-0061"]["judge_replies"] == {"abstain": "maybe", "abstain-retry": "still thinking"}
    assert judged["pwqa-0037"]["abstained"] is False and judged["pwqa-0097"]["verdict"] == "INCORRECT"
    # The stages: only non-empty answers are judged, only unreadable verdicts are asked again.
    stage_ids = {stage.name: [r["id"] for r in read_jsonl(stage / "prompts.jsonl")]
                 for stage in (run_dir / "eval" / "judge-model").iterdir() if stage.is_dir()}
    assert {k: len(v) for k, v in stage_ids.items()} == {"abstain": 9, "abstain-retry": 2, "correct": 7,
                                                         "correct-retry": 1}
    assert "pwqa-0049" not in stage_ids["abstain"]
    assert set(stage_ids["abstain-retry"]) == {"pwqa-0037", "pwqa-0061"}
    # Agreement: on abstention the judges differ only on the hedged answer (8 of 9; kappa 24/33 by hand), and
    # they agree on every answer both call answered.
    agreement = results(run_dir / "eval" / "agreement_judge-model_vs_heuristic.json")
    decisions = {d["decision"]: d for d in agreement["decisions"]}
    assert (decisions["abstained"]["items"], decisions["abstained"]["agree"]) == (9, 8)
    assert decisions["abstained"]["kappa"] == pytest.approx(24 / 33)
    assert (decisions["hallucinated"]["items"], decisions["hallucinated"]["agree"]) == (6, 6)
    assert decisions["hallucinated"]["kappa"] == pytest.approx(1.0)
    assert "Cohen's kappa" in proc.stdout and "0.727" in proc.stdout

    # The judge was loaded once for its four stages: the first stage started it, the others used it; its log and
    # the events of its life between stages are in the judge's folder.
    def starts() -> dict[str, int]:
        return {stage: [e["event"] for e in read_jsonl(run_dir / "eval" / "judge-model" / stage / "events.jsonl")
                        ].count("server_started") for stage in stage_ids}

    assert sum(starts().values()) == 1 and starts()["abstain"] == 1
    assert "mock-server" in (run_dir / "eval" / "judge-model" / "server.log").read_text()
    lifetime = [e["event"] for e in read_jsonl(run_dir / "eval" / "judge-model" / "events.jsonl")]
    assert lifetime[-2:] == ["server_stopping", "server_stopped"]
    # Again: every stage is finished, so no server starts and nothing is judged twice.
    before = starts()
    ok(hallurun.run("eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock", "--", "--script",
                    str(verdicts)))
    assert starts() == before
    assert results(run_dir / "eval" / "judge-model" / "eval_results.json")["halu_Rate"] == model["halu_Rate"]

    # compare: two runs side by side (the second one's answers are the mock's noise).
    other = tmp_path / "other"
    infer(hallurun, other, "--task", "precisewikiqa", "--dataset", str(tmp_path / "ten.jsonl"))
    ok(hallurun.run("eval", str(other)))
    proc = ok(hallurun.run("compare", str(run_dir), str(other)))
    assert "run" in proc.stdout and "other" in proc.stdout and "42.9%" in proc.stdout
    both = orjson.loads(ok(hallurun.run("compare", str(run_dir), str(other), "--judge", "heuristic", "--json")).stdout)
    assert [r["judge"] for r in both] == ["heuristic", "heuristic"] and both[0]["halu_Rate"] == pytest.approx(3 / 7)


def test_a_judge_loaded_once_still_records_each_stages_own_restart(hallurun: Hallurun, tmp_path: Path,
                                                                  sample_run: tuple[Path, dict[str, str]]) -> None:
    run_dir, questions = sample_run
    verdicts = judge_script(tmp_path / "judge.jsonl", questions)
    # Each judge process wedges at its 12th request: the first stage (a probe and 9 prompts) passes, a later
    # stage meets the wedge, and its restart is that stage's.
    ok(hallurun.run("eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock", "--stall-timeout",
                    "2", "--", "--script", str(verdicts), "--fault", "hang-after:12"))
    judge_dir = run_dir / "eval" / "judge-model"
    stages = sorted(p.name for p in judge_dir.iterdir() if p.is_dir())
    kinds = {stage: [e["event"] for e in read_jsonl(judge_dir / stage / "events.jsonl")] for stage in stages}
    assert "hang_detected" not in kinds["abstain"] and kinds["abstain"].count("server_started") == 1
    troubled = [stage for stage in stages if "hang_detected" in kinds[stage]]
    assert troubled and all(kinds[s].count("server_restarted") == kinds[s].count("hang_detected") for s in troubled)
    # One launch, plus one per wedge: never one per stage.
    launches = sum(k.count("server_started") for k in kinds.values())
    assert launches == 1 + sum(k.count("hang_detected") for k in kinds.values())
    assert results(judge_dir / "eval_results.json")["counts"]["scored"] == 9


def test_eval_resumes_after_kill_9_and_judges_each_item_once(hallurun: Hallurun, tmp_path: Path) -> None:
    questions = sample()
    run_dir = tmp_path / "run"
    infer(hallurun, run_dir, "--task", "precisewikiqa")  # all 120, with the mock's noise as answers
    # Verdicts by popularity bin: bins 0-1 abstain; of the rest, bins 7-9 are correct.
    verdicts = script(tmp_path / "judge.jsonl", [
        *((abstain_match(q["prompt"]), f'{{"is_abstaining": {str(q["h_score_cat"] <= 1).lower()}}}')
          for q in questions),
        *((correct_match(q["prompt"]), "CORRECT" if q["h_score_cat"] >= 7 else "INCORRECT") for q in questions),
    ])
    args = ("eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock", "--concurrency", "2", "--",
            "--script", str(verdicts), "--latency", "0.03")
    judge_dir = run_dir / "eval" / "judge-model"
    # Kill -9 in the middle of the first stage, then in the middle of the second.
    for stage, enough in (("abstain", 20), ("correct", 10)):
        proc = hallurun.start(*args, log=tmp_path / f"{stage}.log")
        wait_until(lambda s=stage, n=enough, p=proc: len(read_jsonl(judge_dir / s / "results.jsonl")) >= n
                   or p.poll() is not None, 60, f"judge results in {stage}")
        assert proc.poll() is None, f"eval ended before it could be killed in {stage}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until(lambda s=stage: not server_processes(judge_dir / s), 20, f"the judge server of {stage} to go")
    assert "already settled" in (tmp_path / "correct.log").read_text()  # the killed stage continued, not restarted
    ok(hallurun.run(*args))
    for stage, count in (("abstain", 120), ("correct", 96)):
        ids = [r["id"] for r in read_jsonl(judge_dir / stage / "results.jsonl")]
        assert len(ids) == count and Counter(ids).most_common(1)[0][1] == 1, stage
        assert {r["id"] for r in read_jsonl(judge_dir / stage / "prompts.jsonl")} == set(ids)
    judgments = read_jsonl(judge_dir / "judgments.jsonl")
    assert len(judgments) == 120 and len({j["id"] for j in judgments}) == 120
    final = results(judge_dir / "eval_results.json")
    assert final["counts"]["abstained"] == 24 and final["counts"]["correct"] == 36
    assert final["halu_Rate"] == pytest.approx(60 / 96)
    assert final["refusal_rate"] == pytest.approx(24 / 120)
    assert final["correct_rate"] == pytest.approx(36 / 120)


def test_eval_longwiki_with_scripted_claims_and_passages(hallurun: Hallurun, tmp_path: Path) -> None:
    items = [
        {"id": "lw-1", "title": "Ada Lovelace", "h_score_cat": 6, "reference": "Ada Lovelace was an English "
         "mathematician who wrote notes on the Analytical Engine.", "prompt": "Write an essay about Ada Lovelace."},
        {"id": "lw-2", "title": "Quux", "h_score_cat": 0, "reference": "Quux is a village.",
         "prompt": "Write an essay about Quux."},
        {"id": "lw-3", "title": "Uraniborg", "h_score_cat": 3, "reference": "Uraniborg was an observatory.",
         "prompt": "Write an essay about Uraniborg."},
    ]
    answers = {"lw-1": "Ada Lovelace wrote notes on the Analytical Engine. Ada Lovelace was born in Italy. She loved "
                       "steam engines greatly.", "lw-2": "I know nothing about Quux.",
               "lw-3": "Uraniborg stood on the island of Hven."}
    run_dir = tmp_path / "run"
    infer(hallurun, run_dir, "--task", str(write_jsonl(tmp_path / "lw.jsonl", items)),
          answers=script(tmp_path / "answers.jsonl", [(i["prompt"], answers[i["id"]]) for i in items]))
    passages = write_jsonl(tmp_path / "passages.jsonl", [
        {"title": "Uraniborg", "text": "Uraniborg was built on the island of Hven by Tycho Brahe."}])
    claims = {"lw-1": ["Ada Lovelace wrote notes on the Analytical Engine.", "Ada Lovelace was Italian.",
                       "Ada Lovelace was a mathematician."], "lw-2": [], "lw-3": ["Uraniborg stood on Hven."]}
    supported = {"Ada Lovelace wrote notes on the Analytical Engine.": "SUPPORTED",
                 "Ada Lovelace was Italian.": "NOT SUPPORTED", "Ada Lovelace was a mathematician.": "Supported.",
                 "Uraniborg stood on Hven.": "SUPPORTED"}
    verdicts = script(tmp_path / "judge.jsonl", [
        *((f"Answer to break into claims: {answers[i]}", orjson.dumps(c).decode()) for i, c in claims.items()),
        *((f"Claim to check: {c}", v) for c, v in supported.items())])
    # Scored as longwiki although the prompt file names no evaluator.
    proc = hallurun.run("eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock")
    assert proc.returncode == 2 and "--evaluator" in proc.stderr
    ok(hallurun.run("eval", str(run_dir), "--evaluator", "longwiki", "--passages", str(passages), "--judge",
                    "judge-model", "--judge-server", "mock", "--", "--script", str(verdicts)))
    got = results(run_dir / "eval_results.json")
    p1, r1, f1 = 2 / 3, 2 / 32, 2 * (2 / 3) * (2 / 32) / (2 / 3 + 2 / 32)
    p3, r3, f3 = 1.0, 1 / 32, 2 * (1 / 32) / (1 + 1 / 32)
    assert got["precision"] == pytest.approx((p1 + p3) / 2)
    assert got["recall@32"] == pytest.approx((r1 + r3) / 2)
    assert got["f1@32"] == pytest.approx((f1 + f3) / 2)
    assert got["refusal_rate"] == pytest.approx(1 / 3)
    assert got["counts"]["claims"] == 4 and got["counts"]["supported"] == 3
    assert "no Wikipedia database" in got["evidence"] and str(passages) in got["evidence"]
    verify = {r["id"]: r["prompt"] for r in read_jsonl(run_dir / "eval" / "judge-model" / "verify" / "prompts.jsonl")}
    assert len(verify) == 4 and "built on the island of Hven by Tycho Brahe" in verify["lw-3#0"]
    # The heuristic judge on the same run: sentences as claims, token overlap as support, labelled approximate.
    proc = ok(hallurun.run("eval", str(run_dir), "--evaluator", "longwiki", "--passages", str(passages)))
    assert "approximate" in proc.stdout and "no Wikipedia database" in proc.stdout
    heur = results(run_dir / "eval_results.json")
    assert heur["counts"]["abstained"] == 1 and heur["counts"]["claims"] == 4 and heur["counts"]["supported"] == 2


def test_eval_mixedentities_with_the_heuristic_judge(hallurun: Hallurun, tmp_path: Path) -> None:
    entities = [
        {"id": "me-1", "name": "Lutra borealis", "type": "animal", "prompt": "What can you tell me about the animal "
                                                                           "Lutra borealis?"},
        {"id": "me-2", "name": "Quercus ursina", "type": "plant", "prompt": "Tell me about the plant Quercus ursina."},
        {"id": "me-3", "name": "Amoxiprazole", "type": "medicine", "prompt": "What is the medicine Amoxiprazole?"},
        {"id": "me-4", "name": "Bacillus nivea", "type": "bacterium", "prompt": "Describe the bacterium Bacillus "
                                                                              "nivea."},
    ]
    answers = ["Lutra borealis is a river otter of northern Canada.",
               "I couldn't find any information about a plant called Quercus ursina.",
               "Amoxiprazole does not appear to be a recognized medicine.", ""]
    run_dir = tmp_path / "run"
    infer(hallurun, run_dir, "--task", str(write_jsonl(tmp_path / "me.jsonl", entities)),
          answers=script(tmp_path / "answers.jsonl", [(e["prompt"], a) for e, a in zip(entities, answers,
                                                                                         strict=True)]))
    ok(hallurun.run("eval", str(run_dir), "--evaluator", "mixedentities"))
    got = results(run_dir / "eval_results.json")
    assert got["refusal_rate"] == 0.75 and got["false_acceptance_rate"] == 0.25
    assert set(got["by_type"]) == {"animal", "plant", "medicine", "bacterium"}


def test_bad_inputs_get_one_line_and_exit_2(hallurun: Hallurun, tmp_path: Path) -> None:
    def refused(*args: str, says: str) -> None:
        proc = hallurun.run(*args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    refused("eval", str(tmp_path / "nowhere"), says="no such run directory")
    (tmp_path / "empty").mkdir()
    refused("eval", str(tmp_path / "empty"), says="manifest.json")
    refused("compare", str(tmp_path / "empty"), says="hallurun eval")
    # A question file without gold answers, run as precisewikiqa.
    no_gold = [{k: v for k, v in r.items() if k != "answer"} for r in sample()[:3]]
    run_dir = tmp_path / "no-gold"
    infer(hallurun, run_dir, "--task", "precisewikiqa", "--dataset", str(write_jsonl(tmp_path / "q.jsonl", no_gold)))
    refused("eval", str(run_dir), says=f"{run_dir / 'generation.jsonl'}:1: field 'answer'")
    refused("eval", str(run_dir), "--evaluator", "longwiki", says="is scored as precisewikiqa")
    refused("eval", str(run_dir), "--passages", str(tmp_path / "q.jsonl"), says="--passages applies to longwiki")
    refused("eval", str(run_dir), "--compare-judge", "heuristic", says="is the judge already given")
    refused("eval", str(run_dir), "--judge", "m", "--judge-server", "external", says="needs --judge-url")
    # A run that never finished: its server would not start.
    write_dataset(tmp_path / "d.jsonl", 3)
    unfinished = tmp_path / "unfinished"
    proc = hallurun.run("inference", "--task", "precisewikiqa", "--dataset", str(tmp_path / "d.jsonl"), "--model",
                        "m", "--server", "mock", "--run-dir", str(unfinished), "--", "--fault", "fail-start")
    assert proc.returncode == 3
    refused("eval", str(unfinished), says="is not finished")
    # A run of a prompt file with no evaluator; scored when told how (its records do carry an `answer`).
    adhoc = tmp_path / "adhoc"
    infer(hallurun, adhoc, "--task", str(tmp_path / "d.jsonl"))
    refused("eval", str(adhoc), says="names no evaluator")
    ok(hallurun.run("eval", str(adhoc), "--evaluator", "precisewikiqa"))
    # A judge that rejects every request (its context is too short): the items are reported, not scored; exit 1.
    proc = ok(hallurun.run("eval", str(adhoc), "--evaluator", "precisewikiqa", "--judge", "small-judge",
                           "--judge-server", "mock", "--", "--max-model-len", "100"), code=1)
    failed = results(adhoc / "eval_results.json")
    assert failed["counts"]["judge_failed"] == 3 and failed["counts"]["scored"] == 0
    assert failed["refusal_rate"] is None and "failed judge request" in proc.stdout
    judged = read_jsonl(adhoc / "eval" / "small-judge" / "judgments.jsonl")
    assert {j["problem"] for j in judged} == {"judge_failed"} and "http_400" in judged[0]["judge_replies"]["abstain"]


def test_eval_keys_judgments_by_the_runs_ids_when_items_without_ids_failed(hallurun: Hallurun,
                                                                           tmp_path: Path) -> None:
    """Records without `id` get their position as id; two of them fail (a prompt too long for the mock's context),
    so generation.jsonl lacks them. Every judgment must still sit with its own question, gold answer and answer."""
    too_long = {2, 5}
    records = []
    for i in range(8):
        words = " ".join(f"filler{k}" for k in range(60)) if i in too_long else "in one word"
        records.append({"prompt": f"Which colour is flag number {i}? Answer {words}.", "answer": f"colour{i}",
                        "h_score_cat": i % 3})
    dataset = write_jsonl(tmp_path / "no-ids.jsonl", records)
    # The tested model answers the gold answer for even positions and a wrong one for odd positions.
    answers = script(tmp_path / "answers.jsonl", [
        (r["prompt"], f"It is {r['answer']}." if i % 2 == 0 else "It is mauve.") for i, r in enumerate(records)])
    run_dir = tmp_path / "run"
    ok(hallurun.run("inference", "--task", "precisewikiqa", "--dataset", str(dataset), "--model", "tested-model",
                    "--server", "mock", "--run-dir", str(run_dir), "--max-tokens", "16", "--",
                    "--max-model-len", "50", "--script", str(answers)), code=1)
    assert {f["id"] for f in read_jsonl(run_dir / "failures.jsonl")} == {str(i) for i in too_long}
    answered = [i for i in range(8) if i not in too_long]

    def check(judgments: list[dict[str, Any]], verdict_of: dict[int, str]) -> None:
        assert [j["id"] for j in judgments] == [str(i) for i in answered]  # dataset order, failed ones missing
        for j in judgments:
            i = int(j["id"])
            assert (j["prompt"], j["answer"], j["h_score_cat"]) == (
                records[i]["prompt"], records[i]["answer"], records[i]["h_score_cat"]), j
            assert j["generation"] == (f"It is colour{i}." if i % 2 == 0 else "It is mauve."), j
            assert j["verdict"] == verdict_of[i], j

    # The heuristic judge: right for even positions, wrong for odd ones.
    ok(hallurun.run("eval", str(run_dir)))
    check(read_jsonl(run_dir / "eval" / "heuristic" / "judgments.jsonl"),
          {i: "CORRECT" if i % 2 == 0 else "INCORRECT" for i in answered})
    heur = results(run_dir / "eval_results.json")
    assert heur["counts"]["items"] == 6 and heur["counts"]["inference_failed"] == 2
    assert heur["halu_Rate"] == pytest.approx(3 / 6)  # answered 0, 1, 3, 4, 6, 7: the odd ones are wrong

    # A scripted model judge whose verdict depends on the question alone: UNVERIFIABLE for positions 3 and 6.
    verdict_of = {i: "UNVERIFIABLE" if i in (3, 6) else "CORRECT" for i in answered}
    verdicts = script(tmp_path / "judge.jsonl", [
        *((abstain_match(records[i]["prompt"]), '{"is_abstaining": false}') for i in answered),
        *((correct_match(records[i]["prompt"]), f"Verdict: {verdict_of[i]}") for i in answered)])
    ok(hallurun.run("eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock", "--", "--script",
                    str(verdicts)))
    check(read_jsonl(run_dir / "eval" / "judge-model" / "judgments.jsonl"), verdict_of)
    stage = {r["id"]: r["prompt"] for r in read_jsonl(run_dir / "eval" / "judge-model" / "correct" / "prompts.jsonl")}
    for i in answered:
        assert records[i]["prompt"] in stage[str(i)] and f"Gold answer: colour{i}\n" in stage[str(i)]
    assert results(run_dir / "eval_results.json")["halu_Rate"] == pytest.approx(2 / 6)

    # A generation.jsonl whose answers were swapped between two questions is refused, not scored.
    generation = run_dir / "generation.jsonl"
    lines = read_jsonl(generation)
    lines[0]["generation"], lines[1]["generation"] = lines[1]["generation"], lines[0]["generation"]
    write_jsonl(generation, lines)
    proc = hallurun.run("eval", str(run_dir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{generation}:1: this question and answer are not item '0'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
