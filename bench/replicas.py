"""Section 6: a pool of server replicas (`hallurun inference --server mock|vllm --replicas N`).

Four parts, every figure a ratio or a difference of runs of this one section:

- `scaling`: 1, 2 and 4 mock replicas, each an engine with a fixed batch (`--max-concurrency K`) and a per-token
  pace (`--token-rate`), hallurun at `--concurrency` 2K per replica so that every batch stays full. The workload is
  latency-bound on purpose: on two shared cores the mocks compete with the client, so the token rate is low and
  the answers many tokens long, and the engines, not the CPU, set the pace (each row says how much of a core the
  client used). Throughput is the steady rate (results between the 10th and 90th percentile of `done_at`), with
  N replicas against one; client CPU per request is read from `/proc/<hallurun>/stat` (utime + stime of
  hallurun's own process, never its children, the mocks) over the request phase.
- `wedge`: 1, 2 and 4 replicas with a cold start (`startup-delay`), replica 0 wedged mid-run
  (`--replica-fault 0:hang-after:M`), against a clean run of the same pool; and one replica with `--fixed-window`
  (the old 30 s window) beside the adaptive one. Each faulty run is launched beside its clean twin, all of them at
  once (latency-bound: the client CPU of all of them together is a fraction of a core), so the cold starts are
  paid once. `M` and the item counts are sized from one replica's rate as calibrated first, so that the
  wedge comes after the window has warmed up (10 s, 32 first bytes) and the relaunched replica rejoins before the
  run ends without reaching `M` again.
- `engine`: 2 vLLM (CPU) replicas of the tiny model, a serving replica's engine core SIGSTOPped mid-run (its API
  server keeps answering /health), against a clean 2-replica run. On two cores both replicas pin their model worker
  to core 0, and the second does not finish its start while the first serves: the one stopped is the one serving.
  Slow (two vLLM cold starts per run): skipped in `--quick`.
- `bursts`: many requests against healthy but bursty replicas (`burst:MAX_S:EVERY_S`: the whole engine pauses
  now and then; `prefill:S`: a long prompt's first token is late), with a mix of short and long prompts, and once
  with short prompts and longer pauses: the restarts (none is due) and the windows the display showed.

`time lost` is the faulty run's request phase (first `server_started` to the last result) less the clean run's; the
process wall times are recorded beside it, but they carry the spread of the cold starts (1-2 s for mocks that start
all at once, several seconds for vLLM).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    MODEL,
    REPO,
    HallurunRun,
    exactly_once,
    hallurun_cmd,
    read_jsonl,
    record,
    run_hallurun,
    shown,
)

STALL_CEILING_S = 30.0  # hallurun's default --stall-timeout: the window's ceiling, and the fixed window
WINDOW_TARGET_S = 5.0  # the adaptive window, as found in a hang_detected event, at most this by default
WEDGE_MARGIN_S = 2.0  # the wedge target: (window + relaunch) / N + this
SCALING_TARGET = 0.9  # throughput with N replicas at least this x N x the throughput with one
CPU_GROWTH_LIMIT = 1.10  # client CPU per request with N replicas at most this x with one (noise allowed)
WARM_S = 10.0  # hallurun.wire.watchdog.WARM_SPAN_S: before this much traffic the window is the ceiling


@dataclass(frozen=True)
class BurstCase:
    """One run of the `bursts` part: the mock's faults, every `long_every`-th prompt long (0: none)."""

    name: str
    faults: tuple[str, ...]
    long_every: int
    items: int
    concurrency: int


# The brief's case: pauses of 1.5-3 s every 4-12 s, and every 10th prompt 2,000-8,000 characters long (1-4 s of
# prefill at 0.5 s per 1,000). And one with short prompts only and longer pauses (3-6 s every 10-30 s; the first,
# at --seed 0, 12.6 s after the start, after the window's warm-up): pauses a healthy engine has (a preemption
# storm, another tenant's long prefill), still far under the 30 s ceiling.
MIXED = BurstCase("mixed prompts", ("burst:3:8", "prefill:0.5"), 10, 20_000, 128)
SHORT = BurstCase("short prompts, longer pauses", ("burst:6:20",), 0, 10_000, 64)


@dataclass(frozen=True)
class ReplicasPlan:
    # The engine each mock replica pretends to be, for `scaling` and `wedge`.
    batch: int = 8  # --max-concurrency K
    token_rate: float = 40.0  # --token-rate: tokens per second of each stream
    concurrency: int = 16  # hallurun's --concurrency, per replica: 2K keeps every batch full
    counts: tuple[int, ...] = (1, 2, 4)
    # scaling: each run lasts about this long (the items are this many seconds at the measured rate x N)
    scaling_s: float = 20.0
    # wedge: the cold start of every server process, when replica 0 wedges, how long each clean run lasts
    cold_start_s: float = 30.0
    wedge_at_s: float = 14.0  # after this much serving (hang-after: this x the per-replica rate)
    wedge_run_s: tuple[tuple[int, float], ...] = ((1, 24.0), (2, 38.0), (4, 46.0))
    # engine: two vLLM replicas; 0 items skips the part
    engine_items: int = 3000
    engine_concurrency: int = 64  # per replica, as the engine section's c64 row
    engine_max_tokens: int = 64
    engine_stop_after_s: float = 15.0  # of a replica serving, then its engine core is stopped
    # bursts: each case one run on `burst_replicas` replicas
    bursts: tuple[BurstCase, ...] = (MIXED, SHORT)
    burst_replicas: int = 2
    burst_token_rate: float = 50.0
    # judge: `hallurun eval --judge` (the mock as the judge, with this cold start) on a PreciseWikiQA run
    judge_items: int = 60
    judge_cold_start_s: float = 20.0
    timeout_s: float = 600.0


# -- datasets -------------------------------------------------------------------------------------------------

FILLER = ("The river runs past the old mill and under the stone bridge, where the north road meets the market "
          "square and the long song of the water is heard through the night. ")


def write_mixed(path: Path, n: int, long_every: int) -> list[str]:
    """`n` items as `bench.common.write_dataset`'s, every `long_every`-th with 2,000-8,000 characters of context
    before its question (a long prompt, whose prefill the mock makes slow)."""
    ids = []
    with path.open("wb") as fh:
        for i in range(n):
            item = record(i)
            if long_every and i % long_every == long_every - 1:
                chars = 2000 + (i * 7919) % 6001
                item["prompt"] = (FILLER * (chars // len(FILLER) + 1))[:chars] + "\n" + item["prompt"]
            fh.write(orjson.dumps(item) + b"\n")
            ids.append(item["id"])
    return ids


def write_plain(path: Path, n: int) -> list[str]:
    return write_mixed(path, n, 0)


# -- reading a run --------------------------------------------------------------------------------------------


def steady_rps(run_dir: Path) -> float | None:
    """Results per second between the 10th and the 90th percentile of their `done_at`: the pool's steady rate,
    without the stagger of the replicas' starts nor the tail."""
    done = sorted(float(r["done_at"]) for r in read_jsonl(run_dir / "results.jsonl"))
    if len(done) < 20:
        return None
    a, b = len(done) // 10, len(done) * 9 // 10
    return (b - a) / (done[b] - done[a]) if done[b] > done[a] else None


_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]")
_REPLICA_WINDOW = re.compile(r"replica (\d+): [^\n]*?window (--|[0-9.]+)s")
_SINGLE_WINDOW = re.compile(r"window (--|[0-9.]+)s")


def windows_shown(run: HallurunRun, replicas: int) -> dict[int, list[float]]:
    """Every window the live display showed, per replica, in order (the display redraws 4 times a second)."""
    log = run.run_dir.parent / f"{run.run_dir.name}.output.log"
    if not log.exists():
        return {}
    text = _CONTROL.sub("", log.read_text(errors="replace")).replace("\r", "\n")
    seen: dict[int, list[float]] = {}
    if replicas > 1:
        for index, value in _REPLICA_WINDOW.findall(text):
            if value != "--":
                seen.setdefault(int(index), []).append(float(value))
    else:
        seen[0] = [float(v) for v in _SINGLE_WINDOW.findall(text) if v != "--"]
    return seen


def window_summary(seen: dict[int, list[float]], ceiling: float) -> dict[str, Any]:
    """Per replica: the smallest and largest window once warmed up (below the ceiling), and the last one."""
    out: dict[str, Any] = {}
    for index, values in sorted(seen.items()):
        learned = [v for v in values if v < ceiling]
        out[str(index)] = {"min": min(learned) if learned else None, "max": max(learned) if learned else None,
                           "last": values[-1] if values else None,
                           "frames_at_ceiling": sum(1 for v in values if v >= ceiling), "frames": len(values)}
    return out


def server_log_lines(run_dir: Path, prefix: str) -> list[str]:
    """Lines of every server log of the run (server.log, server-<i>.log), or of the one log named, that start
    with `prefix`."""
    lines = []
    for log in [run_dir] if run_dir.is_file() else sorted(run_dir.glob("server*.log")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if line.startswith(prefix)]
    return lines


def wedges_announced(run_dir: Path) -> int:
    """Wedges the mock itself said it had (`mock: wedged (hang-after) at request N`), over every replica."""
    return len(server_log_lines(run_dir, "mock: wedged ("))


def burst_pauses(run_dir: Path) -> list[float]:
    return [float(line.split()[-2]) for line in server_log_lines(run_dir, "mock: burst pause of")]


def finished(run: HallurunRun) -> bool:
    return run.first("run_finished") is not None and run.returncode == 0 and not run.timed_out


def _check(run: HallurunRun, what: str) -> None:
    if not finished(run):
        raise RuntimeError(f"{what}: {shown(run.cmd)} did not finish (exit {run.returncode}, timed out "
                           f"{run.timed_out}); see {run.run_dir}.output.log")


def _num(value: float) -> str:
    return f"{value:g}"


def _restart_s(run: HallurunRun) -> float | None:
    """From the first hang_detected to the server_restarted after it: stopping and relaunching the server."""
    hang = run.first("hang_detected")
    if hang is None:
        return None
    back = next((e for e in run.events if e["event"] == "server_restarted" and e["t"] >= hang["t"]), None)
    return None if back is None else back["t"] - hang["t"]


# -- 1. scaling -----------------------------------------------------------------------------------------------


def _mock_engine(plan: ReplicasPlan) -> list[str]:
    return ["--max-concurrency", str(plan.batch), "--token-rate", _num(plan.token_rate)]


def _pool_args(dataset: Path, run_dir: Path, replicas: int, concurrency: int, *extra: str) -> list[str]:
    return ["inference", "--task", str(dataset), "--model", MODEL, "--server", "mock", "--replicas", str(replicas),
            "--concurrency", str(concurrency), *extra, "--run-dir", str(run_dir)]


def _reproduce(args: Sequence[str], work: Path) -> str:
    parts = list(args)
    i = parts.index("--run-dir")
    del parts[i:i + 2]
    return shown(["hallurun", *parts], work)


def calibrate(plan: ReplicasPlan, work: Path) -> float:
    """One replica's steady rate, from a short run (sizes the scaling runs)."""
    dataset = work / "replicas-calibrate.jsonl"
    write_plain(dataset, plan.concurrency * 12)
    run_dir = work / "replicas-calibrate"
    run = run_hallurun([*_pool_args(dataset, run_dir, 1, plan.concurrency), "--", *_mock_engine(plan)], run_dir,
                       timeout=plan.timeout_s, kill_on_timeout=True)
    _check(run, "calibration")
    rate = steady_rps(run_dir)
    assert rate is not None
    return rate


def scaling(plan: ReplicasPlan, work: Path, rate_1: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in plan.counts:
        items = round(rate_1 * n * plan.scaling_s)
        dataset = work / f"replicas-scaling-{n}.jsonl"
        write_plain(dataset, items)
        run_dir = work / f"replicas-scaling-{n}"
        args = [*_pool_args(dataset, run_dir, n, plan.concurrency), "--", *_mock_engine(plan)]
        print(f"replicas: scaling, {n} replica(s), {items} items ...", flush=True)
        run = run_hallurun(args, run_dir, timeout=plan.timeout_s, sample_every=0.5, kill_on_timeout=True)
        _check(run, f"scaling with {n} replicas")
        lost, duplicated = exactly_once(run_dir, [record(i)["id"] for i in range(items)])
        phase = run.request_phase_s
        cpu = run.request_phase_cpu_s
        rows.append({"part": "scaling", "replicas": n, "batch": plan.batch, "token_rate": plan.token_rate,
                     "concurrency": plan.concurrency, "items": items, "steady_rps": steady_rps(run_dir),
                     "rps": items / phase, "request_phase_s": phase,
                     "cpu_us_per_request": cpu / items * 1e6, "client_cores": cpu / phase,
                     "restarts": run.count("server_restarted"), "lost": lost, "duplicated": duplicated,
                     "reproduce": [_reproduce(args, work)]})
    one = rows[0]
    for row in rows:
        n = row["replicas"]
        row["speedup"] = row["steady_rps"] / one["steady_rps"]
        row["speedup_whole_run"] = row["rps"] / one["rps"]
        row["speedup_target"] = SCALING_TARGET * n
        row["cpu_ratio"] = row["cpu_us_per_request"] / one["cpu_us_per_request"]
        row["met"] = row["speedup"] >= SCALING_TARGET * n and row["cpu_ratio"] <= CPU_GROWTH_LIMIT
    return rows


# -- 2. a wedge in a pool -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WedgeCase:
    name: str
    replicas: int
    fixed: bool
    wedged: bool
    items: int


def wedge(plan: ReplicasPlan, work: Path, rate_1: float) -> list[dict[str, Any]]:
    hang_after = round(rate_1 * plan.wedge_at_s)
    run_s = dict(plan.wedge_run_s)
    cases: list[_WedgeCase] = []
    for n in plan.counts:
        items = round(rate_1 * n * run_s[n])
        cases += [_WedgeCase(f"clean-{n}", n, False, False, items), _WedgeCase(f"wedged-{n}", n, False, True, items)]
        if n == 1:
            cases.append(_WedgeCase("wedged-1-fixed", 1, True, True, items))
    datasets = {}
    for items in {c.items for c in cases}:
        datasets[items] = work / f"replicas-wedge-{items}.jsonl"
        write_plain(datasets[items], items)
    server = [*_mock_engine(plan), "--fault", f"startup-delay:{_num(plan.cold_start_s)}"]

    def one(case: _WedgeCase) -> tuple[_WedgeCase, HallurunRun, list[str]]:
        run_dir = work / f"replicas-wedge-{case.name}"
        window = ["--fixed-window"] if case.fixed else []
        fault = ["--replica-fault", f"0:hang-after:{hang_after}"] if case.wedged else []
        args = [*_pool_args(datasets[case.items], run_dir, case.replicas, plan.concurrency, *window), "--",
                *server, *fault]
        return case, run_hallurun(args, run_dir, timeout=plan.timeout_s, kill_on_timeout=True), args

    print(f"replicas: wedge, {len(cases)} runs at once (cold start {plan.cold_start_s:g} s, replica 0 wedges after "
          f"{hang_after} requests) ...", flush=True)
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        done = list(pool.map(one, cases))
    runs = {case.name: (case, run, args) for case, run, args in done}
    rows: list[dict[str, Any]] = []
    for case, run, args in done:
        if not case.wedged:
            continue
        _check(run, f"wedge run {case.name}")
        clean_case, clean, _ = runs[f"clean-{case.replicas}"]
        _check(clean, f"clean run {clean_case.name}")
        hang = run.first("hang_detected")
        relaunch = _restart_s(run)
        lost, duplicated = exactly_once(run.run_dir, [record(i)["id"] for i in range(case.items)])
        quiet = None if hang is None else float(hang.get("quiet_s") or hang["window_s"])
        bound = None if quiet is None or relaunch is None else (quiet + relaunch) / case.replicas + WEDGE_MARGIN_S
        # The request phases, not the processes' wall times: all seven runs start at once, and their 15 mocks'
        # imports on two cores put 1-2 s of stagger into the cold starts (30.9 against 32.0 s in one run).
        lost_s = run.request_phase_s - clean.request_phase_s
        window = None if hang is None else hang.get("window_s")
        rows.append({
            "part": "wedge", "replicas": case.replicas, "window": "fixed" if case.fixed else "adaptive",
            "cold_start_s": plan.cold_start_s, "hang_after": hang_after, "items": case.items,
            "clean_s": clean.request_phase_s, "wedged_s": run.request_phase_s, "lost_s": lost_s,
            "clean_wall_s": clean.wall_s, "wedged_wall_s": run.wall_s, "lost_wall_s": run.wall_s - clean.wall_s,
            "window_s": window, "quiet_s": quiet, "relaunch_s": relaunch, "bound_s": bound,
            # The same target with the window in force rather than the silence it took to convict the server.
            "bound_window_s": None if window is None or relaunch is None else
            (window + relaunch) / case.replicas + WEDGE_MARGIN_S,
            "met": bound is not None and lost_s <= bound and (case.fixed or (window or 99) <= WINDOW_TARGET_S),
            "quiet_within_target": quiet is not None and quiet <= WINDOW_TARGET_S,
            "wedges": wedges_announced(run.run_dir), "hangs_detected": run.count("hang_detected"),
            "restarts": run.count("server_restarted"), "clean_restarts": clean.count("server_restarted"),
            "lost": lost, "duplicated": duplicated,
            "first_startup_s": [e["startup_s"] for e in run.events if e["event"] == "server_started"][:case.replicas],
            "reproduce": [_reproduce(args, work)],
        })
    adaptive = next(r for r in rows if r["replicas"] == 1 and r["window"] == "adaptive")
    for row in rows:
        if row["window"] == "fixed":
            row["gain_s"] = row["lost_s"] - adaptive["lost_s"]
    return sorted(rows, key=lambda r: (r["replicas"], r["window"]))


# -- 3. the real engine ---------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_pids(sessions: set[int]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[3]) in sessions:
                pids.append(int(entry.name))
    return pids


def engine_cores(session: int) -> list[int]:
    """The `VLLM::EngineCore` processes of the server whose session `session` leads (vLLM renames the engine's
    process title, as tests/test_vllm.py finds it)."""
    cores = []
    for pid in session_pids({session}):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/comm").read_bytes()
        except OSError:
            continue
        if b"EngineCor" in title:
            cores.append(pid)
    return cores


def _single_server_figure() -> dict[str, Any] | None:
    """hallurun against one vLLM at concurrency 64, from the engine section's last figures, if any."""
    path = REPO / "bench" / "results.json"
    if not path.exists():
        return None
    results = orjson.loads(path.read_bytes())
    row = next((r for r in results.get("sections", {}).get("engine", [])
                if r["client"] == "hallurun" and r["concurrency"] == 64), None)
    if row is None:
        return None
    started = results.get("section_runs", {}).get("engine", {}).get("started")
    return {"rps": row["rps"], "items": row["items"], "max_tokens": row["max_tokens"], "measured": started,
            "from": "bench/results.json, section engine, hallurun at concurrency 64 (one vLLM started by the "
                    "bench under nice 10)"}


def engine(plan: ReplicasPlan, work: Path) -> list[dict[str, Any]]:
    dataset = work / f"replicas-engine-{plan.engine_items}.jsonl"
    write_plain(dataset, plan.engine_items)
    ids = [record(i)["id"] for i in range(plan.engine_items)]
    runs: dict[str, tuple[HallurunRun, list[str], dict[str, Any]]] = {}
    for name in ("clean", "stopped"):
        run_dir = work / f"replicas-engine-{name}"
        args = ["inference", "--task", str(dataset), "--model", "tiny", "--server", "vllm", "--replicas", "2",
                "--concurrency", str(plan.engine_concurrency), "--max-tokens", str(plan.engine_max_tokens),
                "--temperature", "0", "--top-p", "1", "--run-dir", str(run_dir)]
        print(f"replicas: vLLM, 2 replicas, {plan.engine_items} items, {name} ...", flush=True)
        stop: dict[str, Any] = {}
        if name == "stopped":
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                stopper = pool.submit(_stop_engine_core, run_dir, plan.engine_stop_after_s, plan.timeout_s, stop)
                run = run_hallurun(args, run_dir, timeout=plan.timeout_s, kill_on_timeout=True)
                stop["done"] = True
                stopper.result()
        else:
            run = run_hallurun(args, run_dir, timeout=plan.timeout_s, kill_on_timeout=True)
        _cleanup(run)
        runs[name] = (run, args, stop)
    clean, _, _ = runs["clean"]
    run, args, stop = runs["stopped"]
    _check(clean, "vLLM clean run")
    hang = run.first("hang_detected")
    lost, duplicated = exactly_once(run.run_dir, ids)
    clean_lost, clean_duplicated = exactly_once(clean.run_dir, ids)
    phase_clean, phase_stopped = clean.request_phase_s, run.request_phase_s
    starts = {name: {str(e["replica"]): e["startup_s"] for e in r.events if e["event"] == "server_started"}
              for name, (r, _, _) in runs.items()}
    # The replica that was not stopped: when it began to serve, counted from the stop (negative: before it).
    other = None if stop.get("replica") is None else 1 - stop["replica"]
    other_up = next((e["t"] for e in run.events if e["event"] == "server_started" and e["replica"] == other), None)
    return [{
        "part": "engine", "replicas": 2, "items": plan.engine_items, "concurrency": plan.engine_concurrency,
        "max_tokens": plan.engine_max_tokens, "ended": "finished" if finished(run) else f"exit {run.returncode}",
        # The request phases (first replica ready to last result): the cold starts of vLLM vary by several
        # seconds from run to run here (54.5 against 59.0 s in one pair), more than the fault costs.
        "clean_s": phase_clean, "stopped_s": phase_stopped, "lost_s": phase_stopped - phase_clean,
        "clean_wall_s": clean.wall_s, "stopped_wall_s": run.wall_s, "lost_wall_s": run.wall_s - clean.wall_s,
        "stop_took_s": _stop_took(run, stop.get("replica")),
        "clean_rps": plan.engine_items / phase_clean, "startup_s": starts,
        "stopped_at_s": stop.get("at_s"), "stopped_replica": stop.get("replica"),
        "both_serving_at_stop": stop.get("both_serving"),
        "clean_replicas_serving": len({e["replica"] for e in clean.events if e["event"] == "server_started"}),
        "other_serving_after_stop_s": None if other_up is None or "t" not in stop else other_up - stop["t"],
        "window_s": None if hang is None else hang.get("window_s"),
        "quiet_s": None if hang is None else hang.get("quiet_s"), "relaunch_s": _restart_s(run),
        "hangs_detected": run.count("hang_detected"), "restarts": run.count("server_restarted"),
        "clean_restarts": clean.count("server_restarted"), "lost": lost, "duplicated": duplicated,
        "clean_lost": clean_lost, "clean_duplicated": clean_duplicated,
        "failures": len(read_jsonl(run.run_dir / "failures.jsonl")),
        "exactly_once": lost == 0 and duplicated == 0 and clean_lost == 0 and clean_duplicated == 0,
        "single_server": _single_server_figure(),
        "reproduce": [_reproduce(args, work),
                      "kill -STOP <the VLLM::EngineCore process in the serving replica's session> "
                      f"{plan.engine_stop_after_s:g} s after it began to serve"],
    }]


def _stop_engine_core(run_dir: Path, after_s: float, timeout: float, out: dict[str, Any]) -> None:
    """Once a replica has served `after_s` seconds, SIGSTOP the engine core of one that serves: replica 0 if both
    do. (On two cores both vLLM workers pin themselves to core 0, and the replica that starts second may not finish
    its start while the first serves: then the one serving is the one stopped.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not out.get("done"):
        started = {e["replica"]: e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "server_started"}
        serving = sorted(i for i, e in started.items() if time.time() - e["t"] >= after_s)
        if serving and read_jsonl(run_dir / "results.jsonl"):
            target = serving[0]
            cores = engine_cores(started[target]["pid"])
            if cores:
                for core in cores:
                    os.kill(core, signal.SIGSTOP)
                out.update(t=time.time(), replica=target, pids=cores, both_serving=len(started) == 2,
                           at_s=round(time.time() - started[target]["t"], 1))
                return
        time.sleep(0.5)


def _stop_took(run: HallurunRun, replica: int | None) -> float | None:
    """How long hallurun took to stop the stopped replica's server after its wedge (TERM, grace, KILL)."""
    hang = run.first("hang_detected")
    if hang is None:
        return None
    stopped = next((e for e in run.events if e["event"] == "server_stopped" and e.get("replica") == replica
                    and e["t"] >= hang["t"]), None)
    return None if stopped is None else stopped["t"] - hang["t"]


def _cleanup(run: HallurunRun) -> None:
    """Whatever a run's servers left (a stopped engine core outlives nothing hallurun stops, but a bench that
    failed half way might leave one): continued, then killed."""
    sessions = {e["pid"] for e in run.events if e["event"] == "server_started" and e.get("pid")}
    for pid in session_pids(sessions):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


# -- 4. bursts: no false restarts -----------------------------------------------------------------------------


def bursts(plan: ReplicasPlan, work: Path) -> list[dict[str, Any]]:
    rows = []
    for number, case in enumerate(plan.bursts):
        dataset = work / f"replicas-bursts-{number}.jsonl"
        ids = write_mixed(dataset, case.items, case.long_every)
        run_dir = work / f"replicas-bursts-{number}"
        faults = [arg for fault in case.faults for arg in ("--fault", fault)]
        args = [*_pool_args(dataset, run_dir, plan.burst_replicas, case.concurrency), "--",
                "--token-rate", _num(plan.burst_token_rate), *faults]
        print(f"replicas: bursts, {case.name}: {case.items} items on {plan.burst_replicas} replicas ...", flush=True)
        run = run_hallurun(args, run_dir, timeout=plan.timeout_s, kill_on_timeout=True)
        _check(run, f"bursts ({case.name})")
        lost, duplicated = exactly_once(run_dir, ids)
        pauses = burst_pauses(run_dir)
        started = run.first("server_started")
        hangs = [{**{k: e.get(k) for k in ("replica", "quiet_s", "window_s", "tokens_flat_s")},
                  "after_s": None if started is None else round(e["t"] - started["t"], 1)}
                 for e in run.events if e["event"] == "hang_detected"]
        windows = window_summary(windows_shown(run, plan.burst_replicas), STALL_CEILING_S)
        learned = [w for w in windows.values() if w["min"] is not None]
        restarts = run.count("server_restarted")
        rows.append({
            "part": "bursts", "case": case.name, "replicas": plan.burst_replicas, "items": case.items,
            "long_prompts": sum(1 for i in range(case.items)
                                if case.long_every and i % case.long_every == case.long_every - 1),
            "faults": list(case.faults), "concurrency": case.concurrency, "token_rate": plan.burst_token_rate,
            "wall_s": run.wall_s, "rps": case.items / run.request_phase_s,
            # Every replica's mock pauses on the same schedule (the same --seed): counted once.
            "pauses": len(server_log_lines(run_dir / "server-0.log", "mock: burst pause of"))
            if plan.burst_replicas > 1 else len(pauses),
            "longest_pause_s": max(pauses, default=None),
            "restarts": restarts, "hangs_detected": len(hangs), "hangs": hangs,
            "first_false_wedge": None if not hangs else
            f"{hangs[0]['after_s']} s in: quiet {hangs[0]['quiet_s']} s, window {hangs[0]['window_s']} s",
            "requeued": sum(e.get("requeued", 0) for e in run.events if e["event"] == "server_restarted"),
            "retried": sum(1 for r in read_jsonl(run_dir / "results.jsonl") if r.get("attempts", 1) > 1),
            "window_min_s": min((w["min"] for w in learned), default=None),
            "window_max_s": max((w["max"] for w in learned), default=None), "windows": windows,
            "lost": lost, "duplicated": duplicated, "met": restarts == 0,
            "reproduce": [_reproduce(args, work)],
        })
    return rows


def judge(plan: ReplicasPlan, work: Path) -> list[dict[str, Any]]:
    """`hallurun eval --judge` on a PreciseWikiQA run: the judge's launches (from the stages' events) against its
    stages, and the cold starts a launch per stage (before the server lived for the command) would have added."""
    run_dir = work / "replicas-judge-run"
    print(f"replicas: judge, eval of {plan.judge_items} PreciseWikiQA answers ...", flush=True)
    answered = run_hallurun(["inference", "--task", "precisewikiqa", "--model", "m", "--server", "mock", "--limit",
                             str(plan.judge_items), "--run-dir", str(run_dir)], run_dir, timeout=plan.timeout_s)
    _check(answered, "judge (the run to evaluate)")
    args = ["eval", str(run_dir), "--judge", "judge-model", "--judge-server", "mock", "--",
            "--fault", f"startup-delay:{_num(plan.judge_cold_start_s)}"]
    began = time.monotonic()
    done = subprocess.run(hallurun_cmd(*args), cwd=work, capture_output=True, text=True, timeout=plan.timeout_s)
    wall = time.monotonic() - began
    if done.returncode not in (0, 1):
        raise RuntimeError(f"judge: hallurun eval exited {done.returncode}: {done.stderr[-400:]}")
    stages = sorted(d for d in (run_dir / "eval" / "judge-model").iterdir() if d.is_dir())
    starts = [e for d in stages for e in read_jsonl(d / "events.jsonl") if e.get("event") == "server_started"]
    cold = max((e.get("startup_s") or 0.0 for e in starts), default=0.0)
    return [{"part": "judge", "items": plan.judge_items, "stages": len(stages), "launches": len(starts),
             "cold_start_s": cold, "wall_s": wall, "launches_per_stage_would_add_s": (len(stages) - len(starts)) * cold,
             "met": len(starts) == 1, "reproduce": [shown(["hallurun", *args], work)]}]


# -- the section ----------------------------------------------------------------------------------------------


def replicas(plan: ReplicasPlan, work: Path) -> list[dict[str, Any]]:
    rate_1 = calibrate(plan, work)
    print(f"replicas: one mock replica serves {rate_1:.1f} req/s (K {plan.batch}, {plan.token_rate:g} tokens/s, "
          f"concurrency {plan.concurrency})", flush=True)
    rows = scaling(plan, work, rate_1)
    rows += wedge(plan, work, rate_1)
    rows += bursts(plan, work)
    rows += judge(plan, work)
    if plan.engine_items:
        try:
            rows += engine(plan, work)
        except (RuntimeError, OSError, KeyError, AssertionError) as exc:  # the mock parts' figures stay
            print(f"replicas: the vLLM part failed: {exc}", flush=True)
            rows.append({"part": "engine", "replicas": 2, "items": plan.engine_items, "error": str(exc)})
    else:
        print("replicas: the vLLM part skipped in --quick (four vLLM cold starts); run `python -m bench.run "
              "--section replicas` for it", flush=True)
    return rows
