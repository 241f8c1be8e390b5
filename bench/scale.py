"""Section 4: scale. A long run against the mock (memory over time, throughput at the start against the end),
and `resume` over a results file of a million lines (how long until the first new request is answered).

hallurun uses `--server-url` here, so the RSS measured (wait4's peak, and /proc samples during the run) is the
client's alone. The memory a run may not escape is its index of settled ids; `id_index_mb` measures what a set
of that many such ids costs in this interpreter, for comparison with the RSS the run grew by.
"""

from __future__ import annotations

import os
import shutil
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import MODEL, Sample, mock_server, record, run_hallurun, shown, write_dataset


@dataclass(frozen=True)
class ScalePlan:
    items: int  # the long run
    resume_lines: int  # results already on disk when resume starts
    timeout_s: float = 900.0


NEW_ON_RESUME = 10
GENERATION = ("The bridge was first known in the year of the long song, when the people of the north city "
              "built it of old stone; it is known for its light in the river. ") * 2  # a ~300-character answer


def id_index_mb(n: int) -> float:
    """What a set of `n` ids like the dataset's costs, as hallurun's checkpoint keeps them."""
    tracemalloc.start()
    ids = {f"q-{i:07d}" for i in range(n)}
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del ids
    return size / 2**20


def _when(samples: list[Sample], done: int) -> float:
    """The wall-clock time at which `done` results were on disk, interpolated between samples."""
    before = samples[0]
    for sample in samples:
        if sample.results >= done:
            if sample.results == before.results:
                return sample.t
            return before.t + (sample.t - before.t) * (done - before.results) / (sample.results - before.results)
        before = sample
    raise ValueError(f"never {done} results in {len(samples)} samples")


def _rss_at(samples: list[Sample], done: int) -> float:
    return next(s.rss_mb for s in samples if s.results >= done)


def long_run(plan: ScalePlan, work: Path) -> dict[str, Any]:
    dataset = work / "scale.jsonl"
    write_dataset(dataset, plan.items, reference=True)
    run_dir = work / "scale-run"
    with mock_server(["--latency", "0"], work / "scale-server.log") as url:
        args = ["inference", "--task", str(dataset), "--model", MODEL, "--server-url", url, "--run-dir", str(run_dir)]
        run = run_hallurun(args, run_dir, timeout=plan.timeout_s, sample_every=0.1)
    if run.returncode != 0:
        raise RuntimeError(f"{shown(run.cmd)} exited {run.returncode}; see {run_dir}.output.log")
    started = run.first("server_started")
    assert started is not None
    last_result = run.requests_ended
    tenth = plan.items // 10
    samples = [Sample(started["t"], 0.0, 0, 0.0), *run.samples]
    early, late = _rss_at(samples, tenth), _rss_at(samples, plan.items - tenth)
    result = {
        "items": plan.items, "request_phase_s": run.request_phase_s,
        "rps_overall": plan.items / run.request_phase_s,
        "rps_first_10pct": tenth / (_when(samples, tenth) - started["t"]),
        "rps_last_10pct": tenth / (last_result - _when(samples, plan.items - tenth)),
        # CPU per request in the same two stretches: a client that got slower per request, or a busier machine?
        "cpu_us_first_10pct": (run.cpu_at(_when(samples, tenth)) - run.cpu_at(started["t"])) / tenth * 1e6,
        "cpu_us_last_10pct": (run.cpu_at(last_result) - run.cpu_at(_when(samples, plan.items - tenth))) / tenth * 1e6,
        "rss_at_10pct_mb": early, "rss_at_90pct_mb": late,
        "rss_max_during_requests_mb": max(s.rss_mb for s in run.samples if s.t <= last_result),
        "peak_rss_mb": run.peak_rss_mb, "growth_10_to_90pct_mb": late - early,
        "growth_bytes_per_item": (late - early) * 2**20 / (plan.items - 2 * tenth),
        "id_index_mb": id_index_mb(plan.items),
        "generation_jsonl_s": run.first("run_finished")["t"] - last_result,  # type: ignore[index]
        "reproduce": [f"hallurun mock-server --port {url.rsplit(':', 1)[1]} --model {MODEL} --latency 0",
                      shown(run.cmd, work)],
    }
    shutil.rmtree(run_dir)
    return result


def _write_results(path: Path, n: int) -> None:
    """`n` result lines as hallurun writes them: the input fields, then what came back."""
    with path.open("wb") as fh:
        for i in range(n):
            item = record(i, reference=True)
            fh.write(orjson.dumps({**item, "generation": GENERATION, "finish_reason": "stop", "prompt_tokens": 21,
                                   "completion_tokens": 60, "latency_s": 0.0712, "attempts": 1}) + b"\n")


def resume_scan(plan: ScalePlan, work: Path) -> dict[str, Any]:
    """A real run directory (from a small run), then a dataset of N+10 items and N results put in its place."""
    dataset = work / "resume.jsonl"
    run_dir = work / "resume-run"
    with mock_server(["--latency", "0"], work / "resume-server.log") as url:
        write_dataset(dataset, NEW_ON_RESUME, reference=True)
        seed = run_hallurun(["inference", "--task", str(dataset), "--model", MODEL, "--server-url", url,
                             "--run-dir", str(run_dir)], run_dir, timeout=120)
        if seed.returncode != 0:
            raise RuntimeError(f"{shown(seed.cmd)} exited {seed.returncode}")
        write_dataset(dataset, plan.resume_lines + NEW_ON_RESUME, reference=True)
        _write_results(run_dir / "results.jsonl", plan.resume_lines)
        for name in ("generation.jsonl", "events.jsonl"):
            (run_dir / name).unlink()
        os.sync()  # so the resume reads from the page cache, not against the writeback of what was just written
        run = run_hallurun(["resume", str(run_dir), "--force"], run_dir, timeout=plan.timeout_s)
    if run.returncode != 0:
        raise RuntimeError(f"{shown(run.cmd)} exited {run.returncode}; see {run_dir}.output.log")
    resumed, started = run.first("run_resumed"), run.first("server_started")
    assert resumed is not None and started is not None
    first_new = (run_dir / "results.jsonl").stat().st_mtime  # the ten new results go in one batch
    result = {
        "lines": plan.resume_lines, "results_mb": (run_dir / "results.jsonl").stat().st_size / 2**20,
        "dataset_mb": dataset.stat().st_size / 2**20,
        "to_first_new_result_s": first_new - run.launched_at,
        "launch_to_resumed_s": resumed["t"] - run.launched_at,  # interpreter, dataset check, checkpoint load
        "resumed_to_server_ready_s": started["t"] - resumed["t"],
        "server_ready_to_first_new_result_s": first_new - started["t"],  # skipping the settled items, 10 requests
        "total_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb,
        "reproduce": [f"hallurun mock-server --port {url.rsplit(':', 1)[1]} --model {MODEL} --latency 0",
                      shown(seed.cmd, work), shown(run.cmd, work)],
    }
    shutil.rmtree(run_dir)
    dataset.unlink()
    return result


def scale(plan: ScalePlan, work: Path) -> list[dict[str, Any]]:
    return [{"part": "long run", **long_run(plan, work)}, {"part": "resume", **resume_scan(plan, work)}]
