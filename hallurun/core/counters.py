"""Live counters of a run, shared by the scheduler (which updates them) and the progress display."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hallurun.wire.metrics import ServerMetrics


@dataclass
class ReplicaStats:
    """One replica's line in the display: its state, its load, its restarts and the silence window in force."""

    index: int = 0
    state: str = "starting"  # starting, running, unreachable, restarting, retired
    in_flight: int = 0
    restarts: int = 0
    wedges: int = 0
    window: float | None = None  # the wedge window in force, seconds
    metrics: ServerMetrics = field(default_factory=ServerMetrics)


@dataclass
class RunStats:
    """What the progress display and the final summary show."""

    total: int = 0
    done: int = 0
    failed: int = 0
    done_at_start: int = 0
    in_flight: int = 0
    retries: int = 0
    resent: int = 0  # requests sent again at once after the server dropped a kept-alive connection
    restarts: int = 0
    wedges: int = 0
    crashes: int = 0
    quarantined: int = 0
    started: float = field(default_factory=time.monotonic)
    replicas: list[ReplicaStats] = field(default_factory=lambda: [ReplicaStats()])

    @property
    def server_state(self) -> str:
        """The single server's state, or how many replicas of the pool serve."""
        if len(self.replicas) == 1:
            return self.replicas[0].state
        serving = sum(r.state == "running" for r in self.replicas)
        return f"{serving}/{len(self.replicas)} serving"

    @property
    def metrics(self) -> ServerMetrics:
        """The first replica's engine metrics (the only one's, for a single server)."""
        return self.replicas[0].metrics

    @property
    def settled(self) -> int:
        return self.done + self.failed

    def rate(self, now: float | None = None) -> float:
        """Items settled per second in this session (resumed items excluded)."""
        elapsed = (now or time.monotonic()) - self.started
        fresh = self.settled - self.done_at_start
        return fresh / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        left = self.total - self.settled
        return left / rate if rate > 0 else None
