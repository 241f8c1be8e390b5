"""Section 1: client overhead. The same N requests against one mock server, from a bare aiohttp loop, from
hallurun as users run it (checkpoint, live display and streaming on), and from HalluLens' upstream client.

hallurun talks to the bench's server through `--server-url`, so all clients hit the same process, and its time
is its request phase (first `server_started` event to the last write of `results.jsonl`): interpreter start,
dataset scan and the final `generation.jsonl` are left out, as the baselines' timers leave out their own start.
Clients take turns within each repetition so that the machine's noise falls on all of them alike, and the server
runs on a core of its own, apart from the client measured (`common.cores_apart`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baselines import UPSTREAM_THREADS
from bench.common import MODEL, PYTHON, cores_apart, median, mock_server, run_hallurun, run_json, shown, write_dataset


@dataclass(frozen=True)
class OverheadPlan:
    items: int  # per run, at most
    seconds: float  # runs with latency get fewer items: what the bare loop could serve in this many seconds
    upstream_items: int  # the upstream client manages ~60 requests/s here, so it gets a smaller share
    reps: int
    latencies: tuple[float, ...] = (0.0, 0.05)
    concurrencies: tuple[int, ...] = (64, 256)
    timeout_s: float = 300.0

    def items_for(self, latency: float, concurrency: int) -> int:
        if latency == 0:
            return self.items
        return min(self.items, round(concurrency / latency * self.seconds, -2))


@dataclass(frozen=True)
class Measure:
    rps: float
    cpu_us: float  # the client's CPU time per request, all its threads: what it costs whatever the server does
    cmd: list[str]


def _baseline(client: str, url: str, dataset: Path, concurrency: int, limit: int | None, timeout: float) -> Measure:
    cmd = [PYTHON, "-m", "bench.baselines", client, "--url", url, "--dataset", str(dataset),
           "--concurrency", str(concurrency)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    result = run_json(cmd, timeout)
    if result["errors"]:
        raise RuntimeError(f"{shown(cmd)}: {result['errors']} requests failed")
    return Measure(result["ok"] / result["elapsed_s"], result["cpu_s"] / result["ok"] * 1e6, cmd)


def _hallurun(url: str, dataset: Path, concurrency: int, items: int, run_dir: Path, timeout: float) -> Measure:
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["inference", "--task", str(dataset), "--model", MODEL, "--server-url", url,
            "--concurrency", str(concurrency), "--run-dir", str(run_dir)]
    run = run_hallurun(args, run_dir, timeout=timeout, sample_every=0.05)
    if run.returncode != 0:
        raise RuntimeError(f"{shown(run.cmd)} exited {run.returncode}; see {run_dir}.output.log")
    measure = Measure(items / run.request_phase_s, run.request_phase_cpu_s / items * 1e6, run.cmd)
    shutil.rmtree(run_dir)  # a run directory per repetition would fill the disk at scale
    return measure


def overhead(plan: OverheadPlan, work: Path) -> list[dict[str, Any]]:
    """Rows per (latency, concurrency, client): median requests/s and the median ratio to the bare loop."""
    rows: list[dict[str, Any]] = []
    for latency in plan.latencies:
        with cores_apart() as server_cpus, \
                mock_server(["--latency", f"{latency:g}"], work / "overhead-server.log", server_cpus) as url:
            upstream: list[Measure] = []
            for concurrency in plan.concurrencies:
                items = int(plan.items_for(latency, concurrency))
                dataset = work / f"overhead-{items}.jsonl"
                if not dataset.exists():
                    write_dataset(dataset, items)
                measured: dict[str, list[Measure]] = {"bare": [], "hallurun": []}
                for _ in range(plan.reps):
                    measured["bare"].append(_baseline("bare", url, dataset, concurrency, None, plan.timeout_s))
                    measured["hallurun"].append(_hallurun(url, dataset, concurrency, items, work / "overhead-run",
                                                          plan.timeout_s))
                    if concurrency == plan.concurrencies[0]:  # upstream has 64 threads whatever the concurrency
                        upstream.append(_baseline("upstream", url, dataset, UPSTREAM_THREADS, plan.upstream_items,
                                                  plan.timeout_s))
                server = f"hallurun mock-server --port {url.rsplit(':', 1)[1]} --model {MODEL} --latency {latency:g}"
                bare = measured["bare"]
                for client, runs in measured.items():
                    rows.append(_row(latency, concurrency, client, items, runs, bare, server, work))
                if concurrency == plan.concurrencies[0]:
                    rows.append(_row(latency, UPSTREAM_THREADS, "upstream", plan.upstream_items, upstream, bare,
                                     server, work))
    return rows


def _row(latency: float, concurrency: int, client: str, items: int, runs: list[Measure], bare: list[Measure],
         server: str, work: Path) -> dict[str, Any]:
    # Repetition i of each client ran back to back, so their ratio is taken pairwise before the median.
    ratios = [run.rps / base.rps for run, base in zip(runs, bare, strict=True)]
    return {"latency_s": latency, "concurrency": concurrency, "client": client, "items": items,
            "reps": len(runs), "rps": median([r.rps for r in runs]), "rps_all": [r.rps for r in runs],
            "ratio_to_bare": median(ratios), "cpu_us_per_request": median([r.cpu_us for r in runs]),
            "reproduce": [server, shown(runs[0].cmd, work)]}
