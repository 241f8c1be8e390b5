"""A faithful re-implementation of the HalluLens activation-logging fork's restart protocol (BRIEF §1,
`shared/reference/SERVER_RESTART_PROTOCOL.md`, the fork's `utils/lm.py`), and the outside supervisor it assumes.

The client, per prompt: a new `openai.OpenAI(timeout=60)` (whose SDK itself retries a timeout twice), up to 4
attempts; on the first attempt's timeout, `POST /restart`, sleep 5 s, poll `/health` every 2 s for up to
SERVER_RESTART_WAIT_TIME (30 s), then retry at once; a later timeout sleeps 1 s · 2^attempt; the last timeout,
or any other error, returns a placeholder generation (`[TIMEOUT_SKIPPED] ...`, `[ERROR_SKIPPED] ...`) that
counts as done. 64 threads, as upstream. Every duration, including the SDK's own retry backoff and the
supervisor's RestartSec, is divided by `--scale` so that a benchmark fits in minutes; `--restart-wait S` gives
the restart wait in real seconds instead (the bench keeps it above the scaled server's measured start).

`python -m bench.hallulens --url URL --dataset FILE --out FILE [--scale F] [--restart-wait S]` runs a dataset
through it and prints one JSON line of counters; FILE gets one `{"id", "generation"}` line per item, written at
the end as upstream does.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import MODEL, PYTHON, REPO, count_wedges, kill_group, wait_healthy

THREADS = 64
MAX_TOKENS = 256
TIMEOUT_PLACEHOLDER = "[TIMEOUT_SKIPPED]"
ERROR_PLACEHOLDER = "[ERROR_SKIPPED]"


@dataclass(frozen=True)
class Protocol:
    """The fork's constants, in its own seconds, and the factor they are all divided by."""

    scale: float = 1.0
    enable_restart: bool = True  # ENABLE_SERVER_RESTART
    max_retries: int = 3  # 4 attempts in all
    request_timeout: float = 60.0  # openai.OpenAI(timeout=60.0)
    restart_wait: float = 30.0  # SERVER_RESTART_WAIT_TIME
    shutdown_sleep: float = 5.0  # "wait for server to go down" after POST /restart
    health_poll: float = 2.0
    health_timeout: float = 5.0
    restart_post_timeout: float = 5.0
    base_delay: float = 1.0  # exponential backoff between later attempts
    # The restart wait in real seconds, instead of restart_wait / scale: the bench keeps it above the scaled
    # server's measured start, which has a part that does not scale (bench.recovery.restart_wait).
    restart_wait_s: float | None = None

    def s(self, seconds: float) -> float:
        """A duration of the fork's, scaled."""
        return seconds / self.scale

    @property
    def restart_wait_scaled(self) -> float:
        """How long `restart_server` polls `/health` for, in real seconds."""
        return self.restart_wait_s if self.restart_wait_s is not None else self.s(self.restart_wait)


def scale_sdk_backoff(scale: float) -> None:
    """Divide the OpenAI SDK's own retry backoff (0.5 s doubling to 8 s) by the same factor as everything else."""
    from openai import _base_client

    # The SDK reads these module globals on every retry; there is no public setting for them.
    _base_client.INITIAL_RETRY_DELAY = 0.5 / scale
    _base_client.MAX_RETRY_DELAY = 8.0 / scale


class HalluLensClient:
    """`call_vllm_api` and `restart_server` from the fork, with counters for the benchmark."""

    def __init__(self, base_url: str, protocol: Protocol) -> None:
        self.base_url = base_url
        self.protocol = protocol
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def check_server_health(self) -> bool:
        p = self.protocol
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=p.s(p.health_timeout)) as resp:
                return resp.status == 200
        except (OSError, http.client.HTTPException):
            return False

    def restart_server(self) -> bool:
        """POST /restart, then wait for someone else (the supervisor) to bring the server back."""
        p = self.protocol
        request = urllib.request.Request(self.base_url + "/restart", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=p.s(p.restart_post_timeout)):
                self._count("restart_requests_sent")
        except (OSError, http.client.HTTPException):
            self._count("restart_requests_failed")  # "Cannot restart server - ... REST endpoint failed"
            return False
        time.sleep(p.s(p.shutdown_sleep))
        began = time.monotonic()
        while time.monotonic() - began < p.restart_wait_scaled:
            if self.check_server_health():
                return True
            time.sleep(p.s(p.health_poll))
        self._count("restart_waits_expired")
        return False

    def call_vllm_api(self, prompt: str) -> str:
        import openai

        p = self.protocol
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key="NOT A REAL KEY",
                               timeout=p.s(p.request_timeout))
        for attempt in range(p.max_retries + 1):
            try:
                completion = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
                    temperature=0.0, top_p=1.0)
                return completion.choices[0].message.content or ""
            except openai.APITimeoutError:
                self._count("timeouts")
                if attempt < p.max_retries:
                    delay = p.s(p.base_delay) * (2 ** attempt)
                    if attempt == 0 and p.enable_restart and self.restart_server():
                        continue  # "Skip the normal delay since we already waited for restart"
                    time.sleep(delay)
                else:
                    self._count("timeout_placeholders")
                    return f"{TIMEOUT_PLACEHOLDER} timed out after {p.max_retries + 1} attempts"
            except Exception as exc:  # the fork turns any other error into a placeholder at once
                self._count("error_placeholders")
                return f"{ERROR_PLACEHOLDER} failed with {type(exc).__name__}: {str(exc)[:100]}"
        raise AssertionError("unreachable")


def run_dataset(url: str, dataset: Path, out: Path, protocol: Protocol) -> dict[str, Any]:
    """Every prompt of `dataset` through the protocol on 64 threads; the generations are written at the end."""
    scale_sdk_backoff(protocol.scale)
    records = [orjson.loads(line) for line in dataset.read_bytes().splitlines() if line.strip()]
    client = HalluLensClient(url, protocol)
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        generations = list(pool.map(client.call_vllm_api, (r["prompt"] for r in records)))
    elapsed = time.perf_counter() - began
    with out.open("wb") as fh:
        for record, generation in zip(records, generations, strict=True):
            fh.write(orjson.dumps({"id": record["id"], "generation": generation}) + b"\n")
    return {"elapsed_s": elapsed, "items": len(records), **client.counts}


# -- the outside supervisor ---------------------------------------------------------------------------------


class SupervisedMock:
    """What HalluLens' setup assumes (systemd `Restart=always`, `RestartSec=5`): a loop that relaunches the
    server on the same port whenever it exits, e.g. after `POST /restart`."""

    def __init__(self, args: Sequence[str], port: int, log: Path, restart_sec: float) -> None:
        self.cmd = [PYTHON, "-m", "bench.loud_mock", "--port", str(port), "--model", MODEL, *args]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.restart_sec = restart_sec
        self.launches = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(self.cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = self._launch()
                self.launches += 1
            self._proc.wait()
            self._stop.wait(self.restart_sec)

    def __enter__(self) -> SupervisedMock:
        self._thread.start()
        wait_healthy(self.url, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stop.set()
            if self._proc is not None:
                kill_group(self._proc)
        self._thread.join(timeout=10)

    @property
    def restarts(self) -> int:
        return max(0, self.launches - 1)

    @property
    def wedges(self) -> int:
        return count_wedges(self.log)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hallulens", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="divide every duration by this")
    parser.add_argument("--restart-wait", type=float,
                        help="seconds to poll /health after /restart [default: SERVER_RESTART_WAIT_TIME / scale]")
    args = parser.parse_args(argv)
    protocol = Protocol(scale=args.scale, restart_wait_s=args.restart_wait)
    result = run_dataset(args.url, args.dataset, args.out, protocol)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1:])
