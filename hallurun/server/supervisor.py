"""The server's supervisor: launch it in its own process group, wait until it really answers, stop it whole.

`Supervisor` is what the scheduler talks to. For `vllm` and `mock` it owns the process; for `external` it can
only ask the server to restart (HalluLens' `POST /restart`) and wait for someone else to bring it back.

A launched server is only trusted once hallurun knows the answers come from it: its port is checked free before
the launch, and at readiness every socket listening on the port must belong to the launched tree (its session,
or a process carrying its launch token, see `guardian`). A run the server cannot serve (`--max-tokens` beyond
its context) is refused before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import ipaddress
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from hallurun.config import RunConfig, Sampling
from hallurun.errors import ServerError
from hallurun.server import launch
from hallurun.server.guardian import SERVER_ID_ENV, Guardian, Server, signal_trees, tree_pids
from hallurun.server.pool import Slot
from hallurun.store.durable import RunDirWriteError
from hallurun.store.events import Emitter
from hallurun.wire.client import endpoint, request_body
from hallurun.wire.policy import is_stale_connection

STOP_GRACE_SECONDS = 10.0
TREE_EXIT_SECONDS = 5.0  # after the KILL, a wait for the tree to vanish: a GPU's memory is free only then
# A healthy server whose generations fail this many times in a row is broken, not slow. At 5, a server failing a
# third of its requests (a flaky one that a run copes with, retrying) was refused about once in 250 starts in the
# chaos suite (0.33^5); at 10 it is once in 60,000, and a broken server is still refused within seconds.
PROBE_ATTEMPTS = 10
# One probe may take at most half of the time left (but not less than this): a connection that never answers
# (half open, or held by a proxy) must leave time for another try, where it used to take the whole startup wait.
PROBE_MIN_S = 5.0
RESTART_RESEND_S = 5.0  # an old server still answering this long after POST /restart is asked again
POLL_SECONDS = 0.25  # polling is the only way to learn that another process has opened (or closed) its port
HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=5)
REPLICA_ENV = "HALLURUN_REPLICA"  # a launched server's index in the pool, for operators (and the mock's faults)
_PR_SET_PDEATHSIG = 1
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp{,6}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ServerStartError(ServerError):
    """The server did not come up (or back) in time, or exited while starting."""


class PortInUse(ServerStartError):
    """Something hallurun did not launch listens on an explicit `--port`: bad usage."""


class ServerRefusesRun(ServerStartError):
    """The server answers, but cannot serve this run as configured (`--max-tokens` beyond its context)."""


def free_port(host: str) -> int:
    """A port the OS says is free now; the server binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Would a server's bind to HOST:PORT fail with EADDRINUSE? Tried with SO_REUSEADDR, as uvicorn, aiohttp and
    vLLM bind, so that connections of a stopped server lingering in TIME_WAIT do not count."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False  # the server's own start says what is wrong with the host
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) as the IPv4 address it is."""
    return (address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else address


def host_addresses(host: str) -> set[IPAddress]:
    """The addresses `host` stands for, as a server bound to it listens."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return set()
    return {_plain(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


def _proc_net_address(hex_address: str) -> IPAddress:
    # /proc/net/tcp{,6} write an address as 32-bit words, each in the host's byte order.
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return _plain(ipaddress.ip_address(raw))


def listening_inodes(table: str, port: int, addresses: set[IPAddress]) -> set[int]:
    """Inodes of the sockets a `/proc/net/tcp` or `tcp6` table shows listening on `port` where a connection to one
    of `addresses` could reach them: at one of them, at a wildcard address, or anywhere when they hold a wildcard."""
    anywhere = any(a.is_unspecified for a in addresses)
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        hex_address, _, hex_port = fields[1].partition(":")
        if int(hex_port, 16) != port:
            continue
        address = _proc_net_address(hex_address)
        if anywhere or address.is_unspecified or address in addresses:
            found.add(int(fields[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open (none if it is gone or not ours to read)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def socket_owner(inode: int) -> str:
    """Which process holds socket `inode`, for an error message: `pid N (name)`. Only the name, never the
    command line: another server's arguments may carry its API key, and the message reaches the run's events."""
    for name in os.listdir("/proc"):
        if name.isdigit() and inode in socket_inodes(int(name)):
            try:
                command = Path(f"/proc/{name}/comm").read_text().strip()
            except OSError:
                command = "?"
            return f"pid {name} ({command})"
    return "a process hallurun cannot see (another user's?)"


def listeners(host: str, port: int) -> set[int]:
    """Inodes of every socket listening where connections to HOST:PORT go (empty where /proc/net is unreadable)."""
    addresses = host_addresses(host)
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            found |= listening_inodes(Path(table).read_text(), port, addresses)
    return found


def max_model_len(models: object, model: str) -> int | None:
    """The context length a `/v1/models` answer gives for `model` (or for its only model), if it gives one."""
    data = models.get("data") if isinstance(models, dict) else None
    cards = [card for card in data if isinstance(card, dict)] if isinstance(data, list) else []
    card = next((c for c in cards if c.get("id") == model), cards[0] if len(cards) == 1 else None)
    value = card.get("max_model_len") if card else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass
class Comeback:
    """Readiness after asking an external server to restart: it still answers for a moment while it goes, so a
    healthy answer counts only once the old server was seen gone (a refused connection, an error, a timeout or a
    status other than 200). An arbitrary OpenAI-compatible server exposes no identity to compare; a server
    that comes back between two polls is the one case this cannot tell, and no model loads that fast."""

    seen_gone: bool = False
    asked: float | None = None  # when POST /restart was last sent (monotonic); None for a first start

    def ready(self, healthy: bool) -> bool:
        """Record one /health answer; True when it means the (new) server is up."""
        if not healthy:
            self.seen_gone = True
        return healthy and self.seen_gone


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


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec: ask the kernel to TERM it when hallurun's thread dies. A parent that
    # died before the request was made sends no signal at all: then the child must not go on to become a server.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class Supervisor:
    """Owns one server process (or, for `external`, one URL) across restarts: one replica of the pool."""

    def __init__(self, config: RunConfig, events: Emitter, session: aiohttp.ClientSession,
                 env: dict[str, str], api_key: str | None = None, *, slot: Slot | None = None) -> None:
        self.config = config
        self.api_key = api_key
        self.spec = config.server
        self.slot = slot or Slot(url=config.server.url)
        self.events = events
        self.session = session
        self.env = env if self.slot.cuda_visible_devices is None else {
            **env, "CUDA_VISIBLE_DEVICES": self.slot.cuda_visible_devices}
        self.log_path = config.run_dir / self.slot.log_name
        self.managed = self.spec.kind != "external"
        # An explicit --port is the first replica's; the others take the ports after it.
        explicit = self.spec.port + self.slot.index if self.spec.port else None
        self.port = explicit or (free_port(self.spec.host) if self.managed else 0)
        self.base_url = (self.slot.url or self._local_url()).rstrip("/")
        self.first_startup: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._server: Server | None = None  # the current launch, while it runs
        self._live: dict[int, Server] = {}  # every launch not yet stopped whole: running, or being stopped
        self._guardian: Guardian | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> float:
        """Launch (if managed) and wait until the server answers a real generation. Returns seconds taken."""
        return await self._start(Comeback(seen_gone=True))

    async def restart(self) -> float:
        """Stop the server and bring it back; for `external`, ask it to restart and wait for it."""
        if self.managed:
            await self.stop()
            return await self.start()
        accepted = await self._request_external_restart()
        return await self._start(Comeback(seen_gone=not accepted, asked=time.monotonic()))

    @property
    def restart_wait(self) -> float:
        """How long a restart may take: as configured, else twice the first startup (at least 30 s)."""
        if self.config.restart_wait is not None:
            return self.config.restart_wait
        return max(30.0, 2 * (self.first_startup or 0.0))

    @property
    def up(self) -> bool:
        """Whether the server was started and, as far as hallurun can see, has not gone since (a server lent to
        the next stage of a command is not started again)."""
        if self.managed:
            return self._proc is not None and self._proc.returncode is None
        return self.first_startup is not None

    async def fits(self, config: RunConfig) -> None:
        """Before another run uses this running server: refuse its `--max-tokens` if the context has no room."""
        await self._check_context(config.sampling.max_tokens)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def stop(self) -> None:
        """TERM the server's whole tree, wait a grace period, then KILL the tree; wait briefly for it to vanish.

        Every launch not yet stopped whole is stopped, not only the current one: a stop that was cancelled midway
        (Ctrl-C during a restart) left its server in `_live`, and the next stop finishes it (without a second
        grace: it had its TERM). Events are written on a best effort: a full disk must not keep the signals from
        going out."""
        proc = self._proc
        self._proc = self._server = None  # no longer "the server": its exit is not a crash to recover from
        servers = list(self._live.values())
        if not servers:
            return
        with contextlib.suppress(RunDirWriteError):
            self.events.emit("server_stopping", pids=[s.pgid for s in servers])
        await asyncio.to_thread(signal_trees, servers, signal.SIGTERM)
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_SECONDS):
                    await proc.wait()
        # Children (vLLM's engine core, workers, helpers in sessions of their own) may outlive the leader: KILL
        # the whole tree regardless. Until then the servers stay in `_live`, for `kill_now` and the guardian.
        await asyncio.to_thread(signal_trees, servers, signal.SIGKILL)
        if proc is not None:
            await proc.wait()
        deadline = time.monotonic() + TREE_EXIT_SECONDS
        while await asyncio.to_thread(tree_pids, servers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # KILLed processes outside our children: no exit event reaches us
        for server in servers:
            self._live.pop(server.pgid, None)
            if self._guardian:
                self._guardian.release(server.pgid)
        with contextlib.suppress(RunDirWriteError):
            self.events.emit("server_stopped", pids=[s.pgid for s in servers],
                             returncode=None if proc is None else proc.returncode)

    def kill_now(self) -> None:
        """Synchronous last resort (a second Ctrl-C): KILL every server tree still running or being stopped."""
        signal_trees(self._live.values(), signal.SIGKILL)

    def ensure_guardian(self) -> None:
        """Start a guardian if there is none or it has died (someone killed it), and tell it every live server.

        Called at each launch, and from the event loop the moment a guardian exits (a pidfd watch); where pidfds
        are missing (Linux < 5.3) only launches check, and a periodic call from the scheduler would cover the rest.
        """
        old = self._guardian
        if old is not None and old.alive:
            return
        if old is not None:
            old.forget()
        guardian = Guardian()
        for server in self._live.values():
            guardian.watch(server)
        self._guardian = guardian
        with contextlib.suppress(OSError):
            guardian.on_exit(asyncio.get_running_loop(), self.ensure_guardian)
        if old is not None:
            # Often run as an event-loop callback, where an exception is only logged: the guardian is what
            # matters, and a run directory that cannot be written fails the next write that is checked.
            with contextlib.suppress(RunDirWriteError):
                self.events.emit("guardian_replaced", old_pid=old.pid, pid=guardian.pid, watching=len(self._live))

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
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                return False
            if await self._healthy():
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    # -- internals -------------------------------------------------------------------------------------

    def _local_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    async def _start(self, comeback: Comeback) -> float:
        deadline = self.spec.startup_timeout if self.first_startup is None else self.restart_wait
        began = time.monotonic()
        if self.managed:
            await self._launch()
        await self._wait_ready(began + deadline, comeback)
        await self._check_context()
        took = time.monotonic() - began
        if self.first_startup is None:
            self.first_startup = took
        self.events.emit("server_started", url=self.base_url, pid=self.pid, startup_s=round(took, 2),
                         managed=self.managed)
        return took

    async def _launch(self) -> None:
        self.ensure_guardian()
        assert self._guardian is not None
        self._claim_port()
        planned = launch.command(self.config, self.port, environ=self.env, cpus=self.slot.cpus)
        token = uuid.uuid4().hex  # marks every process of this launch, those that leave its session included
        # Told before the fork: the chaos suite killed hallurun (-9) between a relaunch's fork and the `watch`
        # below, before the child had set its parent-death signal, and that server outlived everything.
        self._guardian.expect(token)
        with self.log_path.open("ab") as log:
            extra = "".join(f"{k}={v} " for k, v in planned.env.items())
            log.write(f"\n=== hallurun: starting {extra}{' '.join(planned.cmd)}\n".encode())
            for note in planned.notes:
                log.write(f"=== hallurun: {note}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *planned.cmd, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                env={**self.env, **planned.env, SERVER_ID_ENV: token, REPLICA_ENV: str(self.slot.index)},
                # `python -m` puts the working directory on sys.path: a stray queue.py there breaks vLLM.
                cwd=self.config.run_dir,
            )
        self._server = Server(self._proc.pid, token)
        self._live[self._server.pgid] = self._server
        self._guardian.watch(self._server)

    def _claim_port(self) -> None:
        """Before a launch: refuse an explicit `--port` that something already listens on; for a port hallurun
        picked (taken since, e.g. between a stop and the relaunch), pick another."""
        host = self.spec.host
        if not port_in_use(host, self.port):
            return
        if self.spec.port is not None:
            who = "; ".join(sorted(socket_owner(inode) for inode in listeners(host, self.port)))
            raise PortInUse(f"--port {self.port}: something is already listening on {host}:{self.port}"
                            + (f" ({who})" if who else "") + "; stop it or choose another --port")
        taken, self.port = self.port, free_port(host)
        self.base_url = self._local_url()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== hallurun: port {taken} was taken by another process; using {self.port}\n".encode())

    async def _check_listener(self) -> None:
        """Every socket listening where our requests go must belong to the launched tree, or a stranger answers."""
        server = self._server
        if server is None:
            return
        strangers = await asyncio.to_thread(self._foreign_listeners, server)
        if not strangers:
            return
        who = "; ".join(sorted(await asyncio.to_thread(lambda: [socket_owner(i) for i in strangers])))
        where = f"{self.spec.host}:{self.port}"
        message = (f"{where} is answered by a process hallurun did not launch ({who}), not by the server it "
                   f"launched (pid {server.pgid})")
        if self.spec.port is not None:
            raise PortInUse(f"--port {self.port}: {message}; stop it or choose another --port")
        raise ServerStartError(f"{message}: it took the port hallurun had picked before the server could bind it")

    def _foreign_listeners(self, server: Server) -> set[int]:
        listening = listeners(self.spec.host, self.port)
        if not listening:
            return set()
        ours = set().union(*(socket_inodes(pid) for pid in tree_pids([server])))
        return listening - ours

    async def _wait_ready(self, deadline: float, comeback: Comeback) -> None:
        """Poll /health, then prove the engine works with one tiny generation. Until `deadline` a refused or
        broken connection at either step means "not ready yet": a server that is going, or coming."""
        problem = "no answer"
        failed = 0
        while True:
            await self._wait_healthy(deadline, comeback)
            await self._check_listener()
            self._check_alive()
            try:
                status, body = await self._probe(deadline)
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    break
                if isinstance(exc, TimeoutError):
                    await self._ask_again_if_unmoved(comeback)
                await asyncio.sleep(POLL_SECONDS)
                continue
            if status == 200:
                await self._check_listener()
                return
            problem = f"HTTP {status} {body[:300]}"
            if 400 <= status < 500 and status not in (408, 429):
                raise self._start_error(f"the server rejected a probe request: {problem}")
            failed += 1
            if failed >= PROBE_ATTEMPTS or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        raise self._start_error(f"the server is healthy but a generation request failed ({problem})")

    async def _wait_healthy(self, deadline: float, comeback: Comeback) -> None:
        asked = time.monotonic()
        while True:
            self._check_alive()
            if time.monotonic() > deadline:
                if not comeback.seen_gone:
                    raise self._start_error(f"{self.base_url} kept answering /health after POST /restart until "
                                            "the restart wait ran out: it never went away")
                raise self._start_error(f"no healthy answer from {self.base_url}/health in time")
            if comeback.ready(await self._healthy()):
                return
            if not comeback.seen_gone and time.monotonic() - asked >= RESTART_RESEND_S:
                # Still the old server, long after it was asked to go: ask again. The chaos suite met a
                # `POST /restart` that the server acknowledged in no way we could see, and a run that waited out
                # the whole restart wait for it; a second request costs at most one restart more.
                await self._request_external_restart(again=True)
                asked = comeback.asked = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)

    async def _ask_again_if_unmoved(self, comeback: Comeback) -> None:
        """An external server that answers /health but times out a one-token generation is wedged: that is what
        the wedge looks like. Ask it to restart (again at most every RESTART_RESEND_S) and wait to see it go.

        After POST /restart, the chaos suite met a request lost on its way in and one dropped health check, which
        looked like the old server going: the server, healthy and still wedged, timed out every probe until the
        restart wait ran out (exit 3). At a first start, it met a server left wedged by a hallurun killed (-9)
        with a stalling item in flight: the resume waited out the whole startup timeout on it."""
        if self.managed:
            return
        if comeback.asked is not None and time.monotonic() - comeback.asked < RESTART_RESEND_S:
            return
        again = comeback.asked is not None
        comeback.asked = time.monotonic()
        if await self._request_external_restart(again=again):
            comeback.seen_gone = False

    async def generates(self, within: float) -> bool:
        """Whether a one-token generation is answered (200) within `within` seconds: a server whose streams went
        quiet but that answers this is pausing, not wedged."""
        try:
            status, _ = await self._probe(time.monotonic() + within)
        except (aiohttp.ClientError, TimeoutError):
            return False
        return status == 200

    async def answers(self) -> bool:
        """Whether `/health` answers 200 now (after a connection broke under a request: is the server still there?)."""
        return await self._healthy()

    async def _healthy(self) -> bool:
        try:
            async with self.session.get(self.base_url + "/health", headers=self._auth(),
                                        timeout=HEALTH_TIMEOUT) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _probe(self, deadline: float) -> tuple[int, str]:
        """One tiny generation: its status and body. Raises on connection errors, or once `deadline` passes."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no time left")
        probe = request_body(self.config.model, "Say OK.", Sampling(api=self.config.sampling.api, max_tokens=1),
                             stream=False)
        url = self.base_url + endpoint(self.config.sampling.api)
        timeout = aiohttp.ClientTimeout(total=min(left, max(left / 2, PROBE_MIN_S)))
        async with self.session.post(url, json=probe, headers=self._auth(), timeout=timeout) as resp:
            return resp.status, await resp.text()

    async def _check_context(self, wanted: int | None = None) -> None:
        """Refuse a `--max-tokens` that leaves no room for a prompt in the server's context: every item would fail
        with 400. vLLM's `/v1/models` cards carry `max_model_len`; without one, there is nothing to check."""
        try:
            async with self.session.get(self.base_url + "/v1/models", headers=self._auth(),
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    return
                models = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return
        limit = max_model_len(models, self.config.model)
        wanted = self.config.sampling.max_tokens if wanted is None else wanted
        if limit is not None and wanted >= limit:
            raise ServerRefusesRun(f"--max-tokens {wanted} leaves no room for a prompt: {self.config.model} at "
                                   f"{self.base_url} has max_model_len {limit} (prompt and answer share it); "
                                   f"choose --max-tokens below {limit}")

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

    async def _request_external_restart(self, *, again: bool = False) -> bool:
        """POST /restart. True when the server accepted it, so the old server must be seen going before a healthy
        answer counts; not when it refused (it does not restart) or nothing listened (it is gone already)."""
        accepted, answer = await self._post_restart()
        self.events.emit("restart_requested_again" if again else "restart_requested", url=self.base_url,
                         answer=answer, note="external server: a supervisor must bring it back")
        return accepted

    async def _post_restart(self) -> tuple[bool, str]:
        """POST /restart: (whether the server may be going, what it answered)."""
        for fresh_try in (False, True):
            try:
                async with self.session.post(self.base_url + "/restart", headers=self._auth(),
                                             timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    return 200 <= resp.status < 300, f"HTTP {resp.status}"
            except aiohttp.ClientConnectorError as exc:
                # Nothing listens: no old server is left to mistake for the new one.
                return False, type(exc).__name__
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A kept-alive connection the last server closed never carried the request: send it again on a
                # new one. Seen in tests: the request lost that way, the server never restarted, and the run
                # waited the whole restart wait for an old server that had not been asked to go.
                if not fresh_try and is_stale_connection(exc):
                    continue
                # It got the request (a wedged server, one that exits without a reply): it may be going.
                return True, type(exc).__name__
        return True, "no answer"


async def stop_all(supervisors: list[Supervisor]) -> None:
    """Stop every server whole, all at once (a pool's replicas), and close their guardians; the first failure is
    raised once every stop has ended."""

    async def stop_one(supervisor: Supervisor) -> None:
        try:
            await supervisor.stop()
        finally:
            supervisor.close()

    for failure in await asyncio.gather(*map(stop_one, supervisors), return_exceptions=True):
        if isinstance(failure, BaseException):
            raise failure
