"""LongWiki's two judge questions: which atomic claims does an answer make, and does the evidence support each?"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from hallurun.eval.heuristic import is_abstaining
from hallurun.eval.parse import Labels, clean, concluded, parse_json_bool
from hallurun.eval.question import Question
from hallurun.eval.text import content_tokens, sentences, tokens

SUPPORT_OVERLAP = 0.7  # share of a claim's content tokens found in the evidence that counts as support
MIN_CLAIM_TOKENS = 3  # shorter sentences ("Sure!", "In short:") carry no checkable fact

CLAIMS_TEMPLATE = """\
Break the answer below into atomic claims: short statements, each of a single fact that an encyclopedia could \
confirm or refute. Make every claim understandable on its own: replace pronouns and vague references with the \
names they stand for. Leave out opinions, advice, hedges and anything the answer says about itself (such as "I am \
not sure"). If the answer declines to answer or states no facts, the list is empty.

Question: {prompt}
Answer to break into claims: {generation}

Reply with a JSON list of strings only, such as ["Marie Curie was born in Warsaw.", "Marie Curie won two Nobel \
Prizes."], or [] when there is no claim."""

VERIFY_TEMPLATE = """\
Decide whether the evidence below supports a claim. Use only the evidence, not what you know yourself.
- SUPPORTED: the evidence states the claim or clearly implies it.
- NOT SUPPORTED: the evidence contradicts the claim, or does not say enough to confirm it.

Evidence:
{evidence}

Claim to check: {claim}

Reply with one line and nothing else: "Verdict: SUPPORTED" or "Verdict: NOT SUPPORTED"."""


@dataclass(frozen=True)
class Essay:
    """What the claims question is about: the prompt and the model's answer."""

    prompt: str
    generation: str


@dataclass(frozen=True)
class Checked:
    """What the support question is about: one claim and the evidence it is checked against."""

    claim: str
    evidence: str


def claims_prompt(prompt: str, generation: str) -> str:
    """The claim extractor's prompt."""
    return CLAIMS_TEMPLATE.format(prompt=prompt.strip(), generation=generation.strip())


def verify_prompt(claim: str, evidence: str) -> str:
    """The claim verifier's prompt."""
    return VERIFY_TEMPLATE.format(claim=claim.strip(), evidence=evidence.strip())


# --- reading the replies -----------------------------------------------------------------------------------

def _support_label(raw: str) -> str | None:
    return "SUPPORTED" if re.sub(r"[\s_-]+", " ", raw.strip().upper()) == "SUPPORTED" else "NOT SUPPORTED"


# NOT SUPPORTED (and UNSUPPORTED) is a label of its own, not a negated SUPPORTED.
_SUPPORT = Labels(
    capitals=re.compile(r"\b(?:(?i:not)[\s_-]+SUPPORTED|UNSUPPORTED|SUPPORTED)\b"),
    alone=re.compile(r"[\W_]*(not[\s_-]+supported|unsupported|supported)[\W_]*", flags=re.IGNORECASE),
    first=re.compile(r"[\W_]*(not[\s_-]+supported|unsupported|supported)\s*(?:$|[.,:;!)-])", flags=re.IGNORECASE),
    canon=_support_label,
)


def parse_support(text: str) -> bool | None:
    """SUPPORTED → True, NOT SUPPORTED (or UNSUPPORTED) → False: the label the reply concludes (eval.parse's
    rule); failing any label, `{"is_supported": bool}`; else None."""
    verdict = concluded(text, _SUPPORT)
    if verdict is False:
        return parse_json_bool(text, "is_supported")
    return None if verdict is None else verdict == "SUPPORTED"


_NO_CLAIMS = re.compile(r"^(?:no(?:ne| (?:verifiable |atomic )?(?:claims?|facts?)(?: found)?)|\[\s*\])\.?$", re.I)


def parse_claims(text: str) -> list[str] | None:
    """A judge's list of atomic claims: a JSON list of strings (or of {"claim": ...} objects), or, failing that,
    a bulleted or numbered list. Claims are stripped and de-duplicated in order. None when there is no list."""
    cleaned = clean(text)
    if _NO_CLAIMS.match(cleaned):
        return []
    start, end = cleaned.find("["), cleaned.rfind("]")
    if 0 <= start < end:
        try:
            data = orjson.loads(cleaned[start:end + 1])
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, list):
            claims = []
            for entry in data:
                if isinstance(entry, dict):
                    entry = entry.get("claim")
                if not isinstance(entry, str):
                    return None
                claims.append(entry)
            return _dedupe(claims)
    bullets = re.findall(r"^\s*(?:[-*•]|\d+[.)])\s+(.+?)\s*$", cleaned, flags=re.MULTILINE)
    return _dedupe(bullets) if bullets else None


def _dedupe(claims: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for claim in claims:
        claim = claim.strip()
        if claim:
            seen.setdefault(claim, None)
    return list(seen)


# --- the heuristic judge's rules ---------------------------------------------------------------------------

def extract_claims(generation: str) -> list[str]:
    """Each sentence that states something: not a question, not a statement of not knowing, at least
    MIN_CLAIM_TOKENS content words. De-duplicated in order."""
    claims: dict[str, None] = {}
    for sentence in sentences(generation):
        if sentence.endswith("?") or is_abstaining(sentence):
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


# Claim lists can be as long as the answer they split; a support verdict is one line.
CLAIMS: Question[Essay, list[str]] = Question(
    stage="claims",
    prompt=lambda e: claims_prompt(e.prompt, e.generation),
    parse=parse_claims,
    heuristic=lambda e: extract_claims(e.generation),
    max_tokens=1024,
    reply_format="a JSON list of strings (use [] when there is no claim)",
)

VERIFY: Question[Checked, bool] = Question(
    stage="verify",
    prompt=lambda c: verify_prompt(c.claim, c.evidence),
    parse=parse_support,
    heuristic=lambda c: supported(c.claim, c.evidence),
    max_tokens=16,
    reply_format='one of the lines "Verdict: SUPPORTED" or "Verdict: NOT SUPPORTED"',
)
