"""Which pace a running vLLM server meets, run after run: the tool behind section 5's notes on the engine's paces.

`python -m bench.paces --url URL --dataset FILE [--clients bare,hallurun] [--runs 8] [--concurrency 64]
[--metrics-every S]` runs each client in turn (alternating the order), 1,000 prompts × 64 tokens as in section 5,
and prints, per run, requests/s and the engine's mean tokens per step over it (from `/metrics`); at the end, per
client, the medians, the runs that met the slow pace, and (with `bare` among the clients) the median of the
pairwise ratios to the bare loop with its 90% bootstrap interval: section 5's figure, from as many turns as
`--runs` asks, to settle what 16 turns cannot. With `--metrics-every S`, a thread reads `/metrics` every S seconds
throughout, like a monitoring scrape, to see what reading it costs the server. Start the server as section 5 does,
in a session of its own at a lower CPU weight than the clients (`bench.engine.lower_server_weight`), e.g.:

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_HTTP_TIMEOUT_KEEP_ALIVE=60 setsid nice -n 10 \\
        python -m vllm.entrypoints.openai.api_server --model $(hallurun tiny-model) \\
        --served-model-name tiny --host 127.0.0.1 --port 8100 --max-model-len 2048 &
    echo 10 > /proc/$(pgrep -f 'api_server.*--port 8100' | head -1)/autogroup

Without the last line, which pace each run meets is a lottery (section 5's notes): that is what `--runs` counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from bench.common import median, median_interval
from bench.engine import EnginePlan, baseline_run, is_slow_pace, one_run


def _scrape(url: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
                resp.read()
        except OSError:
            pass  # a monitoring scrape that fails is just a scrape that failed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paces", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--dataset", type=Path, required=True, help="a JSONL file of prompts (1,000 in section 5)")
    parser.add_argument("--clients", default="bare,hallurun")
    parser.add_argument("--runs", type=int, default=8, help="runs of each client")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--metrics-every", type=float, help="also read /metrics every S seconds throughout")
    parser.add_argument("--work", type=Path, help="where hallurun's runs go [default: a new temporary folder]")
    args = parser.parse_args(argv)
    clients = args.clients.split(",")
    work = (args.work or Path(tempfile.mkdtemp(prefix="hallurun-paces-"))).resolve()
    dataset = args.dataset.resolve()
    plan = EnginePlan()
    stop = threading.Event()
    if args.metrics_every:
        threading.Thread(target=_scrape, args=(args.url, args.metrics_every, stop), daemon=True).start()
    try:
        baseline_run("bare", args.url, dataset, args.concurrency, plan, limit=4 * args.concurrency)  # warm-up
        found: dict[str, list[tuple[float, float]]] = {client: [] for client in clients}
        for run in range(args.runs):
            for client in clients if run % 2 == 0 else clients[::-1]:
                m = one_run(client, args.url, dataset, args.concurrency, plan, work)
                found[client].append((m["ok"] / m["elapsed_s"], m["tokens_per_step"]))
                print(f"run {run} {client:9} {found[client][-1][0]:7.1f} req/s {m['tokens_per_step']:5.0f} "
                      "tokens/step", flush=True)
    finally:
        stop.set()
    largest = max(t for runs in found.values() for _, t in runs)
    for client, runs in found.items():
        slow = sum(1 for _, t in runs if is_slow_pace(t, largest))
        print(f"{client:9} median {median([r for r, _ in runs]):7.1f} req/s "
              f"{median([t for _, t in runs]):5.0f} tokens/step, slow pace in {slow} of {len(runs)}; "
              "tokens/step per run: " + " ".join(f"{t:.0f}" for _, t in runs))
        if client != "bare" and "bare" in found:
            # Run i of each client ran back to back: the ratio is pairwise, then the median, as section 5 takes it.
            ratios = [r / b for (r, _), (b, _) in zip(runs, found["bare"], strict=True)]
            low, high = median_interval(ratios)
            print(f"{client:9} × bare loop {median(ratios):.2f} (90% interval {low:.2f}–{high:.2f}, "
                  f"{len(ratios)} pairs)")


if __name__ == "__main__":
    main(sys.argv[1:])
