"""Text tools every judge and task may use: normalization, tokens, token F1, sentences, empty answers."""

from __future__ import annotations

import re
import unicodedata

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(re.findall(r"\w+", """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty"""))}
STOPWORDS = frozenset(re.findall(r"\w+", """
    a an the of in on at to for by with from and or as is are was were be been being it its this that these
    those he she they his her their them which who whom whose what when where why how than then there here also
    into onto about over under after before during while has have had do does did not no but so such can could
    would should may might will shall i you we our your my me us"""))


def plain(text: str) -> str:
    """Lower case, straight apostrophes, accents dropped (Brasília → brasilia)."""
    text = text.replace("’", "'").replace("‘", "'").lower()
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """Normalized tokens: lower case, no accents or punctuation, number words as digits, no articles."""
    words = re.findall(r"[a-z0-9]+", plain(text).replace("'", ""))
    return [_NUMBER_WORDS.get(w, w) for w in words if w not in {"a", "an", "the"}]


def content_tokens(text: str) -> list[str]:
    """The tokens that carry content: `tokens` without stop words."""
    return [t for t in tokens(text) if t not in STOPWORDS]


def token_f1(gold: list[str], predicted: list[str]) -> float:
    """SQuAD-style token F1 between two token lists (multiset overlap)."""
    if not gold or not predicted:
        return 0.0
    remaining = list(predicted)
    common = 0
    for token in gold:
        if token in remaining:
            remaining.remove(token)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def sentences(text: str) -> list[str]:
    """Split on sentence ends and line breaks; good enough for model answers, which are mostly plain prose."""
    parts = re.split(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+", text.strip())
    return [p.strip(" -*•\t") for p in parts if p.strip(" -*•\t")]


def contains(haystack: list[str], needle: list[str]) -> bool:
    """True when `needle` occurs in `haystack` as a contiguous run of tokens."""
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def is_empty(generation: str) -> bool:
    """An answer with no text. hallurun decides these without a judge: an empty answer gives no answer, so it
    is an abstention (it cannot be a hallucination) and, for made-up entities, a refusal."""
    return not generation.strip()
