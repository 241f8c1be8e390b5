"""Cutting a wiki article into passages of a chosen length, the way HalluLens picks its source sections.

An article is markdown: `#`-style headings separate sections, blank lines separate paragraphs. A passage is a run
of whole consecutive paragraphs (headings dropped) whose approximate token count lies in `[low, high]`.

Token counts are approximate on purpose: no tokenizer is needed, and a generator's own tokenizer would differ
anyway. `approx_tokens` counts whitespace-separated words × 1.3, which is close to what Llama-style BPE
tokenizers give for English prose (they split longer and rarer words into several tokens).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TOKENS_PER_WORD = 1.3
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def approx_tokens(text: str) -> int:
    """Approximate token count: whitespace words × 1.3, rounded up."""
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


@dataclass(frozen=True)
class Unit:
    """A paragraph (or a piece of an overlong one) and where it sits in the article."""

    text: str
    tokens: int
    section: int  # index of the heading section it belongs to
    ends_section: bool  # the last unit of its section: a clean place to end a passage


def paragraphs_by_section(document: str) -> list[list[str]]:
    """The article's paragraphs, grouped by heading section (text before the first heading is section 0)."""
    sections: list[list[str]] = [[]]
    block: list[str] = []

    def close_block() -> None:
        text = " ".join(line.strip() for line in block).strip()
        if text:
            sections[-1].append(text)
        block.clear()

    for line in document.splitlines():
        if _HEADING.match(line):
            close_block()
            sections.append([])
        elif not line.strip():
            close_block()
        else:
            block.append(line)
    close_block()
    return [s for s in sections if s]


def _split_long(text: str, high: int) -> list[str]:
    """Split a paragraph longer than `high` tokens at sentence ends (at words, for a monster sentence)."""
    pieces: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        while approx_tokens(sentence) > high:  # one sentence over the limit: cut it by words
            keep = int(high / TOKENS_PER_WORD)
            pieces.append(" ".join(words[:keep]))
            words = words[keep:]
            sentence = " ".join(words)
        if current and approx_tokens(" ".join([*current, sentence])) > high:
            pieces.append(" ".join(current))
            current = []
        if sentence:
            current.append(sentence)
    if current:
        pieces.append(" ".join(current))
    return pieces


def units(document: str, high: int) -> list[Unit]:
    """The article as a flat list of paragraph units, none longer than `high` tokens."""
    out: list[Unit] = []
    for index, paragraphs in enumerate(paragraphs_by_section(document)):
        texts = [piece for p in paragraphs for piece in (_split_long(p, high) if approx_tokens(p) > high else [p])]
        for position, text in enumerate(texts):
            out.append(Unit(text, approx_tokens(text), index, position == len(texts) - 1))
    return out


def passages(document: str, low: int, high: int) -> list[str]:
    """Non-overlapping passages of `low`–`high` approximate tokens, in article order.

    From each starting paragraph a passage grows until it reaches `low` tokens, then keeps growing (within
    `high`) only until it can end at a section end, so passages follow the article's own sections where they
    can. Where even one more paragraph would pass `high` before reaching `low`, the start moves on by one
    paragraph; text that fits no passage is left out.
    """
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low}, {high}")
    flat = units(document, high)
    found: list[str] = []
    start = 0
    while start < len(flat):
        total, end, cut = 0, start, None
        while end < len(flat) and total + flat[end].tokens <= high:
            total += flat[end].tokens
            end += 1
            if total >= low:
                cut = cut or end  # the shortest passage that is long enough: the fallback end
                if flat[end - 1].ends_section:
                    cut = end
                    break
        if cut is None:
            start += 1
            continue
        found.append("\n\n".join(u.text for u in flat[start:cut]))
        start = cut
    return found
