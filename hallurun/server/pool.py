"""The pool's plan: which servers a run drives, each a replica supervised alone.

A launched pool is `--replicas N` servers (or one per visible GPU), each with its own port, process group, log and
`CUDA_VISIBLE_DEVICES`; an external pool is one replica per `--server-url`. vLLM's docs say that for a dense model
data-parallel servers can be fully independent: one hung engine then stops only its own share of the run, and a
restart reloads one server, not all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hallurun.config import ServerSpec
from hallurun.server import gpus

SERVER_LOG = "server.log"


@dataclass(frozen=True)
class Slot:
    """One replica's place in the pool: its index, the pool's size, its URL (external) or GPUs (launched)."""

    index: int = 0
    count: int = 1
    url: str | None = None  # an external replica's server
    cuda_visible_devices: str | None = None  # a launched replica's GPUs; None: inherited (none on a CPU machine)
    cpus: tuple[int, ...] = ()  # a replica of a pool without GPUs: the cores its engine's threads are bound to

    @property
    def log_name(self) -> str:
        """`server.log` for a single server, `server-<i>.log` for each replica of a pool."""
        return SERVER_LOG if self.count == 1 else f"server-{self.index}.log"


def slots(spec: ServerSpec, environ: Mapping[str, str]) -> tuple[Slot, ...]:
    """The replicas of `spec`: one per external URL, else the GPU plan (ConfigError when it does not fit)."""
    if spec.urls:
        return tuple(Slot(i, len(spec.urls), url=url) for i, url in enumerate(spec.urls))
    placements = gpus.plan(spec.replicas, spec.gpus_per_replica, gpus.visible_gpus(environ))
    if len(placements) == 1 and spec.gpus_per_replica == 1:
        # One server of the default size sees every GPU, as before pools: `-- --tensor-parallel-size 8` still
        # spreads it over all eight.
        return (Slot(),)
    shares = cpu_shares(len(placements), sorted(os.sched_getaffinity(0))) if not any(p.gpus for p in placements) \
        else [()] * len(placements)
    return tuple(Slot(p.index, len(placements), cuda_visible_devices=p.cuda_visible_devices, cpus=share)
                 for p, share in zip(placements, shares, strict=True))


def cpu_shares(replicas: int, cores: list[int]) -> list[tuple[int, ...]]:
    """The cores of a pool without GPUs, split into one contiguous share per replica (a core each, in turn, when
    there are fewer cores than replicas). vLLM's CPU build binds its threads to the cores it sees, the same ones
    in every process: two replicas on a 2-core machine both took core 0, and the second never finished starting
    while the first served (measured). Each gets a share of its own instead."""
    if len(cores) < replicas:
        return [(cores[i % len(cores)],) for i in range(replicas)]
    size = len(cores) // replicas
    return [tuple(cores[i * size:(i + 1) * size]) for i in range(replicas)]
