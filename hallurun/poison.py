"""Poison inputs: items that wedge the server whenever they are in flight.

Every wedge names the items that were in flight. An item seen in two wedges becomes a suspect and is retried
alone; a suspect that wedges the server while alone is quarantined. So a poison input costs at most three
restarts, and innocent bystanders of a wedge are never blamed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PoisonTracker:
    """Counts wedges per item and says which items to retry alone and which to quarantine."""

    strikes: int = 2
    seen: Counter[str] = field(default_factory=Counter)
    suspects: set[str] = field(default_factory=set)

    def on_wedge(self, in_flight: list[str], solo: str | None = None) -> list[str]:
        """Record a wedge. Returns the ids to quarantine (a suspect that wedged the server alone)."""
        if solo is not None and in_flight == [solo]:
            self.forget(solo)
            return [solo]
        for item_id in in_flight:
            self.seen[item_id] += 1
            if self.seen[item_id] >= self.strikes:
                self.suspects.add(item_id)
        return []

    def is_suspect(self, item_id: str) -> bool:
        return item_id in self.suspects

    def forget(self, item_id: str) -> None:
        """The item finished (or was quarantined): stop tracking it."""
        self.seen.pop(item_id, None)
        self.suspects.discard(item_id)
