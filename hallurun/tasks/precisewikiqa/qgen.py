"""The two requests that make a PreciseWikiQA question, and robust readers for what a generator answers.

Stage 1 asks a generator model for one question with a short answer, drawn from one passage, as JSON.
Stage 2 shows the same passage, question and answer back and asks for a yes/no verdict: can the question be
answered from the passage alone, with exactly that answer? Only questions with a "yes" are kept.

Each template's first line names the stage and the article, so a scripted mock server (tests) can tell every
request apart with a plain substring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

QUESTION_TEMPLATE = """\
Write a quiz question from this passage of the Wikipedia article "{title}".

<passage>
{passage}
</passage>

The question will be put to people (and language models) who have not seen the passage. It must:
- be answerable from the passage alone, with no other source;
- have one short answer that the passage states: a name, a number, a date, a place or a few words;
- name its subject in full (for example "{title}", never "it" or "the article"), so it stands on its own;
- not give its answer away.

Reply with one JSON object and nothing else:
{{"question": "<the question>", "answer": "<the short answer>"}}"""

CHECK_TEMPLATE = """\
Check a quiz question against this passage of the Wikipedia article "{title}".

<passage>
{passage}
</passage>

Question: {question}
Proposed answer: {answer}

Could someone who has read only this passage answer the question, and would their answer be exactly the proposed \
answer: stated in the passage, complete, and the only reasonable reading of the question?
Reply with a single word: yes or no."""


def question_request(title: str, passage: str) -> str:
    """Stage 1: ask for one question and its short answer from `passage`."""
    return QUESTION_TEMPLATE.format(title=title, passage=passage)


def check_request(title: str, passage: str, question: str, answer: str) -> str:
    """Stage 2: ask whether `question` is answerable from `passage` alone with exactly `answer`."""
    return CHECK_TEMPLATE.format(title=title, passage=passage, question=question, answer=answer)


@dataclass(frozen=True)
class QA:
    """A parsed question and its gold answer."""

    question: str
    answer: str


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_LABELLED = re.compile(r"(?im)^\W*question\W*[:\-]\s*(?P<q>.+?)\s*$.*?^\W*answer\W*[:\-]\s*(?P<a>.+?)\s*$", re.S)


def _objects(text: str) -> list[str]:
    """Every balanced {...} span in `text` (strings respected), outermost first, in order."""
    found: list[str] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start:i + 1])
    return found


def _qa_from(obj: Any) -> QA | None:
    if not isinstance(obj, dict):
        return None
    fields = {str(k).strip().lower(): v for k, v in obj.items()}
    question, answer = fields.get("question"), fields.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)  # "answer": 1889 is still a short answer
    if not (isinstance(question, str) and isinstance(answer, str)):
        return None
    question, answer = question.strip(), answer.strip()
    return QA(question, answer) if question and answer else None


def parse_qa(text: str) -> QA | None:
    """Read {"question", "answer"} from a generator's reply, or None if it holds no usable pair.

    Generators wrap JSON in code fences, put prose around it, or fall back to "Question: ... Answer: ..."
    lines; all of those are accepted. The first usable object wins.
    """
    candidates = [text, *_FENCE.findall(text)]
    for candidate in candidates:
        try:
            qa = _qa_from(orjson.loads(candidate.strip()))
        except orjson.JSONDecodeError:
            qa = None
        if qa:
            return qa
    for span in _objects(text):
        try:
            qa = _qa_from(orjson.loads(span))
        except orjson.JSONDecodeError:
            continue
        if qa:
            return qa
    labelled = _LABELLED.search(text)
    if labelled:
        return _qa_from({"question": labelled["q"].strip("*\"' "), "answer": labelled["a"].strip("*\"' ")})
    return None


_WORD = re.compile(r"[a-z]+")


def parse_verdict(text: str) -> bool | None:
    """Read a yes/no verdict: True, False, or None when the reply says neither (or both) plainly.

    The first word decides ("Yes.", "**No**", "yes - the passage says..."); otherwise a reply that holds exactly
    one of the words "yes" and "no" counts as that word.
    """
    words = _WORD.findall(text.lower())
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0] == "yes"
    said = {w for w in words if w in ("yes", "no")}
    if len(said) == 1:
        return said.pop() == "yes"
    return None
