"""Reading judge replies: JSON booleans and labelled verdicts, by rules every task's parsers share.

A parser returns None for a reply it cannot read with confidence; the judge then asks once more with a stricter
prompt and records the item as unparseable. A parser never guesses a verdict.

Labelled verdicts (a task's own labels, such as CORRECT / INCORRECT) are read by one rule:

A label is a mention of one of the parser's labels: written in capitals anywhere ("so this is INCORRECT"), or in
any case when it stands alone (the whole reply, a sentence or a verdict line's whole value, or the first word of
the reply or of a verdict line's value when punctuation follows it: "Incorrect. ...", "Verdict: incorrect, it
says 1887"). Lower-case labels in running text are never read ("the correct answer is ...", "not correct
English").

  1. The conclusion is the last verdict line that mentions a label ("Verdict: ...", also "Final verdict",
     "Answer", "Final answer", "Label", "Judgment", "Decision"); without one, the last sentence that mentions a
     label. What the reply says before its conclusion does not count: "Correct. Although ..., so this is
     INCORRECT." concludes INCORRECT.
  2. The verdict is the conclusion's label when it mentions exactly one, not negated. Two different labels
     ("CORRECT or INCORRECT") or a negated one ("NOT CORRECT": not a label of its own) make the reply
     unparseable. A task may make a negated label a label of its own (NOT SUPPORTED).
  3. A reply with no label at all is left to the task's fallback (usually JSON, {"verdict": "INCORRECT"}).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

_FENCE = re.compile(r"```[a-zA-Z]*")


def clean(text: str) -> str:
    """Drop code fences and markdown emphasis that judges wrap around verdicts."""
    return _FENCE.sub(" ", text).replace("**", "").replace("__", "").strip()


def json_objects(text: str) -> list[Any]:
    """Every flat {...} in the text that reads as JSON, also with Python's True/False/None and single quotes."""
    found = []
    for raw in re.findall(r"\{[^{}]*\}", text):
        for candidate in (raw, _pythonic_to_json(raw)):
            try:
                found.append(orjson.loads(candidate))
                break
            except orjson.JSONDecodeError:
                continue
    return found


def _pythonic_to_json(raw: str) -> str:
    raw = re.sub(r"\bTrue\b", "true", raw)
    raw = re.sub(r"\bFalse\b", "false", raw)
    raw = re.sub(r"\bNone\b", "null", raw)
    return raw.replace("'", '"')


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    return None


def parse_json_bool(text: str, key: str) -> bool | None:
    """The boolean a reply gives for `key`, as `{"key": true}` or a close variant; None when absent or when the
    reply gives both values."""
    cleaned = clean(text)
    values: set[bool] = set()
    for obj in json_objects(cleaned):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(k, str) and k.strip().lower() == key.lower() and _as_bool(v) is not None:
                    values.add(bool(_as_bool(v)))
    if not values:
        # Not JSON, but unmistakable: `is_abstaining: true`, `"is_abstaining" = false`.
        pattern = rf"""["']?{re.escape(key)}["']?\s*[:=]\s*["']?(true|false)\b"""
        values = {m.lower() == "true" for m in re.findall(pattern, cleaned, flags=re.IGNORECASE)}
    return values.pop() if len(values) == 1 else None


def json_labels(text: str, labels: tuple[str, ...]) -> str | None:
    """The one label among `labels` that the reply's JSON objects give as a string value, else None."""
    found = {str(v).strip().upper() for obj in json_objects(clean(text)) if isinstance(obj, dict)
             for v in obj.values() if isinstance(v, str)} & set(labels)
    return found.pop() if len(found) == 1 else None


# --- labelled verdicts --------------------------------------------------------------------------------------

_VERDICT_LINE = re.compile(
    r"^[ \t>#*-]*(?:final[ \t]+)?(?:verdict|answer|label|judge?ment|decision)[ \t]*[:=][ \t]*(.*?)[ \t]*$",
    flags=re.IGNORECASE | re.MULTILINE)
_SENTENCES = re.compile(r"(?<=[.!?;])\s+|\n")


@dataclass(frozen=True)
class Labels:
    """One parser's labels: `capitals` finds them in running text, `alone` matches a part that is only a label,
    `first` a label as the first word of a part, followed by punctuation; each captures the label in group 1
    (`capitals`: the whole match)."""

    capitals: re.Pattern[str]
    alone: re.Pattern[str]
    first: re.Pattern[str]
    canon: Callable[[str], str | None]  # a matched label (any case, maybe negated) → the verdict, None if negated


def _mentions(part: str, labels: Labels, *, opening: bool = False) -> list[str | None]:
    """The labels a part of a reply mentions, in order (None for a negated label)."""
    whole = labels.alone.fullmatch(part)
    if whole:
        return [labels.canon(whole.group(1))]
    found = [labels.canon(m.group(0)) for m in labels.capitals.finditer(part)]
    head = labels.first.match(part) if opening else None
    return ([labels.canon(head.group(1))] if head else []) + found


def concluded(text: str, labels: Labels) -> str | bool | None:
    """The verdict a reply concludes (the rule above); None when unparseable, False when it has no label."""
    cleaned = clean(text)
    conclusion: list[str | None] = []
    for value in _VERDICT_LINE.findall(cleaned):
        conclusion = _mentions(value, labels, opening=True) or conclusion
    if not conclusion:
        for k, sentence in enumerate(_SENTENCES.split(cleaned)):
            conclusion = _mentions(sentence, labels, opening=k == 0) or conclusion
    if not conclusion:
        return False
    if None in conclusion or len(set(conclusion)) != 1:
        return None
    return conclusion[0]


def word_labels(*names: str) -> Labels:
    """Labels made of single words (CORRECT, INCORRECT, ...): a negated one ("NOT CORRECT") is not a label."""
    words = "|".join(re.escape(n) for n in names)
    allowed = {n.upper() for n in names}

    def canon(raw: str) -> str | None:
        label = raw.strip().upper()
        return label if label in allowed else None

    return Labels(
        capitals=re.compile(rf"(?:\b(?i:not)\s+)?\b(?:{words.upper()})\b"),
        alone=re.compile(rf"[\W_]*((?:not\s+)?(?:{words.lower()}))[\W_]*", flags=re.IGNORECASE),
        first=re.compile(rf"[\W_]*({words.lower()})\s*(?:$|[.,:;!)-])", flags=re.IGNORECASE),
        canon=canon,
    )
