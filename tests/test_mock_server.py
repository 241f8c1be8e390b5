"""The mock vLLM server, end to end: a real subprocess on a real port, spoken to over HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from hallurun.cli import main
from hallurun.server.mock import Fault, MockConfig, parse_fault
from hallurun.wire.metrics import RUNNING, TOKENS, WAITING, parse
from tests.conftest import (
    MOCK_STARTUP_DEADLINE,
    MockServer,
    free_port,
    mock_command,
    mock_health,
    start_mock,
    stop_mock,
    wait_until,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = {"model": "test-model", "messages": [{"role": "user", "content": "Who was Ada Lovelace?"}], "seed": 7}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    """A well-behaved server shared by the tests that inject no faults."""
    started = start_mock(tmp_path_factory.mktemp("mock"), "--model", "test-model", "--max-model-len", "64")
    yield started
    stop_mock(started)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., MockServer]]:
    """Start a server with the given CLI arguments; every one started is killed at the end of the test."""
    started: list[MockServer] = []

    def start(*args: str) -> MockServer:
        started.append(start_mock(tmp_path, *args))
        return started[-1]

    yield start
    for each in started:
        stop_mock(each)


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Callable[..., MockServer]]:
    """Start a server from `MockConfig` fields, in a process of its own, for what `hallurun mock-server` has no
    option for (`max_concurrency`); every one started is killed at the end of the test."""
    started: list[MockServer] = []

    def start(**fields: Any) -> MockServer:
        port = free_port()
        arguments = ", ".join(f"{name}={value!r}" for name, value in {"port": port, **fields}.items())
        code = f"from hallurun.server.mock import MockConfig, serve; serve(MockConfig({arguments}))"
        stdout, stderr = tmp_path / f"mock-{port}.out", tmp_path / f"mock-{port}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err)
        started.append(MockServer(proc, port, stdout, stderr))
        wait_until(lambda: proc.poll() is not None or mock_health(started[-1].url) == 200, MOCK_STARTUP_DEADLINE,
                   "the mock to answer /health")
        assert proc.poll() is None, stderr.read_text()
        return started[-1]

    yield start
    for each in started:
        stop_mock(each)


async def _post(url: str, body: Any, timeout: float = 10.0) -> tuple[int, Any, bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.post(url, data=data) as resp:
        return resp.status, resp.headers, await resp.read()


def post(url: str, body: Any) -> tuple[int, Any, bytes]:
    return asyncio.run(_post(url, body))


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


async def raw_post(port: int, path: str, body: Any, wait: float) -> bytes | None:
    """The first bytes a POST gets back within `wait` s: None if not one byte (not even headers), b"" on hang-up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = orjson.dumps(body)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), wait)
    except TimeoutError:
        return None
    finally:
        writer.close()


def events(body: bytes) -> list[Any]:
    """The SSE data payloads, decoded; `[DONE]` stays a string."""
    payloads = [block.removeprefix(b"data: ") for block in body.split(b"\n\n") if block]
    return ["[DONE]" if p == b"[DONE]" else orjson.loads(p) for p in payloads]


def error_type(body: bytes) -> str:
    return orjson.loads(body)["error"]["type"]


async def read_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        return parse(await resp.text())


def ask(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "stream": True}


def long_answer(words: int) -> str:
    """A scripted answer of exactly `words` tokens, so that a stream lasts as long as a test needs."""
    return " ".join(f"w{n}" for n in range(words))


# --- behaving like vLLM ---------------------------------------------------------------------------------------


def test_streaming_chat_has_role_tokens_usage_done_and_is_deterministic(server: MockServer) -> None:
    request = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    texts = []
    for _ in range(2):
        status, headers, body = post(server.url + CHAT, request)
        assert status == 200
        assert headers["Content-Type"].startswith("text/event-stream")
        chunks = events(body)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-1] == "[DONE]"
        usage_chunk, content = chunks[-2], chunks[1:-2]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == len(content)
        assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + len(content)
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "test-model" for c in chunks[:-1])
        assert [c["choices"][0]["finish_reason"] for c in content][:-1] == [None] * (len(content) - 1)
        assert content[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
        assert 4 <= len(content) <= 16
        texts.append("".join(c["choices"][0]["delta"]["content"] for c in content))
    assert texts[0] == texts[1]
    assert not texts[0].startswith(" ")


def test_non_streaming_chat_matches_the_stream_and_honours_max_tokens(server: MockServer) -> None:
    status, _, body = post(server.url + CHAT, HELLO)
    assert status == 200
    reply = orjson.loads(body)
    assert reply["id"].startswith("chatcmpl-")
    assert (reply["object"], reply["model"]) == ("chat.completion", "test-model")
    assert isinstance(reply["created"], int)
    message = reply["choices"][0]["message"]
    assert message["role"] == "assistant"
    usage = reply["usage"]
    assert usage["prompt_tokens"] == 4 + 5  # four words plus the chat template
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    _, _, streamed = post(server.url + CHAT, {**HELLO, "stream": True})
    assert "".join(c["choices"][0]["delta"]["content"] for c in events(streamed)[1:-1]) == message["content"]

    _, _, capped = post(server.url + CHAT, {**HELLO, "max_tokens": 2})
    capped_reply = orjson.loads(capped)
    assert capped_reply["choices"][0]["finish_reason"] == "length"
    assert capped_reply["usage"]["completion_tokens"] == 2


def test_completions_endpoint_plain_and_streamed(server: MockServer) -> None:
    request = {"model": "test-model", "prompt": "The capital of France is", "max_tokens": 30, "temperature": 0}
    status, _, body = post(server.url + COMPLETIONS, request)
    assert status == 200
    reply = orjson.loads(body)
    assert reply["id"].startswith("cmpl-") and reply["object"] == "text_completion"
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop"  # at most 24 tokens, under max_tokens 30
    assert reply["usage"]["prompt_tokens"] == 5

    _, _, streamed = post(server.url + COMPLETIONS, {**request, "stream": True})
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]"
    assert all(c["object"] == "text_completion" and c["choices"][0]["logprobs"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == choice["text"]


def test_rejections_use_vllm_error_shape(server: MockServer) -> None:
    status, _, body = post(server.url + CHAT, {**HELLO, "max_tokens": 60})
    assert status == 400
    error = orjson.loads(body)["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert "maximum context length is 64 tokens" in error["message"]

    status, _, body = post(server.url + CHAT, {**HELLO, "model": "other"})
    assert (status, error_type(body)) == (404, "NotFoundError")
    status, _, body = post(server.url + CHAT, b"{not json")
    assert (status, error_type(body)) == (400, "BadRequestError")
    status, _, body = post(server.url + CHAT, {"model": "test-model"})
    assert (status, error_type(body)) == (400, "BadRequestError")
    status, _, body = post(server.url + COMPLETIONS, {"model": "test-model", "prompt": 3})
    assert (status, error_type(body)) == (400, "BadRequestError")


def test_models_and_metrics(server: MockServer) -> None:
    status, body = get(server.url + "/v1/models")
    assert status == 200
    models = orjson.loads(body)
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "test-model" and models["data"][0]["owned_by"] == "hallurun-mock"

    post(server.url + CHAT, HELLO)
    status, body = get(server.url + "/metrics")
    text = body.decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total",
                 "vllm:prompt_tokens_total", "vllm:kv_cache_usage_perc"):
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
        assert f'{name}{{model_name="test-model"}} ' in text
    generated = next(line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total"))
    assert float(generated.split()[-1]) > 0


def test_latency_delays_the_response(launch: Callable[..., MockServer]) -> None:
    server = launch("--latency", "0.3")
    started = time.monotonic()
    assert post(server.url + CHAT, HELLO)[0] == 200
    assert time.monotonic() - started >= 0.3


def test_listening_line_names_the_faults(launch: Callable[..., MockServer]) -> None:
    server = launch("--fault", "error-rate:0", "--fault", "poison:zzz")
    line = server.stdout.read_text()
    assert f"listening on http://127.0.0.1:{server.port}" in line
    assert "error-rate:0.0" in line and "poison:zzz" in line


# --- faults ---------------------------------------------------------------------------------------------------


def test_hang_after_wedges_generation_but_not_health(launch: Callable[..., MockServer]) -> None:
    server = launch("--fault", "hang-after:2")
    for _ in range(2):
        assert post(server.url + CHAT, {**HELLO, "stream": True})[0] == 200

    assert asyncio.run(raw_post(server.port, CHAT, {**HELLO, "stream": True}, wait=1.0)) is None
    assert asyncio.run(raw_post(server.port, COMPLETIONS, {"prompt": "hi"}, wait=0.5)) is None
    assert mock_health(server.url) == 200
    assert get(server.url + "/v1/models")[0] == 200
    assert 'vllm:num_requests_running{model_name="mock"} 2.0' in get(server.url + "/metrics")[1].decode()


def test_poison_wedges_everything_including_a_running_stream(launch: Callable[..., MockServer]) -> None:
    server = launch("--token-rate", "5", "--fault", "poison:XYZ")

    async def scenario() -> tuple[bytes, bytes, bytes | None, bytes | None]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.post(server.url + CHAT, data=orjson.dumps({**HELLO, "stream": True})) as resp:
            first = await resp.content.readuntil(b"\n\n")  # the role chunk: the stream is running
            poisoned = {"messages": [{"role": "user", "content": "tell me about XYZ"}]}
            poison = await raw_post(server.port, CHAT, poisoned, wait=0.5)
            rest = b""
            try:
                async with asyncio.timeout(1.0):
                    while chunk := await resp.content.read(4096):
                        rest += chunk
            except TimeoutError:
                pass
            bystander = await raw_post(server.port, COMPLETIONS, {"prompt": "innocent"}, wait=0.5)
        return first, rest, poison, bystander

    first, rest, poison, bystander = asyncio.run(scenario())
    assert first.startswith(b"data: ")
    # At 5 tokens/s the stream had 1.5 s for its 4+ tokens; once wedged it may not add one (one may have been
    # on its way before the poison arrived).
    assert rest.count(b"data: ") <= 1
    assert b"[DONE]" not in rest
    assert (poison, bystander) == (None, None)
    assert mock_health(server.url) == 200


def test_crash_after_exits_with_1(launch: Callable[..., MockServer]) -> None:
    server = launch("--fault", "crash-after:1")
    assert post(server.url + CHAT, HELLO)[0] == 200
    assert asyncio.run(raw_post(server.port, CHAT, HELLO, wait=10)) == b""  # hung up without a word
    assert server.proc.wait(timeout=10) == 1
    assert "crash-after" in server.stderr.read_text()


def test_error_rate_1_answers_500(launch: Callable[..., MockServer]) -> None:
    server = launch("--fault", "error-rate:1")
    status, _, body = post(server.url + CHAT, {**HELLO, "stream": True})
    assert (status, error_type(body)) == (500, "InternalServerError")


def test_rate_limit_1_answers_429_with_retry_after(launch: Callable[..., MockServer]) -> None:
    server = launch("--fault", "rate-limit:1")
    status, headers, body = post(server.url + COMPLETIONS, {"prompt": "hi"})
    assert (status, error_type(body)) == (429, "RateLimitError")
    assert headers["Retry-After"] == "1"


def test_stream_error_rate_breaks_streams_in_band(launch: Callable[..., MockServer]) -> None:
    server = launch("--fault", "stream-error-rate:1")
    status, _, body = post(server.url + CHAT, {**HELLO, "stream": True})
    assert status == 200
    chunks = events(body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["error"]["type"] == "InternalServerError"
    assert "[DONE]" not in chunks
    status, _, body = post(server.url + CHAT, HELLO)
    assert (status, error_type(body)) == (500, "InternalServerError")


def test_startup_delay_holds_off_listening(launch: Callable[..., MockServer]) -> None:
    started = time.monotonic()
    launch("--fault", "startup-delay:1")
    assert time.monotonic() - started >= 1.0


def test_fail_start_exits_1_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(mock_command(free_port(), "--fault", "fail-start"), capture_output=True, timeout=30)
    assert done.returncode == 1
    assert b"fail-start" in done.stderr


def test_max_concurrency_lets_k_generations_progress_and_queues_the_rest(
        configured: Callable[..., MockServer]) -> None:
    # At 20 tokens/s: the first stream lasts 1 s, the second 2 s, the queued ones 1 s each. The queue is looked
    # at within the first second, and the two queued are admitted a second apart, in their order of arrival.
    lengths = {"first": 20, "second": 40, "third": 20, "fourth": 20}
    server = configured(token_rate=20.0, max_concurrency=2,
                        script=tuple((name, long_answer(n)) for name, n in lengths.items()))

    async def scenario() -> tuple[list[dict[str, float]], set[str], dict[str, float], dict[str, float],
                                  dict[str, bytes]]:
        loop = asyncio.get_running_loop()
        first_byte: dict[str, float] = {}
        done: dict[str, float] = {}
        bodies: dict[str, bytes] = {}
        two_started = asyncio.Event()

        async def generate(name: str, session: aiohttp.ClientSession) -> None:
            body = b""
            async with session.post(server.url + CHAT, data=orjson.dumps(ask(name))) as resp:
                async for chunk in resp.content.iter_any():
                    first_byte.setdefault(name, loop.time())
                    if len(first_byte) == 2:
                        two_started.set()
                    body += chunk
            done[name] = loop.time()
            bodies[name] = body

        async def queue_holds(count: int, session: aiohttp.ClientSession) -> dict[str, float]:
            # Only the server knows it holds a request; asking it is cheap, and the first stream has a second
            # to go.
            async with asyncio.timeout(30):
                while (metrics := await read_metrics(session, server.url)).get(WAITING) != count and not done:
                    pass
            return metrics

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            streams = [asyncio.create_task(generate(name, session)) for name in ("first", "second")]
            await asyncio.wait_for(two_started.wait(), 30)
            streams.append(asyncio.create_task(generate("third", session)))
            seen = [await queue_holds(1, session)]
            streams.append(asyncio.create_task(generate("fourth", session)))
            seen.append(await queue_holds(2, session))
            started_early = set(first_byte)
            assert not done  # all this within the first stream's second
            await asyncio.gather(*streams)
        return seen, started_early, first_byte, done, bodies

    seen, started_early, first_byte, done, bodies = asyncio.run(scenario())
    assert [(m[RUNNING], m[WAITING]) for m in seen] == [(2, 1), (2, 2)]
    assert started_early == {"first", "second"}  # the queued two had not had one byte
    for name, n in lengths.items():
        chunks = events(bodies[name])
        assert chunks[-1] == "[DONE]" and len(chunks) == 1 + n + 1  # role, tokens, [DONE]
    # Never more than two at once: the third to start did so only once one had ended, the fourth once two had.
    for rank, name in enumerate(sorted(first_byte, key=first_byte.__getitem__)):
        assert sum(end <= first_byte[name] for end in done.values()) >= rank - 1
    assert first_byte["third"] + 0.5 < first_byte["fourth"]  # first come, first served


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        MockConfig(max_concurrency=0)


def test_burst_pauses_every_stream_with_health_green_and_the_counter_still(
        launch: Callable[..., MockServer], tmp_path: Path) -> None:
    script = tmp_path / "script.jsonl"
    script.write_bytes(orjson.dumps({"match": "", "response": long_answer(20)}) + b"\n")
    # Pauses of 1 to 2 s after runs of 0.2 to 0.6 s: a stream of 20 tokens at 20/s (1 s of engine time) meets
    # at least one; a token comes every 0.05 s otherwise.
    server = launch("--token-rate", "20", "--script", str(script), "--fault", "burst:2:0.4", "--seed", "3")

    async def scenario() -> tuple[bytes, list[float], tuple[float, int, float] | None]:
        loop = asyncio.get_running_loop()
        body, gaps, seen = b"", [], None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
                session.post(server.url + CHAT, data=orjson.dumps(ask("tell me"))) as resp:
            last = loop.time()
            while True:
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), 0.4)
                except TimeoutError:
                    # 0.4 s without a token, eight times the pace: a pause, with at least 0.6 s of it to go.
                    if seen is None:
                        before = (await read_metrics(session, server.url))[TOKENS]
                        async with session.get(server.url + "/health") as health:
                            status = health.status
                        seen = (before, status, (await read_metrics(session, server.url))[TOKENS])
                    continue
                if not chunk:
                    break
                now = loop.time()
                gaps.append(now - last)
                last = now
                body += chunk
        return body, gaps, seen

    body, gaps, seen = asyncio.run(scenario())
    assert seen is not None
    before, status, after = seen
    assert status == 200
    assert before == after  # no token counted while paused
    assert max(gaps) >= 0.9  # a pause lasts 1 s at least
    chunks = events(body)
    assert chunks[-1] == "[DONE]" and len(chunks) == 1 + 20 + 1  # the stream then went on to its end
    assert "mock: burst pause of" in server.stderr.read_text()


def test_prefill_delays_a_long_prompts_first_byte_while_others_stream(launch: Callable[..., MockServer]) -> None:
    server = launch("--token-rate", "50", "--fault", "prefill:1")  # 1 s per 1000 characters

    async def scenario() -> dict[str, tuple[float, float]]:
        loop = asyncio.get_running_loop()
        seen: dict[str, tuple[float, float]] = {}  # prompt -> (its first byte, its end), from its send

        async def generate(name: str, content: str, session: aiohttp.ClientSession) -> None:
            sent, first = loop.time(), None
            async with session.post(server.url + CHAT, data=orjson.dumps(ask(content))) as resp:
                async for _ in resp.content.iter_any():
                    first = first or loop.time()
            assert first is not None
            seen[name] = (first - sent, loop.time() - sent)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(generate("long", "x" * 2500, session), generate("short", "hi", session))
        return seen

    seen = asyncio.run(scenario())
    (long_first, _), (short_first, short_end) = seen["long"], seen["short"]
    assert long_first >= 2.5  # the server alone slept that long before the first byte
    assert short_first < long_first
    assert short_end < long_first  # the short stream went from its first token to [DONE] meanwhile


def test_restart_answers_then_exits_0(launch: Callable[..., MockServer]) -> None:
    server = launch()
    status, _, body = post(server.url + "/restart", {})
    assert (status, orjson.loads(body)) == (200, {"status": "restarting"})
    assert server.proc.wait(timeout=10) == 0


# --- fault specs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "fault"), [
    ("hang-after:0", Fault("hang-after", 0)),
    ("crash-after:12", Fault("crash-after", 12)),
    ("error-rate:0.25", Fault("error-rate", 0.25)),
    ("rate-limit:1", Fault("rate-limit", 1.0)),
    ("stream-error-rate:0", Fault("stream-error-rate", 0.0)),
    ("poison:a:b c", Fault("poison", "a:b c")),
    ("startup-delay:2.5", Fault("startup-delay", 2.5)),
    ("fail-start", Fault("fail-start", None)),
    ("burst:2", Fault("burst", (2.0, 10.0))),
    ("burst:1.5:30", Fault("burst", (1.5, 30.0))),
    ("prefill:0.5", Fault("prefill", 0.5)),
])
def test_parse_fault_accepts(spec: str, fault: Fault) -> None:
    assert parse_fault(spec) == fault


@pytest.mark.parametrize("spec", ["", "explode", "hang-after", "hang-after:-1", "hang-after:1.5", "crash-after:x",
                                  "error-rate:1.5", "rate-limit:-0.1", "stream-error-rate:nan", "poison:",
                                  "startup-delay:-1", "startup-delay:inf", "fail-start:1", "burst", "burst:0",
                                  "burst:1:0", "burst:x", "burst:1:2:3", "burst:inf", "prefill:-1", "prefill:x"])
def test_parse_fault_rejects(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_fault(spec)
    assert "\n" not in str(info.value)


def test_a_burst_fault_names_itself_as_it_is_written() -> None:
    assert str(parse_fault("burst:2")) == "burst:2.0:10.0"
    assert parse_fault(str(parse_fault("burst:1.5:30"))) == Fault("burst", (1.5, 30.0))


def test_cli_reports_a_bad_fault() -> None:
    result = CliRunner().invoke(main, ["mock-server", "--fault", "hang-after:soon"])
    assert result.exit_code == 2
    assert "hang-after" in result.output


def test_script_answers_matching_prompts_verbatim(launch: Callable[..., MockServer], tmp_path: Path) -> None:
    script = tmp_path / "script.jsonl"
    verdict = '{"is_abstaining": false}\n  trailing spaces  '
    script.write_bytes(orjson.dumps({"match": "JUDGE-ME", "response": verdict}) + b"\n")
    server = launch("--script", str(script))
    ask = {"messages": [{"role": "user", "content": "please JUDGE-ME now"}], "max_tokens": 2}
    status, _, body = post(server.url + CHAT, {**ask, "stream": True})
    assert status == 200
    chunks = events(body)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == verdict
    status, _, body = post(server.url + CHAT, ask)
    assert orjson.loads(body)["choices"][0]["message"]["content"] == verdict
    status, _, body = post(server.url + CHAT, {"messages": [{"role": "user", "content": "other"}]})
    assert orjson.loads(body)["choices"][0]["message"]["content"] != verdict


def test_cli_reports_a_bad_script(tmp_path: Path) -> None:
    script = tmp_path / "script.jsonl"
    script.write_text('{"match": "a", "response": "b"}\n{"match": 1}\n')
    done = subprocess.run(mock_command(free_port(), "--script", str(script)), capture_output=True, timeout=30)
    assert done.returncode == 2 and f"{script}:2" in done.stderr.decode()
