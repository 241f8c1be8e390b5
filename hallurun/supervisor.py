"""The server's supervisor: launch it in its own process group, wait until it really answers, stop it whole.

`Supervisor` is what the scheduler talks to. For `vllm` and `mock` it owns the process; for `external` it can
only ask the server to restart (HalluLens' `POST /restart`) and wait for someone else to bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp

from hallurun import engine
from hallurun.client import endpoint, request_body
from hallurun.config import RunConfig, Sampling
from hallurun.events import EventLog
from hallurun.guardian import Guardian

SERVER_LOG = "server.log"
STOP_GRACE_SECONDS = 10.0
PROBE_ATTEMPTS = 5  # a healthy server whose generations keep failing is broken, not slow
_PR_SET_PDEATHSIG = 1


class ServerStartError(Exception):
    """The server did not come up (or back) in time, or exited while starting."""


def free_port(host: str) -> int:
    """A port the OS says is free now; the server binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to TERM it when hallurun's thread dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    """Owns the server process (or, for `external`, the URL) across restarts."""

    def __init__(self, config: RunConfig, events: EventLog, session: aiohttp.ClientSession,
                 env: dict[str, str], api_key: str | None = None) -> None:
        self.config = config
        self.api_key = api_key
        self.spec = config.server
        self.events = events
        self.session = session
        self.env = env
        self.log_path = config.run_dir / SERVER_LOG
        self.managed = self.spec.kind != "external"
        self.port = self.spec.port or (free_port(self.spec.host) if self.managed else 0)
        self.base_url = (self.spec.url or f"http://{self.spec.host}:{self.port}").rstrip("/")
        self.first_startup: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._guardian: Guardian | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> float:
        """Launch (if managed) and wait until the server answers a real generation. Returns seconds taken."""
        deadline = self.spec.startup_timeout if self.first_startup is None else self.restart_wait
        began = time.monotonic()
        if self.managed:
            await self._launch()
        await self._wait_ready(began + deadline)
        took = time.monotonic() - began
        if self.first_startup is None:
            self.first_startup = took
        self.events.emit("server_started", url=self.base_url, pid=self.pid, startup_s=round(took, 2),
                         managed=self.managed)
        return took

    async def restart(self) -> float:
        """Stop the server and bring it back; for `external`, ask it to restart and wait for it."""
        if self.managed:
            await self.stop()
        else:
            await self._request_external_restart()
        return await self.start()

    @property
    def restart_wait(self) -> float:
        """How long a restart may take: as configured, else twice the first startup (at least 30 s)."""
        if self.config.restart_wait is not None:
            return self.config.restart_wait
        return max(30.0, 2 * (self.first_startup or 0.0))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def stop(self) -> None:
        """TERM the whole process group, wait a grace period, then KILL it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # the server leads its own session, so its pid is its group id
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await proc.wait()
        # Children (vLLM's engine core, workers) may outlive the leader: KILL the group regardless.
        _signal_group(pgid, signal.SIGKILL)
        await proc.wait()
        if self._guardian:
            self._guardian.release(pgid)
        self.events.emit("server_stopped", pid=pgid, returncode=proc.returncode)

    def kill_now(self) -> None:
        """Synchronous last resort (a second Ctrl-C): KILL the group without waiting."""
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Release the guardian; call after `stop`."""
        if self._guardian is not None:
            self._guardian.close()
            self._guardian = None

    # -- health --------------------------------------------------------------------------------------

    async def wait_exit(self) -> int | None:
        """Return when the current server process exits (never, for an external server)."""
        proc = self._proc
        if proc is None:
            await asyncio.Event().wait()
        assert proc is not None
        return await proc.wait()

    async def has_exited(self, grace: float = 1.0) -> bool:
        """After a connection failure: has the server process gone? Waits briefly for the exit to be seen."""
        proc = self._proc
        if proc is None:
            return False
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as the
        # process exits, and the recovery that cancelled this request would then wait for it forever.
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(proc.wait())
        except TimeoutError:
            return False
        return True

    async def wait_answering(self, deadline: float) -> bool:
        """After refused connections: wait until `/health` answers 200 again (True), or until `deadline`
        (`time.monotonic()`) passes or the managed process exits (False). A refusal means "not back yet"."""
        health = self.base_url + "/health"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                return False
            try:
                async with self.session.get(health, headers=self._auth(),
                                            timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.25)  # polling is the only way to learn that a server listens again
        return False

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    # -- internals -------------------------------------------------------------------------------------

    async def _launch(self) -> None:
        if self._guardian is None:
            self._guardian = Guardian()
        spec = engine.launch(self.config, self.port, environ=self.env)
        with self.log_path.open("ab") as log:
            extra = "".join(f"{k}={v} " for k, v in spec.env.items())
            log.write(f"\n=== hallurun: starting {extra}{' '.join(spec.cmd)}\n".encode())
            for note in spec.notes:
                log.write(f"=== hallurun: {note}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *spec.cmd, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=_die_with_parent, env={**self.env, **spec.env},
                # `python -m` puts the working directory on sys.path: a stray queue.py there breaks vLLM.
                cwd=self.config.run_dir,
            )
        self._guardian.watch(self._proc.pid)

    async def _wait_ready(self, deadline: float) -> None:
        """Poll /health, then prove the engine works with one tiny generation."""
        health = self.base_url + "/health"
        while True:
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._start_error(f"no healthy answer from {health} in time")
            try:
                async with self.session.get(health, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            # Polling is the only way to learn that another process has opened its port.
            await asyncio.sleep(0.25)
        probe = request_body(self.config.model, "Say OK.", Sampling(api=self.config.sampling.api, max_tokens=1),
                             stream=False)
        url = self.base_url + endpoint(self.config.sampling.api)
        problem = "no answer"
        for _ in range(PROBE_ATTEMPTS):
            self._check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with self.session.post(url, json=probe, headers=self._auth(),
                                             timeout=aiohttp.ClientTimeout(total=left)) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        return
                    problem = f"HTTP {resp.status} {body[:300]}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        raise self._start_error(f"the server rejected a probe request: {problem}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.5)
        raise self._start_error(f"the server is healthy but a generation request failed ({problem})")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            raise self._start_error(f"the server exited with code {self._proc.returncode} while starting")

    def _start_error(self, what: str) -> ServerStartError:
        if not self.managed:
            return ServerStartError(f"{what}; hallurun cannot relaunch a server it did not start: "
                                    f"a supervisor must bring {self.base_url} back")
        tail = log_tail(self.log_path)
        where = f"\n--- last lines of {self.log_path} ---\n{tail}" if tail else ""
        return ServerStartError(f"{what}{where}")

    async def _request_external_restart(self) -> None:
        self.events.emit("restart_requested", url=self.base_url,
                         note="external server: a supervisor must bring it back")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.post(self.base_url + "/restart", timeout=aiohttp.ClientTimeout(total=5)):
                pass


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
