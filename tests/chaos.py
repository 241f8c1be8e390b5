"""The chaos engine: seeded fault schedules run against real processes, and the invariants every run must keep.

One `random.Random(seed)` decides a whole `Schedule`: the dataset, the mock server's faults, whether the server is
launched by hallurun (`managed`) or by the suite (`external`: under a restart supervisor, maybe behind the TCP fault
proxy, maybe taken away and brought back), and the interrupts (`kill -9`, Ctrl-C) after which `hallurun resume`
runs until the run is done. `run_schedule` carries a schedule out and returns a `Finished` run: the files and
the facts the invariants need (what each hallurun invocation printed and returned, the wedges, crashes and outages
that really happened). Each invariant is a plain function over a `Finished` that returns its violations.

Replay one seed: `.venv/bin/python tests/chaos_run.py --seed N` (or `CHAOS_START=N CHAOS_SEEDS=1` for
tests/test_chaos.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hallurun.server.mock import GenerationRequest
from tests.conftest import REPO, free_port, mock_health, read_jsonl, server_processes

MODEL = "chaos-model"
TRACEBACK = "Traceback (most recent call last)"
ROUNDS = 10  # invocations (the first and its resumes) before a run that never ends is called stuck
WORK_BUDGET_S = 25.0  # what a schedule's items may take at its own pace, faults aside
INVOCATION_TIMEOUT_S = 150.0  # far beyond any schedule's length on a loaded 2-core machine: past it, "hung"
SIGINT_EXIT_TIMEOUT_S = 60.0  # the server's stop grace is 10 s; a Ctrl-C that takes longer than this is "hung"
ORPHAN_WAIT_S = 30.0  # a killed hallurun's guardian reaps within its 5 s grace; generous for a loaded machine
SERVER_UP_TIMEOUT_S = 30.0
RESTARTS_BUDGET_REASON = "--max-restarts"

# Failure reasons each kind of fault may legitimately cause, once an item has spent all its attempts.
RETRYABLE_REASONS = {
    "error-rate": {"http_500"},
    "rate-limit": {"rate_limited"},
    "stream-error-rate": {"stream_error"},
    "drop-reused": {"connection"},
    "stream-stall": {"stalled"},
    "proxy-reset": {"connection", "incomplete_stream", "bad_stream"},
    "proxy-silent": {"stalled", "request_timeout"},
    "request-timeout": {"request_timeout"},
}


# -- the schedule ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """Something done to the run from outside: after `at_results` results are on disk, or `at_s` seconds into an
    invocation, whichever comes first."""

    kind: str  # kill9 | sigint | sigint2 (two Ctrl-C) | kill_server (managed) | outage (external)
    at_results: int
    at_s: float


@dataclass(frozen=True)
class ProxyRates:
    """The TCP fault proxy's rates (see tests/chaos_proxy.py)."""

    delay: float = 0.0
    trickle: float = 0.0
    reset: float = 0.0
    hold: float = 0.0
    mute: float = 0.0

    def args(self) -> list[str]:
        return [a for name, p in vars(self).items() if p for a in (f"--{name}", f"{p:.3f}")]


@dataclass(frozen=True)
class Schedule:
    """Everything one chaos run does, decided by its seed alone."""

    seed: int
    mode: str  # managed | external
    items: int
    with_ids: bool
    unicode: bool
    long_prompts: int  # how many prompts are tens of kilobytes
    poison: bool  # one prompt wedges the server (mock `poison:TEXT`)
    api: str
    max_tokens: int
    sampling_seed: int | None
    concurrency: int
    stall_timeout: float
    max_attempts: int
    max_restarts: int
    request_timeout: float | None
    latency: float
    token_rate: float
    faults: tuple[str, ...]  # mock --fault specs (poison and stream-stall included)
    proxy: ProxyRates | None  # external only
    api_key: str | None
    restart_delay: float  # external: the supervisor's most seconds before it brings the mock back
    actions: tuple[Action, ...]
    replicas: int = 1  # managed: the pool's size (each replica its own mock process, log and restart budget)
    shards: int = 1  # the run is split into this many shards, run at once in one shared folder, then merged

    @property
    def poison_text(self) -> str:
        return f"POISON-{self.seed}-ZQX"

    @property
    def stall_text(self) -> str:
        return f"STALL-{self.seed}-ZQX"

    @property
    def stalls(self) -> bool:
        return any(f.startswith("stream-stall:") for f in self.faults)

    def fault_kinds(self) -> set[str]:
        kinds = {f.split(":", 1)[0] for f in self.faults}
        if self.proxy and self.proxy.reset:
            kinds.add("proxy-reset")
        if self.proxy and (self.proxy.hold or self.proxy.mute):
            kinds.add("proxy-silent")
        if self.request_timeout is not None:
            kinds.add("request-timeout")
        return kinds

    def replay(self) -> str:
        return f".venv/bin/python tests/chaos_run.py --seed {self.seed}"


def make_schedule(seed: int) -> Schedule:
    """The schedule of `seed`: the same seed always gives the same schedule."""
    rng = random.Random(seed)
    mode = rng.choice(("managed", "external"))
    items = rng.choice((12, 30, 60, 100, 150))  # tens to a few hundred: seconds each on this 2-core machine
    token_rate = rng.choice((0.0, 0.0, 200.0, 60.0, 20.0))
    latency = rng.choice((0.0, 0.0, 0.01, 0.05))
    faults: list[str] = []

    def maybe(p: float) -> bool:
        return rng.random() < p

    concurrency = rng.choice((1, 4, 16, 64))
    if maybe(0.25):
        faults.append(f"error-rate:{rng.uniform(0.02, 0.3):.3f}")
    if maybe(0.2):
        faults.append(f"rate-limit:{rng.uniform(0.02, 0.3):.3f}")
    if maybe(0.2):
        faults.append(f"stream-error-rate:{rng.uniform(0.02, 0.2):.3f}")
    if maybe(0.2):
        faults.append(f"drop-reused:{rng.uniform(0.1, 0.5):.3f}")
    if maybe(0.2):
        # Counts arrivals per process (the readiness probe and retries too): at most a few wedges per run, and
        # more than the concurrency, or a process could wedge with every request still waiting on its latency
        # and the run would never progress.
        low = max(20, items // 2, concurrency + 10)
        faults.append(f"hang-after:{rng.randint(low, low + items)}")
    if maybe(0.15):
        low = max(20, items // 2, concurrency + 10)
        faults.append(f"crash-after:{rng.randint(low, low + items)}")
    poison = maybe(0.12)  # a poison input costs up to five wedges, each a stall timeout plus a restart
    if maybe(0.15):
        faults.append(f"stream-stall:STALL-{seed}-ZQX")
    if maybe(0.04):
        faults.append("no-done")  # a server that ends streams without [DONE]: no item is at fault
    proxy = None
    if mode == "external" and maybe(0.5):
        proxy = ProxyRates(delay=rng.choice((0.0, 0.2)), trickle=rng.choice((0.0, 0.1)),
                           reset=rng.choice((0.0, 0.0, 0.03)), hold=rng.choice((0.0, 0.0, 0.02)),
                           mute=rng.choice((0.0, 0.0, 0.02)))
    actions: list[Action] = []
    kinds = ["kill9", "sigint", "sigint2", "kill_server" if mode == "managed" else "outage"]
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        actions.append(Action(rng.choice(kinds), at_results=rng.randint(0, items), at_s=rng.uniform(0.5, 6.0)))
    if mode == "external" and maybe(0.3):
        actions.append(Action("outage", at_results=rng.randint(0, items), at_s=rng.uniform(0.5, 4.0)))
    schedule = Schedule(
        seed=seed, mode=mode, items=items, with_ids=maybe(0.6), unicode=maybe(0.5),
        long_prompts=rng.choice((0, 0, 0, 1, 3)), poison=poison, api=rng.choice(("chat", "chat", "completions")),
        max_tokens=rng.randint(4, 24), sampling_seed=rng.choice((None, rng.randint(0, 1000))),
        concurrency=concurrency,
        # Far above any silence the faults produce on purpose (latency ≤ 0.05 s, tokens ≥ 60/s, proxy delays
        # ≤ 0.2 s, 4 ms trickle gaps), with room for a loaded machine.
        stall_timeout=rng.choice((3.0, 4.0)), max_attempts=rng.randint(3, 5),
        # A poison input needs up to five restarts; its evidence outlives an invocation (RUN/poison.json), so a
        # budget of 2 gets there a resume at a time, but the suite's rounds are few: keep 10 with poison.
        max_restarts=10 if poison else rng.choice((10, 10, 10, 2)),
        # Sometimes shorter than a slow stream (20 tokens/s): items then fail as request_timeout, as configured.
        request_timeout=rng.choice((None, None, 20.0, round(rng.uniform(0.5, 3.0), 2))),
        latency=latency, token_rate=token_rate, faults=tuple(faults), proxy=proxy,
        api_key=rng.choice((None, None, None, f"key-{seed}-secret")), restart_delay=rng.uniform(0.0, 1.5),
        actions=tuple(actions),
        # Drawn last, so that every earlier draw (and so every older seed's faults) stays as it was.
        replicas=rng.choice((1, 1, 2, 3)) if mode == "managed" else 1,
        # Drawn after the replicas, for the same reason. Managed only: shards sharing one external server would
        # restart it under each other, which is that server's operator's business, not a sharded run's.
        shards=rng.choice((1, 1, 1, 2, 3)) if mode == "managed" else 1)
    return dataclasses.replace(schedule, items=_items_within(schedule, WORK_BUDGET_S))


def _items_within(schedule: Schedule, budget: float) -> int:
    """At most as many items as the schedule's pace gets through in `budget` seconds: slow streams at concurrency
    1, or a request timeout that cuts every attempt, made 150-item runs outlast the harness's patience (seeds 44
    and 127 were reported as hung while they progressed at one item a second)."""
    per_item = schedule.latency + (schedule.max_tokens / schedule.token_rate if schedule.token_rate else 0.0)
    if schedule.request_timeout is not None and schedule.request_timeout < per_item:
        # Every attempt cut at the timeout, with the backoffs between them.
        per_item = schedule.max_attempts * schedule.request_timeout + 0.5 * 2 ** schedule.max_attempts
    if any(f.startswith(("error-rate", "rate-limit", "stream-error-rate")) for f in schedule.faults):
        per_item = 1.5 * per_item + 0.3  # retries, some after a Retry-After of 1 s
    fits = int(budget * schedule.concurrency / max(per_item, 1e-3))
    return max(min(schedule.items, 12), min(schedule.items, fits))


# -- the dataset ---------------------------------------------------------------------------------------------------

_UNICODE = ("café", "naïve", "東京タワー", "Ελληνικά", "עברית", "emoji 🦀🔥", "zero\u200bwidth", "e\u0301", "𝔘𝔫𝔦",
            "line\u2028sep", "quote \" and \\ back")


def make_dataset(schedule: Schedule, path: Path) -> list[dict[str, Any]]:
    """Write the schedule's dataset and return its records in file order."""
    rng = random.Random(f"data-{schedule.seed}")
    records = []
    used: set[str] = set()
    long_at = set(rng.sample(range(schedule.items), min(schedule.long_prompts, schedule.items)))
    poison_at = rng.randrange(schedule.items) if schedule.poison else None
    stall_at = rng.randrange(schedule.items)
    for i in range(schedule.items):
        words = [rng.choice(("what", "is", "the", "capital", "river", "born", "year", "of", "who", "wrote"))
                 for _ in range(rng.randint(3, 12))]
        if schedule.unicode:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_UNICODE))
        prompt = f"Q{i}: " + " ".join(words) + "?"
        if i in long_at:
            prompt += " " + " ".join(rng.choice(("lorem", "ipsum", "dolor", "sit", "amet")) for _ in range(6000))
        if i == poison_at:
            prompt += f" {schedule.poison_text}"
        if i == stall_at and schedule.stalls:
            prompt += f" {schedule.stall_text}"
        record: dict[str, Any] = {}
        if schedule.with_ids:
            while (item_id := _random_id(rng, schedule.unicode)) in used:
                pass
            used.add(item_id)
            record["id"] = item_id
        record.update({"prompt": prompt, "answer": str(i), "h_score_cat": i % 10})
        records.append(record)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return records


def _random_id(rng: random.Random, unicode: bool) -> str | int:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randint(0, 10**6)  # integer ids are allowed; the run's id is their string
    if kind == 1 and unicode:
        return f"ид-{rng.randint(0, 10**6)}-{rng.choice(_UNICODE)}"
    return f"q-{rng.randint(0, 10**9):09d}"


def dataset_ids(records: list[dict[str, Any]], positions: list[int] | None = None) -> list[str]:
    """The run's id of each record: its `id`, else its position in the dataset (as hallurun.store.dataset gives
    it; `positions`: where each record sits, for a shard's share of them)."""
    return [str(r.get("id", p)) for p, r in zip(positions or range(len(records)), records, strict=True)]


# -- running a schedule --------------------------------------------------------------------------------------------

@dataclass
class Invocation:
    """One hallurun process: `inference` or a `resume`."""

    command: list[str]
    code: int | None  # None: it hung and was killed
    output: str  # stdout and stderr
    done_by: str | None = None  # the action that ended it (kill9, sigint, sigint2), if any
    hung: str | None = None  # why the suite gave up waiting on it


@dataclass
class Finished:
    """A schedule's run, once the suite has stopped touching it: what the invariants read."""

    schedule: Schedule
    root: Path
    run_dir: Path
    records: list[dict[str, Any]]
    invocations: list[Invocation] = field(default_factory=list)
    server_log: str = ""  # the mock's stderr, every process of it (server.log, or the supervisor's log)
    proxy_log: str = ""
    actions_done: Counter[str] = field(default_factory=Counter)
    orphans: list[str] = field(default_factory=list)  # one line per time marked processes outlived hallurun
    positions: list[int] | None = None  # a shard's: each record's position in the dataset
    parts: list[Finished] = field(default_factory=list)  # a sharded run's shards; its own invocation is the merge

    def ids(self) -> list[str]:
        return dataset_ids(self.records, self.positions)

    def count(self, pattern: str, text: str | None = None) -> int:
        return len(re.findall(pattern, self.server_log if text is None else text, flags=re.M))

    @property
    def wedges(self) -> int:
        return self.count(r"^mock: wedged ")

    @property
    def crashes(self) -> int:
        return self.count(r"^mock: crash-after fault, exiting")

    @property
    def outages(self) -> int:
        return self.count(r"^chaos-supervisor: outage ")

    @property
    def server_starts(self) -> int:
        return self.count(r"^(=== hallurun: starting |chaos-supervisor: start )")

    @property
    def proxy_silences(self) -> int:
        return self.count(r"^proxy: conn \d+ (hold|mute)$", self.proxy_log)

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "events.jsonl")


class _External:
    """The suite's own server: the mock under tests/chaos_supervisor.py, and maybe the fault proxy before it."""

    def __init__(self, schedule: Schedule, root: Path, env: dict[str, str]) -> None:
        self.schedule = schedule
        self.port = free_port()
        self.log = root / "external.log"
        self.proxy_log = root / "proxy.log"
        mock_args = [*_mock_args(schedule)]
        if schedule.api_key:
            mock_args += ["--api-key", schedule.api_key]
        self.supervisor = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "chaos_supervisor.py"), "--port", str(self.port),
             "--log", str(self.log), "--seed", str(schedule.seed), "--restart-delay", f"{schedule.restart_delay:.2f}",
             "--outage-max", "5",  # long enough to outlast a few backoffs, far below the 30 s restart wait
             "--", *mock_args], env=env, cwd=root, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proxy: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        if schedule.proxy is not None:
            listen = free_port()
            with self.proxy_log.open("wb") as out:
                self.proxy = subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "chaos_proxy.py"), "--listen", str(listen), "--target",
                     str(self.port), "--seed", str(schedule.seed), *schedule.proxy.args()],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.url = f"http://127.0.0.1:{listen}"

    def wait_up(self) -> None:
        _wait(lambda: mock_health(f"http://127.0.0.1:{self.port}") == 200, SERVER_UP_TIMEOUT_S, "external mock")

    def outage(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.supervisor.pid, signal.SIGUSR1)

    def bounce(self) -> None:
        """Restart the mock (an outage) and return once the new process answers, not the dying one."""
        starts = self._text().count("chaos-supervisor: start ")
        self.outage()
        _wait(lambda: self._text().count("chaos-supervisor: start ") > starts, SERVER_UP_TIMEOUT_S, "a new mock")
        self.wait_up()

    def _text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wedged_now(self) -> bool:
        """Whether the mock running now has wedged (its start is the log's last `start` line)."""
        text = self._text()
        last = text.rfind("chaos-supervisor: start ")
        return "mock: wedged " in text[last:]

    def stop(self) -> None:
        for proc in (self.proxy, self.supervisor):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _mock_args(schedule: Schedule) -> list[str]:
    args = ["--latency", str(schedule.latency), "--token-rate", str(schedule.token_rate),
            "--seed", str(schedule.seed)]
    faults = list(schedule.faults)
    if schedule.poison:
        faults.append(f"poison:{schedule.poison_text}")
    return args + [a for f in faults for a in ("--fault", f)]


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"chaos harness: {what} not up after {timeout}s")
        time.sleep(0.05)  # polling is the only readiness signal these processes give


def _env(schedule: Schedule) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in list(env):
        if key.startswith(("HALLURUN_", "VLLM_")) or key in {"ENABLE_SERVER_RESTART", "SERVER_RESTART_WAIT_TIME"}:
            del env[key]
    if schedule.api_key:
        env["HALLURUN_API_KEY"] = schedule.api_key
    return env


def inference_command(schedule: Schedule, data: Path, run_dir: Path, server_url: str | None,
                      shard: tuple[int, int] | None = None) -> list[str]:
    """The first invocation's command line (of shard I of N, in the shared `run_dir`, if given)."""
    cmd = [sys.executable, "-m", "hallurun", "inference", "--task", str(data), "--model", MODEL,
           "--api", schedule.api, "--max-tokens", str(schedule.max_tokens), "--run-dir", str(run_dir),
           "--concurrency", str(schedule.concurrency), "--stall-timeout", str(schedule.stall_timeout),
           "--max-attempts", str(schedule.max_attempts), "--max-restarts", str(schedule.max_restarts),
           "--metrics-interval", "1"]
    if schedule.sampling_seed is not None:
        cmd += ["--seed", str(schedule.sampling_seed)]
    if schedule.request_timeout is not None:
        cmd += ["--request-timeout", str(schedule.request_timeout)]
    if shard is not None:
        cmd += ["--shard", f"{shard[0]}/{shard[1]}"]
    if server_url is not None:
        # An external server that is wedged when a resume starts is not hallurun's to restart: give up in 30 s.
        return [*cmd, "--server-url", server_url, "--restart-wait", "30", "--startup-timeout", "30"]
    return [*cmd, "--server", "mock", "--replicas", str(schedule.replicas), "--", *_mock_args(schedule)]


def run_schedule(schedule: Schedule, root: Path) -> Finished:
    """Carry out `schedule` in `root` (a fresh folder) and return the finished run; never raises for what
    hallurun does (that is for the invariants to judge). A sharded schedule runs its shards at once, each through
    its own interrupts and resumes, then merges them."""
    root.mkdir(parents=True, exist_ok=True)
    data, run_dir = root / "data.jsonl", root / "run"
    records = make_dataset(schedule, data)
    finished = Finished(schedule, root, run_dir, records)
    env = _env(schedule)
    external = _External(schedule, root, env) if schedule.mode == "external" else None
    n = schedule.shards
    if n > 1:
        finished.parts = [Finished(schedule, root, run_dir / f"shard-{i}-of-{n}", records[i::n],
                                   positions=list(range(i, len(records), n))) for i in range(n)]
    try:
        if external is not None:
            external.wait_up()
        if not finished.parts:
            _rounds(finished, data, env, external, list(schedule.actions), None)
        else:
            # The schedule's interrupts strike every shard, each its own hallurun with its own servers.
            with ThreadPoolExecutor(max_workers=n) as pool:
                list(pool.map(lambda i: _rounds(finished.parts[i], data, env, None, list(schedule.actions), (i, n)),
                              range(n)))
            if not any(completed(part) for part in finished.parts):
                command = [sys.executable, "-m", "hallurun", "merge", str(run_dir)]
                finished.invocations.append(_invoke(command, root, env, run_dir, [], finished, None, "merge"))
    finally:
        if external is not None:
            external.stop()
            finished.server_log = external.log.read_text(errors="replace") if external.log.exists() else ""
            finished.proxy_log = (external.proxy_log.read_text(errors="replace")
                                  if external.proxy_log.exists() else "")
        else:
            for part in [finished, *finished.parts]:
                # server.log, or server-<i>.log for each replica of a pool: the facts are summed over all of them.
                logs = sorted(part.run_dir.glob("server*.log"))
                part.server_log = "".join(log.read_text(errors="replace") for log in logs)
    return finished


def _rounds(finished: Finished, data: Path, env: dict[str, str], external: _External | None,
            actions: list[Action], shard: tuple[int, int] | None) -> None:
    """The first invocation and its resumes, until the run (or shard) ends or the rounds run out."""
    schedule, run_dir = finished.schedule, finished.run_dir
    for _ in range(ROUNDS):
        if external is not None and external.wedged_now():
            # An operator restarts a wedged external server before running hallurun again (it is not
            # hallurun's to restart at startup); counted with the outages.
            external.bounce()
        if (run_dir / "manifest.json").exists():
            command = [sys.executable, "-m", "hallurun", "resume", str(run_dir)]
            if shard is not None and len(finished.invocations) % 2:  # the other spelling of a shard's resume
                command = [*command[:-1], str(run_dir.parent), "--shard", f"{shard[0]}/{shard[1]}"]
        else:
            command = inference_command(schedule, data, run_dir if shard is None else run_dir.parent,
                                        external.url if external else None, shard)
        tag = "" if shard is None else f"shard{shard[0]}-"
        invocation = _invoke(command, finished.root, env, run_dir, actions, finished, external, tag)
        finished.invocations.append(invocation)
        _check_orphans(finished, len(finished.invocations))
        if invocation.hung or not _should_resume(invocation, run_dir):
            break


def _should_resume(invocation: Invocation, run_dir: Path) -> bool:
    """After our interrupt, or an exit 3 (judged later), the run goes on with `resume`."""
    if invocation.done_by in {"kill9", "sigint", "sigint2"} and invocation.code not in (0, 1):
        return True
    return invocation.code == 3


def _invoke(command: list[str], root: Path, env: dict[str, str], run_dir: Path, actions: list[Action],
            finished: Finished, external: _External | None, tag: str = "") -> Invocation:
    """Run one hallurun process, doing the due actions to it; return how it ended."""
    n = len(finished.invocations) + 1
    out_path = root / f"hallurun-{tag}{n}.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    began = time.monotonic()
    invocation = Invocation(command, None, "")
    deadline = began + INVOCATION_TIMEOUT_S
    results = run_dir / "results.jsonl"
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            invocation.hung = f"invocation {n} still running after {INVOCATION_TIMEOUT_S:.0f}s"
            break
        if actions and invocation.done_by is None:
            action = actions[0]
            lines = _count_lines(results)
            if lines >= action.at_results or now - began >= action.at_s:
                actions.pop(0)
                finished.actions_done[action.kind] += 1
                ended = _act(action, proc, run_dir, external)
                if ended:
                    invocation.done_by = action.kind
                    deadline = time.monotonic() + SIGINT_EXIT_TIMEOUT_S
        time.sleep(0.02)  # polling: the run's files and the process are all there is to watch
    if invocation.hung:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()
    invocation.code = None if invocation.hung else proc.returncode
    invocation.output = out_path.read_text(errors="replace")
    return invocation


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _act(action: Action, proc: subprocess.Popen[bytes], run_dir: Path, external: _External | None) -> bool:
    """Do `action`; True if it ends the hallurun process."""
    with contextlib.suppress(ProcessLookupError):
        if action.kind == "kill9":
            proc.kill()
            return True
        if action.kind in {"sigint", "sigint2"}:
            proc.send_signal(signal.SIGINT)
            if action.kind == "sigint2":
                time.sleep(0.3)  # a user pressing Ctrl-C twice: the second press while the first is being handled
                proc.send_signal(signal.SIGINT)
            return True
        if action.kind == "kill_server":
            started = [e for e in read_jsonl(run_dir / "events.jsonl") if e.get("event") == "server_started"]
            if started and started[-1].get("pid"):
                os.killpg(started[-1]["pid"], signal.SIGKILL)
        elif action.kind == "outage" and external is not None:
            external.outage()
    return False


def _check_orphans(finished: Finished, invocation: int) -> None:
    """After a hallurun process has ended, nothing of its run may stay alive; kill what does, and note it."""
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while (alive := server_processes(finished.run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive:
        finished.orphans.append(f"after invocation {invocation}: pids {alive} still alive {ORPHAN_WAIT_S:.0f}s later")
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the invariants ------------------------------------------------------------------------------------------------
# Each takes a finished run and returns one line per violation.

def _failures(run: Finished) -> list[dict[str, Any]]:
    return read_jsonl(run.run_dir / "failures.jsonl")


def _results(run: Finished) -> list[dict[str, Any]]:
    return read_jsonl(run.run_dir / "results.jsonl")


def completed(run: Finished) -> list[str]:
    """The run ended (exit 0 or 1) within the suite's rounds, and no invocation hung."""
    found = [f"hung: {i.hung}" for i in run.invocations if i.hung]
    last = run.invocations[-1] if run.invocations else None
    if not found and (last is None or last.code not in (0, 1)):
        found.append(f"not finished after {len(run.invocations)} invocations (last exit {last and last.code})")
    return found


def exactly_once(run: Finished) -> list[str]:
    """Every dataset id exactly once across results.jsonl and failures.jsonl: never twice, never in both."""
    if completed(run):
        return []  # an unfinished run is reported as such; its missing ids say nothing more
    ids = run.ids()
    results = Counter(str(r.get("id")) for r in _results(run))
    failures = Counter(str(f.get("id")) for f in _failures(run))
    found = []
    if twice := sorted(i for i, c in results.items() if c > 1):
        found.append(f"{len(twice)} id(s) twice in results.jsonl: {twice[:5]}")
    if twice := sorted(i for i, c in failures.items() if c > 1):
        found.append(f"{len(twice)} id(s) twice in failures.jsonl: {twice[:5]}")
    if both := sorted(set(results) & set(failures)):
        found.append(f"{len(both)} id(s) in both results and failures: {both[:5]}")
    if missing := [i for i in ids if i not in results and i not in failures]:
        found.append(f"{len(missing)} id(s) neither done nor failed: {missing[:5]}")
    if unknown := sorted((set(results) | set(failures)) - set(ids)):
        found.append(f"{len(unknown)} id(s) not in the dataset: {unknown[:5]}")
    return found


def blameless_failures(run: Finished) -> list[str]:
    """No item failed for a reason it did not cause: `poison` only for the poison prompt; a retryable reason only
    if one of the schedule's faults can produce it and the item spent every attempt; nothing else."""
    s = run.schedule
    kinds = s.fault_kinds()
    allowed = set().union(*(RETRYABLE_REASONS.get(k, set()) for k in kinds))
    # The mock stalls the first stream of the stall prompt in every process: whenever that stream is the only
    # one in flight, it is a wedge that this item alone causes, again after each restart, as poison does.
    culprits = [text for text, on in ((s.poison_text, s.poison), (s.stall_text, s.stalls)) if on]
    poison_ids = {item_id for item_id, r in zip(run.ids(), run.records, strict=True)
                  if any(text in r["prompt"] for text in culprits)}
    found = []
    for f in _failures(run):
        reason, item_id, attempts = f.get("reason"), str(f.get("id")), f.get("attempts")
        if reason == "poison":
            if item_id not in poison_ids:
                found.append(f"{item_id} quarantined as poison, but its prompt is not the poison one "
                             f"({'none in the data' if not poison_ids else 'that is ' + next(iter(poison_ids))})")
        elif reason not in allowed:
            found.append(f"{item_id} failed as {reason!r} ({str(f.get('error'))[:160]}); the faults "
                         f"{sorted(kinds) or 'none'} cannot cause that")
        elif not isinstance(attempts, int) or attempts < s.max_attempts:
            found.append(f"{item_id} failed as {reason!r} after {attempts} of {s.max_attempts} attempts")
    return found


def restarts_have_causes(run: Finished) -> list[str]:
    """Restarts (and aborts for a spent budget) ≤ the wedges, crashes and outages that really happened."""
    events = run.events()
    restarts = sum(e.get("event") == "server_restarted" for e in events)
    budget_aborts = sum(e.get("event") == "run_aborted" and RESTARTS_BUDGET_REASON in str(e.get("reason"))
                        for e in events)
    causes = {"wedges": run.wedges, "crashes": run.crashes, "outages": run.outages,
              "servers killed": run.actions_done["kill_server"], "proxy silences": run.proxy_silences,
              # a stalled stream alone in flight is, to any client, a wedge: at most one per server process
              "stalled streams": run.server_starts if run.schedule.stalls else 0}
    if restarts + budget_aborts <= sum(causes.values()):
        return []
    real = ", ".join(f"{k} {v}" for k, v in causes.items() if v) or "none"
    return [f"{restarts} restart(s) + {budget_aborts} abort(s) for the budget, but only {sum(causes.values())} "
            f"real cause(s) ({real}); hang_detected {sum(e.get('event') == 'hang_detected' for e in events)}, "
            f"server_exited {sum(e.get('event') == 'server_exited' for e in events)}"]


def no_traceback(run: Finished) -> list[str]:
    """No Python traceback in hallurun's output or in its events."""
    found = []
    for n, inv in enumerate(run.invocations, 1):
        if TRACEBACK in inv.output:
            at = inv.output.index(TRACEBACK)
            tail = inv.output[at:].strip().splitlines()[-1][:200]
            found.append(f"invocation {n} ({_verb(inv)}) printed a traceback ending in: {tail}")
    events_path = run.run_dir / "events.jsonl"
    if events_path.exists() and TRACEBACK in events_path.read_text(errors="replace"):
        found.append("events.jsonl holds a traceback")
    return found


def exit_codes(run: Finished) -> list[str]:
    """0 = done, none failed; 1 = done with failures; 130 after our Ctrl-C; 3 only for a spent restart budget
    (the restart invariant judges whether those restarts were real); never 2 or anything else."""
    found = []
    failures = _failures(run)
    aborts = [e for e in run.events() if e.get("event") == "run_aborted"]
    for n, inv in enumerate(run.invocations, 1):
        code, what = inv.code, f"invocation {n} ({_verb(inv)})"
        if inv.hung:
            continue
        last = n == len(run.invocations)
        if inv.done_by == "kill9":
            if code not in (-signal.SIGKILL, 0, 1):
                found.append(f"{what}: exit {code} after kill -9")
        elif inv.done_by in {"sigint", "sigint2"}:
            # Death by SIGINT itself (a Ctrl-C before the handlers are installed) is 130 to the shell, too.
            if code not in (130, -signal.SIGINT, 0, 1):
                found.append(f"{what}: exit {code} after Ctrl-C, expected 130{_reason(inv)}")
        elif code == 3:
            if RESTARTS_BUDGET_REASON not in inv.output:
                abort = next((str(a.get("reason")) for a in aborts), "")
                found.append(f"{what}: exit 3 although the server was never away longer than the restart wait "
                             f"({(abort or _reason(inv))[:240]})")
        elif code == 1 and last and not failures:
            found.append(f"{what}: exit 1 with no failed item{_reason(inv)}")
        elif code == 0 and failures and last:
            found.append(f"{what}: exit 0 with {len(failures)} failed item(s)")
        elif code not in (0, 1, 3):
            found.append(f"{what}: exit {code}{_reason(inv)}")
    return found


def no_orphans(run: Finished) -> list[str]:
    """No process carrying the run's marker outlives the hallurun that launched it."""
    return list(run.orphans)


def answers_match_questions(run: Finished) -> list[str]:
    """Each result's answer is the mock's answer to its own prompt, and `generation.jsonl` (written when the run
    completes) lists exactly the results, in dataset order, each next to its own question and answer."""
    if completed(run):
        return []
    s = run.schedule
    manifest = orjson.loads((run.run_dir / "manifest.json").read_bytes())
    sampling = manifest["config"]["sampling"]
    ids = run.ids()
    by_id = dict(zip(ids, run.records, strict=True))
    found = []
    done: dict[str, str] = {}
    for r in _results(run):
        item_id = str(r.get("id"))
        record = by_id.get(item_id)
        if record is None:
            continue  # reported by exactly_once
        if r.get("prompt") != record["prompt"]:
            found.append(f"results.jsonl: {item_id} carries another item's prompt")
        expected = expected_answer(record["prompt"], sampling)
        if r.get("generation") != expected and "no-done" not in s.faults:
            found.append(f"results.jsonl: {item_id}'s generation {str(r.get('generation'))[:60]!r} is not the "
                         f"answer to its prompt ({expected[:60]!r})")
        done[item_id] = str(r.get("generation"))
    path = run.run_dir / "generation.jsonl"
    if not path.exists():
        return [*found, "generation.jsonl missing after a completed run"]
    lines = read_jsonl(path)
    order = [i for i in ids if i in done]
    if len(lines) != len(order):
        found.append(f"generation.jsonl has {len(lines)} lines for {len(order)} results")
    for line, item_id in zip(lines, order, strict=False):
        record = by_id[item_id]
        if {k: v for k, v in line.items() if k != "generation"} != record:
            found.append(f"generation.jsonl: the line for {item_id} holds another item's fields "
                         f"(prompt {str(line.get('prompt'))[:50]!r})")
            break
        if line.get("generation") != done[item_id]:
            found.append(f"generation.jsonl: {item_id}'s generation differs from its results.jsonl line")
            break
    return found


def secret_kept(run: Finished) -> list[str]:
    """The API key is never written into the run folder."""
    key = run.schedule.api_key
    if not key or not run.run_dir.exists():
        return []
    return [f"the API key appears in {p.name}" for p in sorted(run.run_dir.iterdir())
            if p.is_file() and key.encode() in p.read_bytes()]


def expected_answer(prompt: str, sampling: dict[str, Any]) -> str:
    """What the mock answers `prompt` with under the run's sampling: its output is a pure function of the request
    (the key `MockServer.parse` builds), recomputed here with the mock's own `GenerationRequest.generate`."""
    source: Any = [{"role": "user", "content": prompt}] if sampling["api"] == "chat" else prompt
    key = orjson.dumps([MODEL, source, sampling["max_tokens"], sampling["temperature"], sampling["top_p"],
                        sampling.get("seed")], option=orjson.OPT_SORT_KEYS)
    job = GenerationRequest(chat=sampling["api"] == "chat", model=MODEL, text=prompt, prompt_tokens=0,
              max_tokens=sampling["max_tokens"], stream=True, include_usage=True, key=key)
    return "".join(job.generate()[0])


def poison_is_convicted_in_bounded_solo_wedges(run: Finished) -> list[str]:
    """A poison input wedges servers at most five times before it is convicted (core/poison.py): twice to become
    a suspect, at most once alone on a server that had served others, then twice alone on freshly started ones,
    whichever replicas run it. A pool of two once passed a suspect between its replicas, never on a fresh one,
    for twenty restarts. (Alone is not enough to tell a strike from a solo run: with --concurrency 1 every wedge
    has one item in flight, so seed 40035's four wedges of one item, two of them strikes, were within bounds.)"""
    s = run.schedule
    if not s.poison or any(f.startswith(("hang-after", "crash-after")) for f in s.faults):
        return []  # other wedges may strike while the suspect runs alone: no bound to hold it to
    poison_ids = {item_id for item_id, r in zip(run.ids(), run.records, strict=True)
                  if s.poison_text in r["prompt"]}
    wedged = Counter(item_id for e in run.events() if e.get("event") == "hang_detected"
                     for item_id in set(e.get("items") or []) & poison_ids)
    return [f"{item_id} was in flight at {count} wedges (at most 5 before its conviction)"
            for item_id, count in wedged.items() if count > 5]


INVARIANTS: dict[str, Callable[[Finished], list[str]]] = {
    "completed": completed,
    "exactly_once": exactly_once,
    "blameless_failures": blameless_failures,
    "restarts_have_causes": restarts_have_causes,
    "no_traceback": no_traceback,
    "exit_codes": exit_codes,
    "no_orphans": no_orphans,
    "answers_match_questions": answers_match_questions,
    "secret_kept": secret_kept,
    "poison_bounded": poison_is_convicted_in_bounded_solo_wedges,
}


# What a sharded run's merge must give, once every shard has ended: each id once, each answer beside its question
# in dataset order, from a merge that accepted the shards (exit 0) without a traceback.
MERGED = ("completed", "exactly_once", "answers_match_questions", "no_traceback", "secret_kept")


def check(run: Finished) -> dict[str, list[str]]:
    """Every invariant's violations, by invariant name (only those violated). A sharded run: every invariant for
    each shard, and the merged run's."""
    if not run.parts:
        return {name: found for name, invariant in INVARIANTS.items() if (found := invariant(run))}
    violations: dict[str, list[str]] = {}
    for part in run.parts:
        for name, found in check(part).items():
            violations.setdefault(name, []).extend(f"{part.run_dir.name}: {line}" for line in found)
    if "completed" not in violations:
        for name in MERGED:
            if found := INVARIANTS[name](run):
                violations.setdefault(name, []).extend(f"merged: {line}" for line in found)
    return violations


def _verb(inv: Invocation) -> str:
    verb = next((v for v in ("resume", "merge") if v in inv.command), "inference")
    return f"{verb}, ended by {inv.done_by}" if inv.done_by else verb


def _reason(inv: Invocation) -> str:
    lines = [ln for ln in inv.output.splitlines() if ln.startswith("error:") or "Error" in ln]
    return f": {lines[-1][:200]}" if lines else ""


def happened(run: Finished) -> str:
    """What the run went through, in one line."""
    if run.parts:
        return "; ".join(f"{part.run_dir.name}: {happened(part)}" for part in run.parts) + (
            f"; then {[(_verb(i), i.code) for i in run.invocations]}")
    failures = Counter(str(f.get("reason")) for f in _failures(run))
    return (f"invocations {[(_verb(i), i.code) for i in run.invocations]}, wedges {run.wedges}, crashes "
            f"{run.crashes}, outages {run.outages}, proxy silences {run.proxy_silences}, actions "
            f"{dict(run.actions_done)}, failures {dict(failures)}")


def describe(run: Finished, violations: dict[str, list[str]]) -> str:
    """A failure message: the schedule, what happened, every violation, and the command that replays it."""
    s = run.schedule
    lines = [f"chaos seed {s.seed}: {sum(map(len, violations.values()))} violation(s)", f"  schedule: {s}",
             f"  happened: {happened(run)}", f"  files: {run.root}"]
    for name, found in violations.items():
        lines += [f"  [{name}] {line}" for line in found]
    lines.append(f"  replay: {s.replay()}")
    return "\n".join(lines)
