"""An external server's supervisor for the chaos suite: keeps one `hallurun mock-server` alive on a fixed port.

It plays the "someone else" of HalluLens' `POST /restart` protocol and the operator of an external server:

- whenever the mock exits (a `/restart`, a crash-after fault, a kill), it starts it again on the same port after a
  short random pause;
- SIGUSR1 is an outage: the mock is killed (SIGKILL) and stays away for a random few seconds before it returns;
- SIGTERM stops the mock and the supervisor.

Everything the mock writes to stderr (its `mock: wedged ...` and `mock: crash-after ...` lines) and one line per
start, exit and outage of its own go to `--log`, in order, so the suite can count real wedges, crashes and outages.

    python tests/chaos_supervisor.py --port 9000 --log sup.log --seed 3 -- --fault hang-after:40
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path


class Supervisor:
    """Starts the mock, restarts it when it exits, and makes outages on request."""

    def __init__(self, port: int, log: Path, seed: int, restart_delay: float, outage: tuple[float, float],
                 mock_args: list[str]) -> None:
        self.cmd = [sys.executable, "-m", "hallurun", "mock-server", "--port", str(port), *mock_args]
        self.log = log
        self.rng = random.Random(seed)
        self.restart_delay = restart_delay
        self.outage = outage
        self.proc: subprocess.Popen[bytes] | None = None
        self.outages = 0  # outages asked for and not yet begun
        self.wake = threading.Event()  # SIGTERM arrived
        self.stopping = False

    def note(self, line: str) -> None:
        with self.log.open("ab") as fh:
            fh.write(f"chaos-supervisor: {line}\n".encode())

    def on_outage(self, *_: object) -> None:
        # Only a running mock can go away; a request during a pause is dropped (the log counts real outages).
        if self.proc is not None and self.proc.poll() is None:
            self.outages += 1
            self.proc.kill()

    def on_stop(self, *_: object) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.wake.set()

    def run(self) -> None:
        """Keep the mock running until SIGTERM."""
        signal.signal(signal.SIGUSR1, self.on_outage)
        signal.signal(signal.SIGTERM, self.on_stop)
        starts = 0
        while not self.stopping:
            starts += 1
            with self.log.open("ab") as err:
                self.note(f"start {starts}")
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=err)
            code = self.proc.wait()
            self.note(f"exit {code}")
            if self.stopping:
                break
            if self.outages:
                self.outages -= 1
                pause = self.rng.uniform(*self.outage)
                self.note(f"outage {pause:.2f}s")
            else:
                pause = self.rng.uniform(0, self.restart_delay)
            self.wake.clear()
            # SIGTERM cuts the pause short.
            self.wake.wait(pause)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line (mock-server arguments after `--`) and supervise until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restart-delay", type=float, default=1.0, help="most seconds before a restart")
    parser.add_argument("--outage-min", type=float, default=0.5)
    parser.add_argument("--outage-max", type=float, default=3.0)
    parser.add_argument("mock_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    mock_args = args.mock_args[1:] if args.mock_args[:1] == ["--"] else args.mock_args
    os.environ.pop("HALLURUN_RUN_DIR", None)  # not one of hallurun's processes: it must not carry a run's marker
    Supervisor(args.port, args.log, args.seed, args.restart_delay, (args.outage_min, args.outage_max),
               mock_args).run()


if __name__ == "__main__":
    main()
