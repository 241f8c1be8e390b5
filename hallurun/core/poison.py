"""Poison inputs: items that wedge the server whenever they are in flight.

Every wedge names the items that were on the wire. An item seen in two wedges becomes a suspect and is retried
alone, with nothing else in flight. Running alone is not yet proof: a server that wedges for its own reasons (a
leak, a timer, every N requests) also wedges while a suspect happens to run alone. So a suspect is convicted
only when it wedges a *freshly started* server alone (one that had served no other item since it started, so
nothing else can have worn it out) twice; a solo wedge of a server that had served others is not counted
against it, and the suspect goes alone again, first, on the server that wedge brings up.

A real poison input therefore costs at most five restarts: two wedges to become a suspect, at most one solo
wedge of a server that had served other suspects before it, then two solo wedges of fresh servers (four when it
is the first suspect to run alone). Innocent bystanders of a wedge are never blamed, and neither is an item
that merely ran alone on a server that wedges by itself. What this cannot tell apart is a server that wedges
on the very first request after every start: it answers nothing at all, and the restart budget ends that run.

The evidence outlives a session (the scheduler keeps it in the run directory), so these bounds hold across
Ctrl-C and `resume`, and a run whose `--max-restarts` is smaller than them still gets there, a resume at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PoisonTracker:
    """Counts wedges per item and says which items to retry alone and which to quarantine."""

    strikes: int = 2  # wedges an item must be in flight at to become a suspect
    convictions: int = 2  # solo wedges of a fresh server that convict a suspect
    seen: Counter[str] = field(default_factory=Counter)
    suspects: set[str] = field(default_factory=set)
    fresh_solo_wedges: Counter[str] = field(default_factory=Counter)

    def on_wedge(self, in_flight: list[str], solo: str | None = None, *, fresh: bool = False) -> list[str]:
        """Record a wedge with `in_flight` on the wire; `solo` is the suspect running alone, if one was, and
        `fresh` whether the server had served no other item since it started. Returns the ids to quarantine."""
        if solo is not None and in_flight == [solo]:
            if not fresh:
                return []  # weaker evidence: the server had served others since its start
            self.fresh_solo_wedges[solo] += 1
            if self.fresh_solo_wedges[solo] < self.convictions:
                return []
            self.forget(solo)
            return [solo]
        for item_id in in_flight:
            self.seen[item_id] += 1
            if self.seen[item_id] >= self.strikes:
                self.suspects.add(item_id)
        return []

    def to_json(self) -> dict[str, Any]:
        """The evidence so far, as plain JSON values."""
        return {"seen": dict(self.seen), "suspects": sorted(self.suspects),
                "fresh_solo_wedges": dict(self.fresh_solo_wedges)}

    @classmethod
    def from_json(cls, data: Any) -> PoisonTracker:
        """Evidence written by `to_json`; anything else (a file from another version) is no evidence."""
        tracker = cls()
        if not isinstance(data, dict):
            return tracker
        for name, counter in (("seen", tracker.seen), ("fresh_solo_wedges", tracker.fresh_solo_wedges)):
            value = data.get(name)
            if isinstance(value, dict):
                counter.update({str(k): v for k, v in value.items() if isinstance(v, int) and v > 0})
        suspects = data.get("suspects")
        if isinstance(suspects, list):
            tracker.suspects.update(str(s) for s in suspects)
        return tracker

    def is_suspect(self, item_id: str) -> bool:
        return item_id in self.suspects

    def forget(self, item_id: str) -> None:
        """The item finished (or was quarantined): stop tracking it."""
        self.seen.pop(item_id, None)
        self.suspects.discard(item_id)
        self.fresh_solo_wedges.pop(item_id, None)
