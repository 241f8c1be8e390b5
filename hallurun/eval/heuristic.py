"""The heuristic judge: an offline, approximate stand-in for an LLM judge.

No model is involved: abstention and refusal are phrase patterns, correctness is normalized answer matching and
token F1 against the gold answer, claims are sentences, and support is token overlap with the evidence. It is
fast and needs nothing, which makes it the default and a smoke test; it misreads paraphrases, hedged refusals and
premise corrections, so every report labels its numbers approximate. `hallurun eval RUN --judge heuristic
--compare-judge MODEL` measures how far it is from an LLM judge on a given run.
"""

from __future__ import annotations

import re
import unicodedata

NOTE = ("approximate: the heuristic judge uses refusal phrase patterns, normalized answer matching, token F1 and "
        "token overlap, not a model")

CORRECT_F1 = 0.5  # token F1 between the gold answer and one sentence of the answer that counts as a match
SUPPORT_OVERLAP = 0.7  # share of a claim's content tokens found in the evidence that counts as support
MIN_CLAIM_TOKENS = 3  # shorter sentences ("Sure!", "In short:") carry no checkable fact

# First-person statements of not knowing. Premise corrections ("There is no evidence that X did Y") are not
# listed on purpose: correcting the user is answering, by HalluLens' rule.
_ABSTAIN = [
    r"\bi (?:do not|don't|dont|did not|didn't) (?:know|have (?:any |enough |specific |reliable |detailed |the |"
    r"access to |real-time )*(?:information|data|details|knowledge|records?|access))",
    r"\bi (?:could not|couldn't|cannot|can't|can not|was unable to|am unable to|'m unable to|am not able to|"
    r"'m not able to|was not able to|wasn't able to) (?:find|locate|verify|confirm|determine|identify|access|"
    r"provide (?:an?|any|the|specific|accurate|reliable) (?:answer|information))",
    r"\b(?:i'm|i am) not (?:sure|certain|aware|familiar)",
    r"\bi know (?:nothing|(?:very )?little) (?:about|of)\b",
    r"\bi have no (?:information|knowledge|record|data|details)",
    r"\bno (?:reliable |specific |available |verifiable |public |accurate |further )?(?:information|data|records?)"
    r" (?:is |are )?(?:available|on|about|regarding|that)",
    r"\bnot (?:able|possible) (?:for me )?to (?:find|verify|confirm|determine)",
    r"\bknowledge cut-?off\b",
    r"\bbeyond (?:my|the scope of my) knowledge\b",
    r"\bunable to (?:find|verify|confirm|locate|determine)\b",
]
# Saying a made-up entity is not real, or that nothing is known about it.
_NONEXISTENT = [
    *_ABSTAIN,
    r"\b(?:does|do|did) not (?:appear|seem) to (?:exist|be (?:a |an )?(?:real|recogni[sz]ed|known|valid|"
    r"documented|existing))",
    r"\b(?:doesn't|don't|didn't) (?:appear|seem) to (?:exist|be (?:a |an )?(?:real|recogni[sz]ed|known|valid))",
    r"\b(?:does not|doesn't|do not|don't) exist\b",
    r"\bnot (?:a |an )?(?:real|recogni[sz]ed|known|valid|documented|existing|accepted) (?:species|genus|medicine|"
    r"medication|drug|plant|animal|bacteri\w*|organism|entity|name|compound|taxon)",
    r"\b(?:fictional|fictitious|made[- ]up|hypothetical|nonexistent|non-existent)\b",
    r"\bno such\b",
    r"\bno (?:information|record|records|mention|data|evidence of (?:its|the) existence)\b",
    r"\b(?:may|might|could) be (?:a |an )?(?:misspell|typo|mistake|confusion)",
    r"\bmisspell",
    r"\b(?:could not|couldn't|cannot|can't|unable to) find\b",
    r"\bnot (?:aware|familiar) (?:of|with)\b",
    r"\bnot (?:listed|found|recorded|described) in\b",
]
_ABSTAIN_RE = re.compile("|".join(_ABSTAIN))
_NONEXISTENT_RE = re.compile("|".join(_NONEXISTENT))

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(re.findall(r"\w+", """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty"""))}
_STOPWORDS = frozenset(re.findall(r"\w+", """
    a an the of in on at to for by with from and or as is are was were be been being it its this that these
    those he she they his her their them which who whom whose what when where why how than then there here also
    into onto about over under after before during while has have had do does did not no but so such can could
    would should may might will shall i you we our your my me us"""))


def _plain(text: str) -> str:
    """Lower case, straight apostrophes, accents dropped (Brasília → brasilia)."""
    text = text.replace("’", "'").replace("‘", "'").lower()
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """Normalized tokens: lower case, no accents or punctuation, number words as digits, no articles."""
    words = re.findall(r"[a-z0-9]+", _plain(text).replace("'", ""))
    return [_NUMBER_WORDS.get(w, w) for w in words if w not in {"a", "an", "the"}]


def content_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in _STOPWORDS]


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


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def is_abstaining(generation: str) -> bool:
    """True when the answer says it does not know; an empty answer abstains too."""
    return not generation.strip() or bool(_ABSTAIN_RE.search(_plain(generation)))


def correctness(generation: str, answer: str) -> str:
    """CORRECT when the normalized gold answer appears in the answer, or when some sentence of the answer has
    token F1 >= CORRECT_F1 with it (stop words dropped); INCORRECT otherwise. Never UNVERIFIABLE."""
    gold = tokens(answer)
    if _contains(tokens(generation), gold):
        return "CORRECT"
    gold_content = [t for t in gold if t not in _STOPWORDS] or gold
    best = max((token_f1(gold_content, content_tokens(s)) for s in sentences(generation)), default=0.0)
    return "CORRECT" if best >= CORRECT_F1 else "INCORRECT"


def believes_exists(generation: str) -> bool:
    """False when the answer says the entity is unknown, unfindable or not real (or is empty); True otherwise."""
    return bool(generation.strip()) and not _NONEXISTENT_RE.search(_plain(generation))


def extract_claims(generation: str) -> list[str]:
    """Each sentence that states something: not a question, not a statement of not knowing, at least
    MIN_CLAIM_TOKENS content words. De-duplicated in order."""
    claims: dict[str, None] = {}
    for sentence in sentences(generation):
        if sentence.endswith("?") or _ABSTAIN_RE.search(_plain(sentence)):
            continue
        if len(content_tokens(sentence)) >= MIN_CLAIM_TOKENS:
            claims.setdefault(sentence, None)
    return list(claims)


def supported(claim: str, evidence: str) -> bool:
    """Supported when every number in the claim appears in the evidence and at least SUPPORT_OVERLAP of its
    content tokens do. Numbers are held to a stricter rule because dates and counts are what models most
    often get wrong while every other word matches."""
    words = content_tokens(claim)
    if not words:
        return False
    known = set(tokens(evidence))
    if any(w.isdigit() and w not in known for w in words):
        return False
    return sum(w in known for w in words) / len(words) >= SUPPORT_OVERLAP
