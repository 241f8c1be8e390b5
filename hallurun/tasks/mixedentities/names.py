"""MixedEntities: names of animals, plants, bacteria and medicines that do not exist, built from real parts.

HalluLens' NonExistentRefusal recipe: a made-up organism joins a real genus to a real species epithet taken from
a genus of another family (so the pair is foreign to each other), and a made-up medicine joins the prefix of one
real medicine to the class stem of another (e.g. "atorva" + "pril"). A model that then describes the "species" or
the "drug" as if it existed is hallucinating.

The parts are data (`tasks/mixedentities/taxa.json`, `medicines.json`). A name is rejected if it equals, or lies
within a small edit distance of, any real name those lists hold, so an invented name can neither be a listed real
name nor read as a misspelling of one. The builder is deterministic for a given seed and the same lists.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

KINDS = ("animal", "plant", "bacterium", "medicine")
TEMPLATES = (
    "What can you tell me about the {type} {name}?",
    "I came across the {type} {name} in something I was reading. Could you describe it for me?",
    "Give me a short overview of {name}, {a_type}: what it is and what it is known for.",
    "Could you summarise what is known about the {type} {name}?",
    "I am writing a report that mentions the {type} {name}. What are its main characteristics?",
)
NEAR = 2  # edit distance at or below which a made-up name counts as a real one (a misspelling of it)
VOWELS = "aeiou"


@dataclass(frozen=True)
class Entity:
    """A made-up name and where its two halves came from."""

    name: str
    type: str
    parts: dict[str, str]
    first: str  # genus or prefix: used to spread the picks over many different parts
    second: str  # epithet or stem


def default_folder() -> Path:
    """This task's folder, where the real parts' lists live."""
    return Path(__file__).resolve().parent


def _load(folder: Path, name: str) -> dict[str, Any]:
    return orjson.loads((folder / name).read_bytes())


def real_names(folder: Path | None = None) -> dict[str, set[str]]:
    """Every real name the lists know, lower-cased, by kind (what a made-up name must keep away from)."""
    folder = folder or default_folder()
    taxa, medicines = _load(folder, "taxa.json"), _load(folder, "medicines.json")
    known: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for genus in taxa["genera"]:
        known[genus["kind"]].update(f"{genus['genus']} {e}".lower() for e in genus["epithets"])
    for name in taxa["also_real"]:
        for kind in ("animal", "plant", "bacterium"):
            known[kind].add(name.lower())  # checked against every kind: a real binomial is real whatever it is
    known["medicine"] = {m["name"].lower() for m in medicines["medicines"]}
    known["medicine"] |= {name.lower() for name in medicines["also_real"]}
    return known


def distance(a: str, b: str, limit: int = NEAR) -> int:
    """Levenshtein distance, cut short once it must exceed `limit` (returns limit + 1 then)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def _deletions(word: str, depth: int) -> set[str]:
    """`word` with up to `depth` characters deleted, in every way."""
    found, frontier = {word}, {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))}
        found |= frontier
    return found


class NearIndex:
    """Finds whether a name lies within NEAR edits of any of a set of names, without comparing against each.

    Two strings within k edits share a string reachable from each by at most k deletions, so indexing every
    name's deletion variants turns the search into a few hundred dictionary lookups; hits are then confirmed
    with the exact distance.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.variants: dict[str, set[str]] = {}
        for name in names:
            lowered = name.lower()
            for variant in _deletions(lowered, NEAR):
                self.variants.setdefault(variant, set()).add(lowered)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lowered = name.lower()
        candidates = set().union(*(self.variants.get(v, ()) for v in _deletions(lowered, NEAR)))
        return any(distance(lowered, real) <= NEAR for real in candidates)


def is_near_real(name: str, known: Iterable[str] | NearIndex) -> bool:
    """True if `name` equals a real name or is within NEAR edits of one."""
    index = known if isinstance(known, NearIndex) else NearIndex(known)
    return name in index


def _join(prefix: str, stem: str) -> str:
    """Join a medicine prefix and stem so the result can be said: one vowel at the joint, not zero or two."""
    if prefix[-1] in VOWELS and stem[0] in VOWELS:
        return prefix[:-1] + stem
    if prefix[-1] not in VOWELS and stem[0] not in VOWELS:
        return prefix + "o" + stem
    return prefix + stem


def organism_candidates(folder: Path | None = None) -> list[Entity]:
    """Every genus × foreign-family epithet of the same kind that is not (nearly) a real name."""
    folder = folder or default_folder()
    genera = _load(folder, "taxa.json")["genera"]
    known = {kind: NearIndex(names) for kind, names in real_names(folder).items()}
    out = []
    for genus in genera:
        if not genus["combine"]:
            continue
        for donor in genera:
            if donor["kind"] != genus["kind"] or donor["family"] == genus["family"]:
                continue
            for epithet in donor["epithets"]:
                name = f"{genus['genus']} {epithet}"
                if is_near_real(name, known[genus["kind"]]):
                    continue
                parts = {"genus": genus["genus"], "genus_family": genus["family"], "epithet": epithet,
                         "epithet_from": f"{donor['genus']} {epithet}"}
                out.append(Entity(name, genus["kind"], parts, genus["genus"], epithet))
    return out


def medicine_candidates(folder: Path | None = None) -> list[Entity]:
    """Every prefix × stem of another drug class that is not (nearly) a real medicine name."""
    folder = folder or default_folder()
    medicines = _load(folder, "medicines.json")["medicines"]
    known = NearIndex(real_names(folder)["medicine"])
    out = []
    for head in medicines:
        for tail in medicines:
            if head["stem"] == tail["stem"]:
                continue
            name = _join(head["prefix"], tail["stem"]).capitalize()
            if is_near_real(name, known):
                continue
            parts = {"prefix": head["prefix"], "prefix_from": head["name"], "stem": tail["stem"],
                     "stem_from": tail["name"]}
            out.append(Entity(name, "medicine", parts, head["prefix"], tail["stem"]))
    return out


def _spread(pool: list[Entity], count: int) -> list[Entity]:
    """Take `count` names from a shuffled pool, first using each genus/prefix and epithet/stem at most once."""
    chosen: list[Entity] = []
    names: set[str] = set()
    for distinct in ((True, True), (True, False), (False, False)):
        firsts = {e.first for e in chosen}
        seconds = {e.second for e in chosen}
        for entity in pool:
            if len(chosen) == count:
                return chosen
            if entity.name in names or (distinct[0] and entity.first in firsts) or (
                    distinct[1] and entity.second in seconds):
                continue
            chosen.append(entity)
            names.add(entity.name)
            firsts.add(entity.first)
            seconds.add(entity.second)
    return chosen


def prompt_for(entity: Entity, template: int) -> str:
    article = "an" if entity.type[0] in VOWELS else "a"
    return TEMPLATES[template % len(TEMPLATES)].format(type=entity.type, name=entity.name,
                                                       a_type=f"{article} {entity.type}")


@functools.lru_cache(maxsize=4)
def _pools(folder: Path) -> dict[str, tuple[Entity, ...]]:
    """Every candidate name by kind, sorted by name (computed once per lists folder)."""
    pools: dict[str, list[Entity]] = {kind: [] for kind in KINDS}
    for entity in organism_candidates(folder) + medicine_candidates(folder):
        pools[entity.type].append(entity)
    return {kind: tuple(sorted(found, key=lambda e: e.name)) for kind, found in pools.items()}


def build(n: int, seed: int = 0, folder: Path | None = None) -> list[dict[str, Any]]:
    """`n` dataset records (`id, name, type, prompt, parts`), spread evenly over the four kinds.

    Kinds share n as evenly as possible (the first kinds in KINDS take the remainder); the records are then
    shuffled so any prefix of the file mixes kinds, and prompt phrasings rotate through TEMPLATES.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    rng = random.Random(f"hallurun-mixedentities:{seed}")
    pools = _pools((folder or default_folder()).resolve())
    share, extra = divmod(n, len(KINDS))
    picked: list[Entity] = []
    for index, kind in enumerate(KINDS):
        pool = list(pools[kind])
        rng.shuffle(pool)
        want = share + (1 if index < extra else 0)
        chosen = _spread(pool, want)
        if len(chosen) < want:
            raise ValueError(f"only {len(chosen)} distinct {kind} names can be made from the lists; asked for {want}")
        picked.extend(chosen)
    rng.shuffle(picked)
    return [{"id": f"me-{i + 1:04d}", "name": e.name, "type": e.type, "prompt": prompt_for(e, i),
             "parts": dict(e.parts)}
            for i, e in enumerate(picked)]


def write(records: list[dict[str, Any]], path: Path) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
