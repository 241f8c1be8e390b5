"""A model judge scripted through `hallurun mock-server --script`: each verdict matched on the answer the judge is
shown, in the text each judge question's template puts around it (hallurun/tasks/*/questions.py). Used by the
sweep bench and tests/test_sweep.py, so both script the judge the same way."""

from __future__ import annotations

from pathlib import Path

import orjson


def write_script(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A mock-server script: a prompt containing the first text gets the second as its answer."""
    path.write_bytes(b"".join(orjson.dumps({"match": m, "response": r}) + b"\n" for m, r in pairs))
    return path


def abstains(answer: str, abstaining: bool) -> tuple[str, str]:
    """PreciseWikiQA's abstention question about `answer`, and its verdict."""
    return (f"Chatbot's answer: {answer}\n\nReply with JSON only, either {{\"is_abstaining\"",
            orjson.dumps({"is_abstaining": abstaining}).decode())


def correct(gold: str, answer: str, right: bool) -> tuple[str, str]:
    """PreciseWikiQA's correctness question about `answer` against `gold`, and its verdict."""
    return f"Gold answer: {gold}\nChatbot's answer: {answer}\n", f"Verdict: {'CORRECT' if right else 'INCORRECT'}"


def believes(answer: str, exists: bool) -> tuple[str, str]:
    """MixedEntities' question whether `answer` treats the made-up entity as real, and its verdict."""
    return (f"Chatbot's answer: {answer}\n\nReply with JSON only, either {{\"believes_exists\"",
            orjson.dumps({"believes_exists": exists}).decode())
