"""A TCP fault proxy for the chaos suite: a real process between hallurun and a server.

Every accepted connection gets one fate, drawn from the proxy's own seeded random source in accept order, so the
faults do not depend on the server's cooperation:

- `pass`: bytes flow both ways untouched;
- `delay`: the first bytes each way wait up to `--delay-max` seconds;
- `trickle`: the server's bytes reach the client a few at a time, a few milliseconds apart;
- `reset`: after up to `--reset-bytes` bytes from the server, the client gets a TCP RST;
- `hold`: accepted and read from, never forwarded (half-open from the client's view: nothing ever comes back);
- `mute`: forwarded to the server, but its answer stops reaching the client after a few bytes (one direction
  stops).

Each fate is logged to stdout as `proxy: conn N FATE`, so the suite can bound what the client may legitimately
have seen (a `hold` or `mute` looks exactly like a wedged server to the client). Runs until SIGTERM or SIGKILL.

    python tests/chaos_proxy.py --listen 9001 --target 9000 --seed 7 --reset 0.02 --hold 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import struct
import sys
from dataclasses import dataclass

CHUNK = 65536
TRICKLE_BYTES = 48  # small enough that a whole SSE event takes several writes
TRICKLE_GAP_S = 0.004  # far below any stall timeout the suite uses (≥ 3 s)


@dataclass(frozen=True)
class Rates:
    """Probability of each fate per connection (the rest pass), and the sizes that go with them."""

    delay: float = 0.0
    delay_max: float = 0.3
    trickle: float = 0.0
    reset: float = 0.0
    reset_bytes: int = 4000
    hold: float = 0.0
    mute: float = 0.0

    def draw(self, rng: random.Random) -> str:
        """One connection's fate. Always one draw per connection, so the sequence depends on accept order only."""
        x = rng.random()
        for fate, p in (("reset", self.reset), ("hold", self.hold), ("mute", self.mute), ("delay", self.delay),
                        ("trickle", self.trickle)):
            if x < p:
                return fate
            x -= p
        return "pass"


class Proxy:
    """Accepts on one port and forwards each connection to the target, applying its drawn fate."""

    def __init__(self, target: int, rates: Rates, seed: int) -> None:
        self.target = target
        self.rates = rates
        self.rng = random.Random(seed)
        self.count = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        n = self.count
        fate = self.rates.draw(self.rng)
        # Draw every parameter up front, whatever the fate, so later connections see the same random sequence.
        delay = self.rng.uniform(0, self.rates.delay_max)
        cut_after = self.rng.randrange(0, max(1, self.rates.reset_bytes))
        mute_after = self.rng.randrange(0, 400)
        print(f"proxy: conn {n} {fate}", flush=True)
        try:
            if fate == "hold":
                while await reader.read(CHUNK):
                    pass  # swallowed: the client waits for an answer that never comes
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                _reset(writer)  # the server is away: the client sees what it would have seen, a dead connection
                return
            try:
                await asyncio.gather(
                    self.pipe(reader, up_writer, delay if fate == "delay" else 0.0),
                    self.downstream(up_reader, writer, fate, delay, cut_after, mute_after),
                )
            finally:
                up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        """Client to server, untouched but for an optional first delay."""
        first = True
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK):
                if first and delay:
                    await asyncio.sleep(delay)
                first = False
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fate: str, delay: float,
                         cut_after: int, mute_after: int) -> None:
        """Server to client, where most fates act."""
        sent = 0
        first = True
        while data := await reader.read(CHUNK):
            if first and fate == "delay":
                await asyncio.sleep(delay)
            first = False
            if fate == "reset" and sent + len(data) > cut_after:
                writer.write(data[: cut_after - sent])
                await writer.drain()
                _reset(writer)
                return
            if fate == "mute" and sent + len(data) > mute_after:
                writer.write(data[: max(0, mute_after - sent)])
                await writer.drain()
                sent = mute_after
                while await reader.read(CHUNK):
                    pass  # the server's answer goes nowhere; the client hears nothing more
                return
            if fate == "trickle":
                for i in range(0, len(data), TRICKLE_BYTES):
                    writer.write(data[i:i + TRICKLE_BYTES])
                    await writer.drain()
                    await asyncio.sleep(TRICKLE_GAP_S)
            else:
                writer.write(data)
                await writer.drain()
            sent += len(data)
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) rather than a FIN: what a crashed middlebox or a killed peer looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def serve(listen: int, proxy: Proxy) -> None:
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen, reuse_address=True)
    print(f"proxy: listening on {listen} -> {proxy.target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the proxy until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    for name in ("delay", "trickle", "reset", "hold", "mute"):
        parser.add_argument(f"--{name}", type=float, default=0.0, help=f"probability of `{name}` per connection")
    parser.add_argument("--delay-max", type=float, default=0.3)
    parser.add_argument("--reset-bytes", type=int, default=4000)
    args = parser.parse_args(argv)
    rates = Rates(delay=args.delay, delay_max=args.delay_max, trickle=args.trickle, reset=args.reset,
                  reset_bytes=args.reset_bytes, hold=args.hold, mute=args.mute)
    try:
        asyncio.run(serve(args.listen, Proxy(args.target, rates, args.seed)))
    except OSError as exc:
        print(f"proxy: cannot listen on {args.listen}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
