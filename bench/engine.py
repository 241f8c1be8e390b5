"""Section 5: a real engine. The same prompts against the tiny random Llama (`hallurun tiny-model`) served by real
vLLM on this machine's CPU, side by side in one run:

- `offline`: vLLM's own `LLM.chat` on the whole batch in one process (no HTTP at all): the engine's limit. Only
  the call is timed, not the model load.
- one `vllm.entrypoints.openai.api_server` started by the bench, and against it, in turn: the bare aiohttp loop
  (the limit for any HTTP client) at each concurrency, hallurun at the same concurrencies (its request phase, from
  `server_started` to the last write of `results.jsonl`), and HalluLens' upstream client (64 threads). At each
  concurrency the server is warmed up first, then bare and hallurun take `reps` turns, alternating which goes
  first; the ratio is the median of the pairwise ratios, over sixteen turns each. Both clients run in the bench's
  session (see `bench.common.run_hallurun`).

Why repetitions, and why the server runs at a lower CPU weight: on two cores this vLLM has two paces. In the fast
one the engine batches ~90 tokens per step at 64 (~200 at 256); in the slow one 5–40, so it takes three to four
times the steps per request and serves ~40% fewer requests/s. The slow pace is the path that feeds the engine
starved of CPU: the model worker is pinned to one core, and the API server, the engine core's scheduler and the
client share the other; a client that gets the CPU late lets the engine step with few requests, and those many small
steps starve the API server further. With every session at the same weight, which pace a run met was a lottery that
each client's timing tipped (side by side, 15 runs each: the bare loop met the slow pace twice, hallurun 6 times).
With the clients' session weighted above the server's (theirs raised, or the server's lowered), neither met it in 30
runs each, and both ran 15–25% faster. So the bench starts the server under `nice` and sets its session's autogroup
nice (`lower_server_weight`): a client gets the CPU when its answers arrive, as it does on any machine where it has
a core of its own, and the ratio measures the client's cost rather than the lottery. Each row still shows the
engine's tokens per step over its runs, read from its `/metrics` (`vllm:iteration_tokens_total`); `slow-pace runs`
counts the runs that met the slow pace, and a second ratio, the median over the pairs whose two runs met the same
pace (tokens per step within 25%), is what the client costs apart from the pace.

hallurun's request body has no `ignore_eos`, so no client sends it (every request must be the same): the tokens
actually generated are counted for each client (usage chunks, `results.jsonl`, the offline outputs), so a run
that stops early shows it.

`python -m bench.engine offline --model PATH --dataset FILE --max-tokens N --max-model-len L [--out FILE]` is the
offline measurement (one JSON line: {"elapsed_s", "ok", "completion_tokens"}); the bench runs it in its own session
and kills the session after, as vLLM's engine core outlives the process that started it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.baselines import UPSTREAM_THREADS, load_prompts
from bench.common import (
    PYTHON,
    REPO,
    free_port,
    healthy,
    kill_group,
    median,
    read_jsonl,
    run_hallurun,
    run_json,
    shown,
    write_dataset,
)
from hallurun.server.launch import CPU_KVCACHE_GIB, KEEP_ALIVE_S
from hallurun.wire.metrics import parse as parse_metrics

SERVED = "tiny"
# The environment hallurun gives the vLLM it launches on a CPU (`hallurun.server.launch.command`): the bench's shared
# server is started as hallurun would start it.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": CPU_KVCACHE_GIB, "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": KEEP_ALIVE_S}
# The server's CPU weight against the clients (see `lower_server_weight` and the module's docstring).
SERVER_NICE = 10


@dataclass(frozen=True)
class EnginePlan:
    items: int = 1000
    max_tokens: int = 64
    concurrencies: tuple[int, ...] = (64, 256)
    reps: int = 16
    max_model_len: int = 2048
    startup_timeout_s: float = 600.0
    timeout_s: float = 240.0


def _tiny_model() -> str:
    from hallurun.server import tiny_model

    return tiny_model.resolve(tiny_model.TINY_NAME)


def _vllm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALLURUN_")}
    env.update(SERVER_ENV)
    return env


def _offline(model: str, dataset: Path, plan: EnginePlan, log: Path) -> tuple[dict[str, Any], list[str]]:
    result = log.with_suffix(".json")
    cmd = [PYTHON, "-m", "bench.engine", "offline", "--model", model, "--dataset", str(dataset),
           "--max-tokens", str(plan.max_tokens), "--max-model-len", str(plan.max_model_len), "--out", str(result)]
    # Output to a file, never a pipe: vLLM's engine core inherits it and outlives the process, so a pipe would
    # never reach end-of-file.
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_vllm_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        proc.wait(timeout=plan.timeout_s)
    finally:
        kill_group(proc)  # its engine core is a child process: take the whole group
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"{shown(cmd)} exited {proc.returncode}; see {log}")
    return orjson.loads(result.read_bytes()), cmd[:-2]


def _server_cmd(model: str, port: int, plan: EnginePlan) -> list[str]:
    return ["nice", "-n", str(SERVER_NICE), PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(plan.max_model_len)]


def lower_server_weight(pid: int) -> str:
    """Give the session `pid` leads (the server, started in a session of its own) less CPU weight than the
    clients' session, and say how. Linux with autogroup weighs sessions, not processes, against each other, so
    the `nice` the server runs under counts only among its own processes; its session's nice is set here.
    Raising a nice value needs no privilege."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(SERVER_NICE))
    except OSError:  # no autogroup in this kernel: the server's processes compete one by one, at their nice
        return f"nice {SERVER_NICE}"
    return f"nice {SERVER_NICE}, its session's autogroup nice {SERVER_NICE}"


def baseline_run(client: str, url: str, dataset: Path, concurrency: int, plan: EnginePlan,
                 limit: int | None = None) -> dict[str, Any]:
    cmd = [PYTHON, "-m", "bench.baselines", client, "--url", url, "--dataset", str(dataset),
           "--concurrency", str(concurrency), "--model", SERVED, "--max-tokens", str(plan.max_tokens)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    result = run_json(cmd, plan.timeout_s)
    if result["errors"]:
        raise RuntimeError(f"{shown(cmd)}: {result['errors']} requests failed")
    return {**result, "cmd": cmd}


def _hallurun(url: str, dataset: Path, concurrency: int, plan: EnginePlan, run_dir: Path) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["inference", "--task", str(dataset), "--model", SERVED, "--server-url", url,
            "--concurrency", str(concurrency), "--max-tokens", str(plan.max_tokens), "--temperature", "0",
            "--top-p", "1", "--run-dir", str(run_dir)]
    run = run_hallurun(args, run_dir, timeout=plan.timeout_s)
    if run.returncode != 0:
        raise RuntimeError(f"{shown(run.cmd)} exited {run.returncode}; see {run_dir}.output.log")
    results = read_jsonl(run_dir / "results.jsonl")
    failures = read_jsonl(run_dir / "failures.jsonl")
    if failures or len(results) != plan.items:
        raise RuntimeError(f"{run_dir}: {len(results)} results and {len(failures)} failures of {plan.items} items")
    finished = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "run_finished"][-1]
    return {"elapsed_s": run.request_phase_s, "ok": len(results),
            "completion_tokens": sum(r.get("completion_tokens") or 0 for r in results),
            "latency_s_sum": sum(r["latency_s"] for r in results), "cmd": run.cmd,
            "retries": finished["retries"], "resent": finished["resent"]}


_STEP_COUNTERS = ("vllm:iteration_tokens_total_count", "vllm:iteration_tokens_total_sum")


def _engine_steps(url: str) -> tuple[float, float]:
    """vLLM's (engine steps, tokens in them) so far: over a run, their ratio is its mean batch in tokens."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        totals = parse_metrics(resp.read().decode(), _STEP_COUNTERS)
    return totals.get(_STEP_COUNTERS[0], 0.0), totals.get(_STEP_COUNTERS[1], 0.0)


def one_run(client: str, url: str, dataset: Path, concurrency: int, plan: EnginePlan, work: Path) -> dict[str, Any]:
    """One measured run of `client`, with the engine's mean tokens per step over it."""
    steps, tokens = _engine_steps(url)
    if client == "hallurun":
        result = _hallurun(url, dataset, concurrency, plan, work / "engine-run")
    else:
        result = baseline_run(client, url, dataset, concurrency, plan)
    steps_after, tokens_after = _engine_steps(url)
    return {**result, "tokens_per_step": (tokens_after - tokens) / max(steps_after - steps, 1.0)}


def _same_pace(tokens_per_step: float, other: float) -> bool:
    """Whether two runs met the engine at the same pace: mean batches within 25% of each other."""
    return min(tokens_per_step, other) >= 0.75 * max(tokens_per_step, other)


def is_slow_pace(tokens_per_step: float, largest: float) -> bool:
    """Whether a run met the engine's slow pace: a mean batch under half the largest any run alongside it had."""
    return tokens_per_step < largest / 2


def _slow_runs(ms: list[dict[str, Any]], largest: float) -> int:
    return sum(1 for m in ms if m.get("tokens_per_step") is not None and is_slow_pace(m["tokens_per_step"], largest))


def _median_of(runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], float],
               needs: str = "latency_s_sum") -> float | None:
    """The median of `value` over the runs that measured what it needs (not every client measures everything)."""
    values = [value(run) for run in runs if needs in run]
    return median(values) if values else None


def engine(plan: EnginePlan, work: Path) -> list[dict[str, Any]]:
    """Rows per (client, concurrency): requests/s, generated tokens/s, and the ratio to the bare loop at the same
    concurrency (the offline row's ratio is to the best bare loop: what HTTP costs over the engine itself)."""
    model = _tiny_model()
    dataset = work / f"engine-{plan.items}.jsonl"
    write_dataset(dataset, plan.items)
    measured: list[tuple[str, int | None, list[dict[str, Any]]]] = []  # (client, concurrency, repetitions)

    print(f"engine: offline LLM.chat on {plan.items} prompts (model load excluded) ...", flush=True)
    offline, offline_cmd = _offline(model, dataset, plan, work / "engine-offline.log")
    measured.append(("vLLM offline LLM.chat", None, [{**offline, "cmd": offline_cmd}]))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_cmd = _server_cmd(model, port, plan)
    log = work / "engine-server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(server_cmd, cwd=REPO, env=_vllm_env(), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, start_new_session=True)
    weight = lower_server_weight(proc.pid)
    try:
        began = time.monotonic()
        while not healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {proc.returncode} while starting; see {log}")
            if time.monotonic() - began > plan.startup_timeout_s:
                raise RuntimeError(f"vLLM did not answer /health within {plan.startup_timeout_s}s; see {log}")
            time.sleep(0.5)
        print(f"engine: vLLM ready at {url} after {time.monotonic() - began:.0f} s ({weight})", flush=True)
        for concurrency in plan.concurrencies:
            print(f"engine: concurrency {concurrency}: warm-up, then {plan.reps} x (bare, hallurun) ...", flush=True)
            # A warm-up at each concurrency: vLLM's CPU backend pays once for new batch shapes, and whichever
            # client met them first paid for it (ratios from 0.4 to 1.6 in one session before this).
            baseline_run("bare", url, dataset, concurrency, plan, limit=min(plan.items, 4 * concurrency))
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "hallurun": []}
            for rep in range(plan.reps):
                for client in ("bare", "hallurun") if rep % 2 == 0 else ("hallurun", "bare"):
                    runs[client].append(one_run(client, url, dataset, concurrency, plan, work))
            measured += [("bare", concurrency, runs["bare"]), ("hallurun", concurrency, runs["hallurun"])]
        print(f"engine: upstream ({UPSTREAM_THREADS} threads) ...", flush=True)
        measured.append(("upstream", UPSTREAM_THREADS,
                         [one_run("upstream", url, dataset, UPSTREAM_THREADS, plan, work)]))
    finally:
        kill_group(proc)  # the API server and its engine core, which outlives a killed API server

    bare = {c: [m["ok"] / m["elapsed_s"] for m in ms] for client, c, ms in measured if client == "bare"}
    bare_paces = {c: [m["tokens_per_step"] for m in ms] for client, c, ms in measured if client == "bare"}
    largest: dict[int | None, float] = {}  # the largest mean batch of any bare or hallurun run, per concurrency
    for client, concurrency, ms in measured:
        if client in ("bare", "hallurun"):
            largest[concurrency] = max([largest.get(concurrency, 0.0)] + [m["tokens_per_step"] for m in ms])
    env = " ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
    rows = []
    for client, concurrency, ms in measured:
        rates = [m["ok"] / m["elapsed_s"] for m in ms]
        if concurrency in bare and len(bare[concurrency]) == len(rates):
            # Repetition i of each client ran back to back, so their ratio is taken pairwise before the median.
            ratios = [r / b for r, b in zip(rates, bare[concurrency], strict=True)]
            same_pace = [ratio for ratio, m, pace in zip(ratios, ms, bare_paces[concurrency], strict=True)
                         if _same_pace(m["tokens_per_step"], pace)]
        else:  # offline and upstream: one run, against the best bare loop of the same concurrency or any
            reference = median(bare[concurrency]) if concurrency in bare else max(median(v) for v in bare.values())
            ratios = [median(rates) / reference]
            same_pace = []
        m = ms[0]
        reproduce = [f"{env} {shown(m['cmd'], work)}"] if client.startswith("vLLM") else [
            f"{env} setsid {shown(server_cmd, work)}", f"echo {SERVER_NICE} > /proc/<its pid>/autogroup",
            shown(m["cmd"], work)]
        rows.append({"client": client, "concurrency": concurrency, "items": m["ok"], "max_tokens": plan.max_tokens,
                     "completion_tokens": m["completion_tokens"], "reps": len(ms),
                     "elapsed_s": median([x["elapsed_s"] for x in ms]), "rps": median(rates), "rps_all": rates,
                     "tokens_per_s": median([x["completion_tokens"] / x["elapsed_s"] for x in ms]),
                     "ratio_to_bare": median(ratios), "ratios": ratios,
                     "ratio_same_pace": median(same_pace) if same_pace else None, "same_pace_pairs": len(same_pace),
                     "tokens_per_step": _median_of(ms, lambda x: x["tokens_per_step"], "tokens_per_step"),
                     "tokens_per_step_all": [x.get("tokens_per_step") for x in ms],
                     "slow_runs": _slow_runs(ms, largest[concurrency]) if client in ("bare", "hallurun") else None,
                     # Requests sent again after the server dropped their connection (the bare loop calls them
                     # reconnects), and hallurun's retries: a run that lost its pace to either shows it here.
                     "resent": sum(x.get("resent", x.get("reconnects", 0)) for x in ms)
                     if client in ("bare", "hallurun") else None,
                     "retries": sum(x["retries"] for x in ms) if client == "hallurun" else None,
                     # Little's law: a client that keeps its requests in flight shows ~concurrency here, so a lower
                     # rate with the same figure is the engine answering slower, not the client sending less.
                     "mean_in_flight": _median_of(ms, lambda x: x["latency_s_sum"] / x["elapsed_s"]),
                     "mean_latency_ms": _median_of(ms, lambda x: x["latency_s_sum"] / x["ok"] * 1000),
                     "server_weight": None if client.startswith("vLLM") else weight,
                     "reproduce": [r.replace(model, "$(hallurun tiny-model)") for r in reproduce]})
    return rows


def offline_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine offline")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--max-model-len", type=int, required=True)
    parser.add_argument("--out", type=Path, help="write the JSON line here rather than to stdout")
    args = parser.parse_args(argv)
    from vllm import LLM, SamplingParams

    prompts = load_prompts(args.dataset, None)
    llm = LLM(model=args.model, max_model_len=args.max_model_len)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, top_p=1.0)
    conversations = [[{"role": "user", "content": text}] for text in prompts]
    began = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    elapsed = time.perf_counter() - began
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    line = orjson.dumps({"elapsed_s": elapsed, "ok": len(outputs), "completion_tokens": tokens}) + b"\n"
    if args.out:
        args.out.write_bytes(line)
    else:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
    os._exit(0)  # skip vLLM's slow teardown; the bench kills the process group anyway


if __name__ == "__main__":
    if sys.argv[1:2] != ["offline"]:
        sys.exit(__doc__)
    offline_main(sys.argv[2:])
