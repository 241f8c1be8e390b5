"""One server of the pool as the scheduler sees it: its supervisor and client, what is in flight on it, whether
dispatch to it is open, and its counters. The scheduler owns every replica; a replica owns nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hallurun.core.counters import ReplicaStats
from hallurun.server.supervisor import Supervisor
from hallurun.store.dataset import Item
from hallurun.store.events import Emitter
from hallurun.wire.client import Client
from hallurun.wire.watchdog import Activity, Flight, Pace


@dataclass(eq=False)
class Job:
    """An item and the attempts it has spent; a requeued job keeps its count."""

    item: Item
    attempts: int = 0


@dataclass(eq=False)
class Running:
    """A job in flight on a replica, on the worker task that runs it."""

    job: Job
    flight: Flight
    task: asyncio.Task[None]


@dataclass(eq=False)
class Replica:
    """One supervised server and the scheduler's state for it."""

    index: int
    supervisor: Supervisor
    client: Client
    activity: Activity
    events: Emitter  # the run's event log, each event tagged with this replica
    stats: ReplicaStats
    pace: Pace = field(default_factory=Pace)  # what healthy streams on this replica look like
    running: dict[str, Running] = field(default_factory=dict)
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # open while it may take jobs
    trouble: asyncio.Event = field(default_factory=asyncio.Event)  # a request could not reach it
    solo_in_flight: int = 0  # suspects of poison in flight here (0 or 1): nothing else may start here meanwhile
    boarded_since_start: int = 0  # items dispatched to its current server process since it started
    held: int = 0  # jobs a recovery has taken off the replica and not yet put back (nor recorded)
    doubted: float | None = None  # the silence (by its last sign of life) a probe found not to be a wedge
    retired: bool = False

    @property
    def serving(self) -> bool:
        return self.gate.is_set() and not self.retired
