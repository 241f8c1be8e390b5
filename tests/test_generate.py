"""`hallurun generate`: passages, parsers and selection in-process; the whole pipeline as real subprocesses with
the mock server as the generator, its answers scripted per article with `--script`."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from hallurun.store.dataset import scan
from hallurun.tasks.precisewikiqa import qgen
from hallurun.tasks.precisewikiqa.generate import OUTPUT_FIELDS, read_documents, select
from hallurun.tasks.precisewikiqa.passages import approx_tokens, paragraphs_by_section, passages
from tests.conftest import REPO, Hallurun, read_jsonl, server_processes, wait_until

SAMPLE = REPO / "hallurun" / "tasks" / "precisewikiqa" / "goodwiki_sample.jsonl"
UNPARSEABLE = {"Petra", "Skara Brae"}
REJECTED = {"Mount Everest", "Axolotl", "Lucy Wills"}
UNCLEAR = {"Sahara"}


# --- passages ---------------------------------------------------------------------------------------------------

def test_sample_documents_give_passages_of_200_to_500_tokens_made_of_whole_paragraphs() -> None:
    for doc in read_documents(SAMPLE):
        found = passages(doc.document, 200, 500)
        assert found, doc.title
        paragraphs = {p for section in paragraphs_by_section(doc.document) for p in section}
        for passage in found:
            assert 200 <= approx_tokens(passage) <= 500, (doc.title, approx_tokens(passage))
            assert set(passage.split("\n\n")) <= paragraphs  # never a cut paragraph, never a heading
            assert "#" not in passage


def test_passages_prefer_section_ends_and_split_an_overlong_paragraph() -> None:
    para = lambda n, w: " ".join([w] * n) + "."  # noqa: E731 - a tiny local helper
    doc = f"## A\n\n{para(100, 'a')}\n\n{para(100, 'b')}\n\n## B\n\n{para(60, 'c')}\n\n{para(60, 'd')}\n"
    # 130 + 130 tokens reach 200 at the end of section A: the passage stops there rather than taking section B.
    assert passages(doc, 200, 500)[0] == f"{para(100, 'a')}\n\n{para(100, 'b')}"
    long_paragraph = " ".join(f"Sentence {i} has a few words in it." for i in range(120))  # ~1250 tokens
    pieces = passages(long_paragraph, 200, 500)
    assert len(pieces) >= 2 and all(200 <= approx_tokens(p) <= 500 for p in pieces)
    assert passages("Too short.", 200, 500) == []


# --- parsing the generator's replies -------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    '{"question": "When was it built?", "answer": "1889"}',
    'Sure! Here is one:\n```json\n{"question": "When was it built?", "answer": "1889"}\n```\nHope that helps.',
    'The passage says a lot. {"question": "When was it built?", "answer": "1889"} is my pick {"note": 1}',
    '{"Question": "When was it built?", "Answer": 1889}',
    "**Question:** When was it built?\n**Answer:** 1889",
])
def test_question_replies_are_parsed_robustly(reply: str) -> None:
    assert qgen.parse_qa(reply) == qgen.QA("When was it built?", "1889")


@pytest.mark.parametrize("reply", ["", "I cannot write a question for this.", '{"question": "Why?"}',
                                   '{"question": "", "answer": "x"}', '```json\n{"question": "Why?", "answer"\n```'])
def test_unusable_question_replies_are_none(reply: str) -> None:
    assert qgen.parse_qa(reply) is None


@pytest.mark.parametrize(("reply", "verdict"), [
    ("yes", True), ("Yes.", True), ("**No**", False), ("no - the passage gives a different year", False),
    ("The answer is yes.", True), ("Maybe", None), ("", None), ("Yes and no.", True), ("I would say no, not yes", None),
])
def test_verdicts(reply: str, verdict: bool | None) -> None:
    assert qgen.parse_verdict(reply) is verdict


# --- selection ----------------------------------------------------------------------------------------------------

def test_selection_spreads_n_evenly_over_the_bins_and_is_seeded() -> None:
    docs = read_documents(SAMPLE)
    picks, counts = select(docs, 30, seed=7)
    assert Counter(p.doc.h_score_cat for p in picks) == dict.fromkeys(range(10), 3)
    assert len({p.doc.title for p in picks}) == 30  # enough documents: each used once
    picks25, _ = select(docs, 25, seed=7)
    expected = {**dict.fromkeys(range(5), 3), **dict.fromkeys(range(5, 10), 2)}  # the lowest bins take the rest
    assert Counter(p.doc.h_score_cat for p in picks25) == expected
    assert [p.passage for p in select(docs, 30, seed=7)[0]] == [p.passage for p in picks]
    assert [p.passage for p in select(docs, 30, seed=8)[0]] != [p.passage for p in picks]
    # More than the documents hold: documents are reused for other passages, never the same passage twice.
    many, counts = select(docs, 100, seed=7)
    assert len({(p.doc.title, p.passage) for p in many}) == len(many)
    assert all(c.picked <= c.wanted == 10 for c in counts.values())
    assert all(c.picked > 3 for c in counts.values())


# --- the command, end to end -------------------------------------------------------------------------------------

def _titles() -> list[str]:
    return [d.title for d in read_documents(SAMPLE)]


def write_script(path: Path) -> None:
    """Scripted generator: a question per article (in varied wrappings), then verdicts per article."""
    ask = qgen.QUESTION_TEMPLATE.splitlines()[0]
    check = qgen.CHECK_TEMPLATE.splitlines()[0]
    lines = []
    for i, title in enumerate(_titles()):
        qa = {"question": f"What is one fact about {title}?", "answer": f"fact {i}"}
        reply = [orjson.dumps(qa).decode(),
                 f"Here is a question.\n```json\n{orjson.dumps(qa).decode()}\n```",
                 f"Question: {qa['question']}\nAnswer: {qa['answer']}"][i % 3]
        if title in UNPARSEABLE:
            reply = "I am not able to write a question about this passage."
        verdict = "No, the passage does not support that answer." if title in REJECTED else (
            "Possibly." if title in UNCLEAR else "Yes.")
        lines.append({"match": ask.format(title=title), "response": reply})
        lines.append({"match": check.format(title=title), "response": verdict})
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def generate_args(out: Path, script: Path, *server_args: str) -> tuple[str, ...]:
    return ("generate", "--task", "precisewikiqa", "--docs", str(SAMPLE), "--model", "generator", "--n", "30",
            "--seed", "3", "--out", str(out), "--server", "mock", "--", "--script", str(script), *server_args)


def stage_ids(work: Path, stage: str) -> tuple[list[str], list[str]]:
    """(ids in the stage's prompt file, ids in its results, with repeats)."""
    prompts = [r["id"] for r in read_jsonl(work / stage / "prompts.jsonl")]
    return prompts, [r["id"] for r in read_jsonl(work / stage / "run" / "results.jsonl")]


def test_generate_builds_a_precisewikiqa_file_and_drops_what_the_check_rejects(hallurun: Hallurun,
                                                                               tmp_path: Path) -> None:
    script, out = tmp_path / "script.jsonl", tmp_path / "questions.jsonl"
    write_script(script)
    proc = hallurun.run(*generate_args(out, script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_jsonl(out)
    assert scan(out).count == len(records) == 30 - len(UNPARSEABLE | REJECTED | UNCLEAR)
    for record in records:
        assert tuple(record) == OUTPUT_FIELDS
        assert record["prompt"] == f"What is one fact about {record['title']}?"
        assert 200 <= approx_tokens(record["reference"]) <= 500
        assert record["pageid"] is None and isinstance(record["categories"], list) and record["description"]
    kept_titles = {r["title"] for r in records}
    assert not kept_titles & (UNPARSEABLE | REJECTED | UNCLEAR)
    docs = {d.title: d for d in read_documents(SAMPLE)}
    assert all(docs[r["title"]].h_score_cat == r["h_score_cat"] for r in records)
    assert all(p in docs[r["title"]].document for r in records for p in r["reference"].split("\n\n"))

    work = Path(str(out) + ".work")
    summary = orjson.loads((work / "summary.json").read_bytes())["bins"]
    assert {b: (c["wanted"], c["picked"]) for b, c in summary.items()} == {str(b): (3, 3) for b in range(10)}
    totals = Counter()
    for counts in summary.values():
        totals.update(counts)
    assert (totals["unparseable"], totals["rejected"], totals["unclear"], totals["failed"]) == (2, 3, 1, 0)
    assert totals["kept"] == len(records)
    assert "kept" in proc.stdout and "questions per popularity bin" in proc.stdout
    # Only parsed questions were checked: the check stage never saw the unparseable ones.
    prompts, done = stage_ids(work, "answerability")
    assert len(prompts) == 28 and sorted(done) == sorted(prompts)
    # One generator launch for both stages: the first started it, the second used it.
    starts = {stage: [e["event"] for e in read_jsonl(work / stage / "run" / "events.jsonl")].count("server_started")
              for stage in ("questions", "answerability")}
    assert starts == {"questions": 1, "answerability": 0}

    # Running the same command again starts no server and rewrites the same file.
    before = out.read_bytes()
    again = hallurun.run(*generate_args(out, script))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already finished") == 2 and out.read_bytes() == before
    assert len([e for e in read_jsonl(work / "questions" / "run" / "events.jsonl")
                if e["event"] == "server_started"]) == 1


def test_generate_resumes_each_stage_after_kill_9_and_ctrl_c(hallurun: Hallurun, tmp_path: Path) -> None:
    script = tmp_path / "script.jsonl"
    write_script(script)
    clean = tmp_path / "clean.jsonl"
    assert hallurun.run(*generate_args(clean, script)).returncode == 0

    out = tmp_path / "questions.jsonl"
    work = Path(str(out) + ".work")
    slow = generate_args(out, script, "--latency", "0.05")
    args = (*slow[:slow.index("--")], "--concurrency", "1", *slow[slow.index("--"):])

    # kill -9 in the middle of the question stage.
    first = hallurun.start(*args)
    wait_until(lambda: len(stage_ids(work, "questions")[1]) >= 3, 60, "some question results")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    run_dir = work / "questions" / "run"
    wait_until(lambda: not server_processes(run_dir), 20, "the killed stage's server to be reaped")
    assert len(stage_ids(work, "questions")[1]) < 30, "the stage finished before it could be killed"

    # Ctrl-C in the middle of the check stage.
    second = hallurun.start(*args, log=tmp_path / "second.log")
    wait_until(lambda: len(stage_ids(work, "answerability")[1]) >= 3, 60, "some check results")
    second.send_signal(signal.SIGINT)
    assert second.wait(30) == 130
    assert "run the same `hallurun generate` command again" in (tmp_path / "second.log").read_text()
    assert len(stage_ids(work, "answerability")[1]) < 28, "the stage finished before it could be interrupted"

    final = hallurun.run(*args)
    assert final.returncode == 0, final.stdout + final.stderr
    for stage in ("questions", "answerability"):
        prompts, done = stage_ids(work, stage)
        assert sorted(done) == sorted(prompts), stage  # every request answered exactly once
    assert out.read_bytes() == clean.read_bytes()


def test_bad_documents_and_a_changed_job_are_usage_errors(hallurun: Hallurun, tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"title": "A", "document": "text", "h_score_cat": 3}\n{"title": "B", "document": "x"}\n')
    proc = hallurun.run("generate", "--docs", str(docs), "--model", "g", "--n", "2", "--out", str(tmp_path / "o.jsonl"),
                        "--server", "mock")
    assert proc.returncode == 2 and f"{docs}:2" in proc.stderr and "h_score_cat" in proc.stderr
    assert "Traceback" not in proc.stderr

    script, out = tmp_path / "script.jsonl", tmp_path / "q.jsonl"
    write_script(script)
    assert hallurun.run(*generate_args(out, script)).returncode == 0
    changed = [a if a != "3" else "4" for a in generate_args(out, script)]  # another --seed, same --out
    proc = hallurun.run(*changed)
    assert proc.returncode == 2 and "holds different requests" in proc.stderr
