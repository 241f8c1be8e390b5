"""The HTTP client against real servers: what it does with the connection once a stream has ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from hallurun.config import Sampling
from hallurun.wire.client import Client
from hallurun.wire.watchdog import Activity, Flight
from tests.conftest import MockServer, start_mock, stop_mock

SAMPLING = Sampling(max_tokens=8)


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    """A mock that streams token by token, each event a write of its own, then `[DONE]`, then the body's end."""
    started = start_mock(tmp_path_factory.mktemp("mock"), "--token-rate", "2000")
    yield started
    stop_mock(started)


async def _sequential(url: str, prompts: list[str]) -> tuple[list[str], int]:
    """Answer the prompts one after another over one session; also return how many connections it opened."""
    opened = 0

    async def count(*_: object) -> None:
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = Client(session, url, "mock", SAMPLING, Activity())
        answers = [(await client.complete(p, Flight(p, time.monotonic()))).text for p in prompts]
    return answers, opened


def test_one_connection_serves_every_request(paced: MockServer) -> None:
    # A response released before the end of its body closes its connection: a client that stops reading at
    # [DONE] opens a new one for every request whose last empty chunk had not arrived yet (against vLLM: 11 of 20).
    answers, opened = asyncio.run(_sequential(paced.url, [f"question {i}" for i in range(30)]))
    assert len(answers) == 30 and all(answers)
    assert opened == 1


def test_an_answer_is_kept_when_the_body_never_ends(tmp_path: Path) -> None:
    # A server that sends [DONE] and then neither ends the body nor closes: the answer is complete, so it is
    # returned once the short wait for the body's end runs out, not cut by a stall verdict later.
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"Paris"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    async def scenario() -> tuple[str, float]:
        released = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            await released.wait()  # the closing empty chunk never comes
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                client = Client(session, f"http://127.0.0.1:{port}", "mock", SAMPLING, Activity())
                began = time.monotonic()
                answer = await client.complete("capital of France?", Flight("1", began))
                return answer.text, time.monotonic() - began
        finally:
            released.set()
            server.close()
            await server.wait_closed()

    text, took = asyncio.run(scenario())
    assert text == "Paris"
    assert took < 5.0  # bounded by the client's wait for the end of the body (1 s), far below any stall window


async def _answer_from(body_end: bytes) -> str:
    """Ask a raw server that streams one finished chunk, no `[DONE]`, then writes `body_end` and closes."""
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"Paris"},"finish_reason":"stop"}]}\n\n'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" + body_end)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}", "mock", SAMPLING, Activity())
            return (await client.complete("capital of France?", Flight("1"))).text
    finally:
        server.close()
        await server.wait_closed()


def test_a_body_that_ends_cleanly_after_a_finish_reason_is_a_whole_answer() -> None:
    # Some OpenAI-compatible servers send no `data: [DONE]`: the chunked body's last chunk ends the answer.
    assert asyncio.run(_answer_from(b"0\r\n\r\n")) == "Paris"


def test_a_body_cut_off_after_a_finish_reason_is_not_an_answer() -> None:
    # The connection closed before the body's last chunk: the read fails, as a connection error to retry.
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(_answer_from(b""))
