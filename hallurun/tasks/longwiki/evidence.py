"""What a LongWiki claim is checked against: the item's reference section and, with `--passages`, the passages
of its page that share the most words with the claim (a stand-in for HalluLens' retrieval over a Wikipedia
database, which hallurun does not have offline)."""

from __future__ import annotations

from pathlib import Path

from hallurun.eval.errors import EvalError
from hallurun.eval.scoring import Record
from hallurun.eval.text import content_tokens
from hallurun.store.jsonl import JsonlError, read_objects

EVIDENCE_PASSAGES = 5  # passages per claim, besides the reference section, when --passages is given

Passages = dict[str, list[str]]  # page title, lower-cased → its passages' texts


def load_passages(path: Path) -> Passages:
    """A `--passages` file: JSONL records `{"title", "text"}`, grouped by title (and by its lower case)."""
    found: Passages = {}
    try:
        for line_no, record in read_objects(path):
            for name in ("title", "text"):
                if not isinstance(record.get(name), str):
                    raise EvalError(f"{path}:{line_no}: field {name!r}: must be a string")
            found.setdefault(record["title"].strip().lower(), []).append(record["text"])
    except JsonlError as exc:
        raise EvalError(f"passages: {exc}") from None
    return found


def evidence_for(record: Record, claim: str, passages: Passages | None) -> str:
    """The evidence text for one claim of one item's answer."""
    parts = []
    if str(record.get("reference", "")).strip():
        parts.append(f"Title: {record.get('title', '')}\nText: {record['reference'].strip()}")
    if passages:
        words = set(content_tokens(claim))
        candidates = passages.get(str(record.get("title", "")).strip().lower(), [])
        ranked = sorted(candidates, key=lambda text: -len(words & set(content_tokens(text))))
        parts += [f"Title: {record.get('title', '')}\nText: {text.strip()}" for text in ranked[:EVIDENCE_PASSAGES]]
    return "\n\n".join(parts) or "(no evidence)"
