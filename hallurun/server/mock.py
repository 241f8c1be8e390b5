"""A fault-injecting stand-in for vLLM's OpenAI-compatible server.

It speaks the parts of vLLM's HTTP API that hallurun uses (`/health`, `/v1/models`, `/metrics`, chat and text
completions, streamed or not) with output that is a pure function of the request, so reruns compare byte for
byte. On demand it misbehaves the ways a real engine does: it wedges while `/health` stays green, crashes,
refuses to start, answers 500 or 429, breaks streams in band, or hangs on a poison prompt. Fault state lives
in the process, so a restarted server starts afresh: bringing it back is the supervisor's job.

It can also be paced like an engine rather than a function: a fixed batch (`max_concurrency`: the rest wait in
a FIFO queue, as in vLLM's, without a body byte), engine-wide pauses (`burst:MAX_S[:EVERY_S]`: every stream stops,
`/health` stays 200 and no generation token is counted) and first tokens that wait on the prompt's length
(`prefill:SECONDS_PER_1000_CHARS`), so that a client's wedge detection meets healthy silences too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import re
import signal
import sys
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
from aiohttp import web

from hallurun.store.jsonl import JsonlError, read_objects

FAULT_KINDS = ("hang-after", "crash-after", "error-rate", "rate-limit", "stream-error-rate", "drop-reused",
               "poison", "stream-stall", "startup-delay", "fail-start", "no-done", "ignore-restarts", "burst",
               "prefill", "fail-restart")
_FLAG_FAULTS = frozenset({"fail-start", "no-done"})  # faults that take no value
_TEXT_FAULTS = frozenset({"poison", "stream-stall", "fail-restart"})
_COUNT_FAULTS = frozenset({"hang-after", "crash-after", "ignore-restarts"})
_PROBABILITY_FAULTS = ("error-rate", "rate-limit", "stream-error-rate")  # order of the per-request draws
_DROP_REUSED = "drop-reused"  # also a probability, drawn only for a request on a kept-alive connection
BURST_EVERY_S = 10.0  # burst:MAX_S without EVERY_S: the engine runs about this long between two pauses

VOCAB = ("the", "model", "answer", "is", "a", "river", "of", "light", "in", "north", "city", "born", "known",
         "for", "and", "its", "old", "stone", "bridge", "year", "first", "people", "long", "song")
DEFAULT_MAX_TOKENS = 16
CHAT_TEMPLATE_TOKENS = 5  # what a chat template adds around the messages
KV_CACHE_SLOTS = 256  # running requests at which the pretend KV cache is full


@dataclass(frozen=True)
class Fault:
    """One injected fault, e.g. `Fault("hang-after", 3)`; `value` is None for `fail-start` and `no-done`, and
    (MAX_S, EVERY_S) for `burst`."""

    kind: str
    value: float | int | str | tuple[float, float] | None

    def __str__(self) -> str:
        if isinstance(self.value, tuple):
            return ":".join((self.kind, *map(str, self.value)))
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class MockConfig:
    """Everything `hallurun mock-server` was asked for."""

    host: str = "127.0.0.1"
    port: int = 8100
    model_name: str | None = None
    latency: float = 0.0
    token_rate: float = 0.0
    max_model_len: int | None = None
    faults: tuple[Fault, ...] = ()
    seed: int = 0
    script: tuple[tuple[str, str], ...] = ()  # (text to find in the prompt, exact answer), first match wins
    api_key: str | None = None  # like vLLM's --api-key: /v1 routes then need `Authorization: Bearer KEY`
    term_delay: float = 0.0  # seconds between a SIGTERM and the exit, like a server shutting down gracefully
    max_concurrency: int | None = None  # generations that progress at once (None: all); the rest wait FIFO

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")


def parse_fault(text: str) -> Fault:
    """Parse one `--fault` value such as `hang-after:3`, `error-rate:0.1`, `poison:TEXT` or `fail-start`."""
    kind, colon, raw = text.partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r} in {text!r}; known: {', '.join(FAULT_KINDS)}")
    if kind in _FLAG_FAULTS:
        if colon:
            raise ValueError(f"fault {kind!r} takes no value, got {text!r}")
        return Fault(kind, None)
    if not raw:
        raise ValueError(f"fault {kind!r} needs a value, as in {kind}:VALUE")
    if kind in _TEXT_FAULTS:
        return Fault(kind, raw)  # TEXT may itself contain colons: only the first one separates
    if kind == "burst":
        return _parse_burst(raw)
    if kind in _COUNT_FAULTS:
        try:
            count = int(raw)
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(f"fault {kind!r} needs a whole number >= 0, got {raw!r}")
        return Fault(kind, count)
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if kind in (*_PROBABILITY_FAULTS, _DROP_REUSED) and not 0 <= number <= 1:
        raise ValueError(f"fault {kind!r} needs a probability between 0 and 1, got {raw!r}")
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"fault {kind!r} needs a number of seconds >= 0, got {raw!r}")
    return Fault(kind, number)


def _parse_burst(raw: str) -> Fault:
    """`burst:MAX_S` or `burst:MAX_S:EVERY_S`, both numbers of seconds > 0."""
    longest, _, every = raw.partition(":")
    try:
        values = (float(longest), float(every) if every else BURST_EVERY_S)
    except ValueError:
        values = (math.nan, math.nan)
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"fault 'burst' needs MAX_S or MAX_S:EVERY_S, seconds > 0, got {raw!r}")
    return Fault("burst", values)


class Batch:
    """The engine's running batch: at most `capacity` generations progress at once (None: no limit), the others
    wait first come, first served, as in vLLM's waiting queue."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.running = 0
        self.queue: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    async def admit(self) -> None:
        """Wait for a place in the batch; the caller must `release` it once its generation is over."""
        if self.capacity is None or (self.running < self.capacity and not self.queue):
            self.running += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self.queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self.release()  # given the place as it was cancelled: pass it on
            elif turn in self.queue:  # a release may have passed over it already
                self.queue.remove(turn)
            raise

    def release(self) -> None:
        """A generation left the batch: its place goes to the longest-waiting request, if any."""
        while self.queue:
            turn = self.queue.popleft()
            if not turn.done():  # one cancelled is still queued until its task runs again
                turn.set_result(None)  # the place changes hands: `running` stays
                return
        self.running -= 1


class ApiError(Exception):
    """A request answered with vLLM's error JSON instead of a completion."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        body = {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.status}}
        return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation request."""

    chat: bool
    model: str
    text: str  # the prompt, or all message contents: what poison matching and token counts look at
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    key: bytes  # everything the output depends on
    scripted: str | None = None  # an answer fixed by --script

    def generate(self) -> tuple[list[str], str]:
        """The completion's tokens and finish reason: the same request always gets the same answer."""
        if self.scripted is not None:
            # Tokens keep their leading spaces so the streamed pieces join back into the exact answer.
            return re.findall(r"\s*\S+\s*$|\s*\S+", self.scripted, flags=re.S) or [""], "stop"
        rng = random.Random(hashlib.sha256(self.key).digest())
        wanted = rng.randint(4, 24)
        tokens = [rng.choice(VOCAB) for _ in range(min(wanted, self.max_tokens))]
        tokens[1:] = [" " + token for token in tokens[1:]]
        return tokens, "length" if wanted > self.max_tokens else "stop"


def load_script(path: str) -> tuple[tuple[str, str], ...]:
    """Read a `--script` file: JSONL records `{"match": TEXT, "response": ANSWER}`.

    A request whose prompt contains TEXT gets ANSWER verbatim, so tests can script a judge's verdicts.
    """
    pairs = []
    for line_no, record in read_objects(path):
        if not (isinstance(record.get("match"), str) and isinstance(record.get("response"), str)):
            raise JsonlError(path, line_no, "needs string fields 'match' and 'response'")
        pairs.append((record["match"], record["response"]))
    return tuple(pairs)


def _exit(code: int) -> NoReturn:
    # os._exit skips buffered output and atexit: flush first so the supervisor's log shows why we went.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class MockServer:
    """Per-process state: arrival count, the wedge, metrics counters and the random source for random faults."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.model = config.model_name or "mock"
        self.faults = {fault.kind: fault.value for fault in config.faults}  # a repeated kind: the last wins
        self.poisons = tuple(str(fault.value) for fault in config.faults if fault.kind == "poison")
        # stream-stall: the first stream in this process whose prompt holds TEXT goes quiet after one token.
        self.stalls = {str(fault.value) for fault in config.faults if fault.kind == "stream-stall"}
        self.rng = random.Random(config.seed)
        self.connections: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()  # those that have served
        self.wedged = asyncio.Event()
        self.stepping = asyncio.Event()  # cleared while a burst pauses the engine
        self.stepping.set()
        self.background: set[asyncio.Task[None]] = set()
        self.batch = Batch(config.max_concurrency)
        self.arrived = 0
        self.restarts_asked = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    def app(self) -> web.Application:
        """The aiohttp application with vLLM's routes plus `/restart`."""
        # Long prompts are the point of some runs.
        app = web.Application(client_max_size=64 * 2**20, middlewares=[self.check_key])
        app.add_routes([
            web.get("/health", self.health),
            web.get("/v1/models", self.models),
            web.get("/metrics", self.metrics),
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/completions", self.completions),
            web.post("/restart", self.restart),
        ])
        app.on_startup.append(self.start_engine)
        return app

    async def start_engine(self, app: web.Application) -> None:
        """Start the burst fault's pauses, if asked for, in the server's loop."""
        burst = self.faults.get("burst")
        if isinstance(burst, tuple):
            task = asyncio.get_running_loop().create_task(self.pause_now_and_then(*burst))
            self.background.add(task)  # the loop keeps only a weak reference to a task

    async def pause_now_and_then(self, longest: float, every: float) -> None:
        """burst: the engine runs for 0.5 to 1.5 x `every` seconds, then stops every stream for 0.5 to 1 x
        `longest` seconds (at least half, so that every pause shows), and so on. The draws come from a source of
        their own, seeded by --seed, so they do not shift the per-request fault draws."""
        rng = random.Random(f"burst:{self.config.seed}")
        while True:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * every)
            pause = rng.uniform(0.5, 1.0) * longest
            print(f"mock: burst pause of {pause:.2f} s", file=sys.stderr, flush=True)
            self.stepping.clear()
            await asyncio.sleep(pause)
            self.stepping.set()

    @web.middleware
    async def check_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """As vLLM with an API key: every /v1 route needs it; /health, /metrics and /restart do not."""
        key = self.config.api_key
        if key and request.path.startswith("/v1") and request.headers.get("Authorization") != f"Bearer {key}":
            return web.Response(status=401, body=orjson.dumps({"error": "Unauthorized"}),
                                content_type="application/json")
        return await handler(request)

    def number(self, kind: str) -> float | None:
        """The value of a numeric fault, or None when it was not asked for."""
        value = self.faults.get(kind)
        return value if isinstance(value, int | float) else None

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "hallurun-mock",
                "root": self.model, "parent": None, "max_model_len": self.config.max_model_len}
        return web.Response(body=orjson.dumps({"object": "list", "data": [card]}), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        escaped = self.model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        label = f'{{model_name="{escaped}"}}'
        lines = []
        for name, kind, value, help_text in (
            ("vllm:num_requests_running", "gauge", self.batch.running,
             "Number of requests in model execution batches."),
            ("vllm:num_requests_waiting", "gauge", self.batch.waiting, "Number of requests waiting to be processed."),
            ("vllm:kv_cache_usage_perc", "gauge", min(self.batch.running / KV_CACHE_SLOTS, 1.0),
             "KV-cache usage. 1 means 100 percent usage."),
            ("vllm:prompt_tokens_total", "counter", self.prompt_tokens_total, "Number of prefill tokens processed."),
            ("vllm:generation_tokens_total", "counter", self.generation_tokens_total,
             "Number of generation tokens processed."),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{label} {float(value)}"]
        return web.Response(body=("\n".join(lines) + "\n").encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def restart(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=orjson.dumps({"status": "restarting"}), content_type="application/json")
        await response.prepare(request)
        await response.write_eof()
        self.restarts_asked += 1
        ignored = self.number("ignore-restarts")
        if ignored is not None and self.restarts_asked <= ignored:
            return response  # said yes, and stays: a restart endpoint that lost the request
        # Go a moment after the reply has left; coming back is the supervisor's job, as with HalluLens' protocol.
        asyncio.get_running_loop().call_later(0.05, _exit, 0)
        return response

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.generate(request, chat=False)

    async def generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        """Validate, count the arrival (which may trip a fault), then answer once latency and faults allow."""
        if self.drops_connection(request):
            return web.Response()  # never sent: the connection is gone
        try:
            job = self.parse(await request.read(), chat)
        except ApiError as exc:
            return exc.response()
        self.arrived += 1
        crash_after = self.number("crash-after")
        if crash_after is not None and self.arrived > crash_after:
            print("mock: crash-after fault, exiting", file=sys.stderr)
            _exit(1)
        hang_after = self.number("hang-after")
        if (hang_after is not None and self.arrived > hang_after) or any(p in job.text for p in self.poisons):
            if not self.wedged.is_set():
                # One line per real wedge, so tests can count the wedges the server really had.
                cause = "poison" if any(p in job.text for p in self.poisons) else "hang-after"
                print(f"mock: wedged ({cause}) at request {self.arrived}", file=sys.stderr, flush=True)
            self.wedged.set()
        failure = self.draw_failure()
        await self.batch.admit()
        try:
            await self.stop_if_wedged()
            if self.config.latency > 0:
                await asyncio.sleep(self.config.latency)
                await self.stop_if_wedged()  # wedged while we slept: this request is stuck like the rest
            if failure == "rate-limit":
                return ApiError(429, "RateLimitError", "mock: rate-limit fault").response({"Retry-After": "1"})
            if failure == "error-rate" or (failure == "stream-error-rate" and not job.stream):
                return ApiError(500, "InternalServerError", f"mock: {failure} fault").response()
            self.prompt_tokens_total += job.prompt_tokens
            if job.stream:
                stall = next((text for text in self.stalls if text in job.text), None)
                if stall is not None:
                    self.stalls.discard(stall)
                    return await self.stream_then_stall(request, job)
                return await self.stream(request, job, broken=failure == "stream-error-rate")
            await self.prefill(job)
            await self.step()
            return self.complete(job)
        finally:
            self.batch.release()

    def drops_connection(self, request: web.Request) -> bool:
        """drop-reused: close a kept-alive connection as a request arrives on it, unanswered, as vLLM does when
        its keep-alive timer fires late under load. The engine never sees the request."""
        probability = self.number(_DROP_REUSED)
        transport = request.transport
        if probability is None or transport is None:
            return False
        reused = transport in self.connections
        self.connections.add(transport)
        if not reused or self.rng.random() >= probability:
            return False
        transport.close()
        return True

    def draw_failure(self) -> str | None:
        """Which random fault, if any, hits this request."""
        failure = None
        for kind in _PROBABILITY_FAULTS:
            probability = self.number(kind)
            if probability is None:
                continue
            # Draw for every configured fault, hit or not, so the sequence depends only on the arrival order.
            hit = self.rng.random() < probability
            if hit and failure is None:
                failure = kind
        return failure

    async def stop_if_wedged(self) -> None:
        """A wedged engine produces nothing, ever; only a new process recovers."""
        if self.wedged.is_set():
            await asyncio.get_running_loop().create_future()

    async def step(self) -> None:
        """An engine step, before each token goes out: none while a burst pauses the engine, none ever once
        wedged."""
        if not self.stepping.is_set():
            await self.stepping.wait()
        await self.stop_if_wedged()

    async def prefill(self, job: GenerationRequest) -> None:
        """prefill: the first token waits in proportion to the prompt's length; only this request waits, the
        other streams go on (as with vLLM's chunked prefill)."""
        per_1000_chars = self.number("prefill")
        if per_1000_chars:
            await asyncio.sleep(per_1000_chars * len(job.text) / 1000)

    def parse(self, raw: bytes, chat: bool) -> GenerationRequest:
        """Check a completion request the way vLLM does, raising ApiError with vLLM's status and type."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "BadRequestError", f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequestError", "request body must be a JSON object")
        requested = body.get("model")
        if self.config.model_name is not None and requested and requested != self.config.model_name:
            raise ApiError(404, "NotFoundError", f"The model `{requested}` does not exist.")
        if chat:
            source = body.get("messages")
            messages = source if isinstance(source, list) else []
            contents = [(m.get("content") or "") if isinstance(m, dict) else None for m in messages]
            if not contents or not all(isinstance(c, str) for c in contents):
                raise ApiError(400, "BadRequestError", "messages must be a non-empty list of {role, content} objects "
                                                       "with string content")
            text = "\n".join(contents)
            prompt_tokens = len(text.split()) + CHAT_TEMPLATE_TOKENS
        else:
            source = body.get("prompt")
            if not isinstance(source, str):
                raise ApiError(400, "BadRequestError", "prompt must be a string")
            text = source
            prompt_tokens = len(text.split())
        max_tokens = body.get("max_tokens")
        if chat and body.get("max_completion_tokens") is not None:
            max_tokens = body["max_completion_tokens"]  # the newer OpenAI name, which vLLM also takes
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ApiError(400, "BadRequestError", f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        limit = self.config.max_model_len
        if limit is not None and prompt_tokens + max_tokens > limit:
            raise ApiError(400, "BadRequestError", (
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."))
        model = self.config.model_name or (requested if isinstance(requested, str) and requested else "mock")
        options = body.get("stream_options")
        key = orjson.dumps([model, source, max_tokens, body.get("temperature"), body.get("top_p"), body.get("seed")],
                           option=orjson.OPT_SORT_KEYS)
        scripted = next((answer for match, answer in self.config.script if match in text), None)
        return GenerationRequest(chat=chat, model=model, text=text, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                   stream=bool(body.get("stream")),
                   include_usage=isinstance(options, dict) and bool(options.get("include_usage")), key=key,
                   scripted=scripted)

    def complete(self, job: GenerationRequest) -> web.Response:
        """The whole answer as one JSON object."""
        tokens, finish = job.generate()
        self.generation_tokens_total += len(tokens)
        text = "".join(tokens)
        content = {"message": {"role": "assistant", "content": text}} if job.chat else {"text": text}
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish}
        body = {"id": _request_id(job), "object": "chat.completion" if job.chat else "text_completion",
                "created": int(time.time()), "model": job.model, "choices": [choice], "usage": _usage(job, tokens)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def stream(self, request: web.Request, job: GenerationRequest, broken: bool) -> web.StreamResponse:
        """Server-sent events, paced at token_rate or all in one write; never a byte more once wedged. As from
        vLLM (uvicorn), the body's closing empty chunk is a write of its own, after `[DONE]`."""
        opening, events, closing = _events(job, broken, done="no-done" not in self.faults)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            # As from vLLM, the headers go out at once and the first body byte (a chat's role chunk too) with the
            # first token, once the prompt is prefilled.
            await self.prefill(job)
            await self.step()
            if self.config.token_rate <= 0:
                # Every event in one write (then the body's end): this path serves throughput benchmarks.
                await response.write(b"".join([opening, *events, closing]))
                self.generation_tokens_total += len(events)
                await response.write_eof()
                return response
            await response.write(opening)
            for event in events:
                await asyncio.sleep(1 / self.config.token_rate)
                await self.step()
                await response.write(event)
                self.generation_tokens_total += 1
            await self.step()
            await response.write(closing)
            # vLLM's server ends the body a moment after [DONE], so a client often reads the two apart: paced here
            # like a token, so that clients meet that case every time.
            await asyncio.sleep(1 / self.config.token_rate)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream, as clients cutting a stalled stream do
        return response


    async def stream_then_stall(self, request: web.Request, job: GenerationRequest) -> web.StreamResponse:
        """Start a stream, send one token, then go quiet for good while the server serves everyone else."""
        opening, events, _ = _events(job, broken=False)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        with contextlib.suppress(ConnectionResetError):
            await response.prepare(request)
            await self.prefill(job)
            await self.step()
            await response.write(opening + events[0])
            await asyncio.get_running_loop().create_future()
        return response


def _request_id(job: GenerationRequest) -> str:
    return f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}"


def _usage(job: GenerationRequest, tokens: list[str]) -> dict[str, int]:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": len(tokens),
            "total_tokens": job.prompt_tokens + len(tokens)}


def _events(job: GenerationRequest, broken: bool, done: bool = True) -> tuple[bytes, list[bytes], bytes]:
    """A stream as (opening, one event per token, closing), so that pacing can sleep between tokens. Without
    `done` (the no-done fault) the body ends after the last event, as some OpenAI-compatible servers do."""
    tokens, finish = job.generate()
    head = {"id": _request_id(job), "object": "chat.completion.chunk" if job.chat else "text_completion",
            "created": int(time.time()), "model": job.model}

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

    def choice(text: str, finish_reason: str | None, first: bool = False) -> dict[str, Any]:
        if not job.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    opening = event([choice("", None, first=True)]) if job.chat else b""
    events = [event([choice(token, finish if i == len(tokens) - 1 else None)]) for i, token in enumerate(tokens)]
    if broken:
        # The engine failed after the 200 went out, so the error can only travel in band, and no [DONE] follows.
        error = {"error": {"message": "mock: stream-error-rate fault", "type": "InternalServerError", "param": None,
                           "code": 500}}
        return opening, events[: len(events) // 2], b"data: " + orjson.dumps(error) + b"\n\n"
    usage = event([], usage=_usage(job, tokens)) if job.include_usage else b""
    return opening, events, usage + (b"data: [DONE]\n\n" if done else b"")


def _on_term(delay: float) -> None:
    """SIGTERM with --term-delay: say so, keep serving, and exit `delay` seconds later (a slow graceful
    shutdown; a delay past the supervisor's grace is a server that ignores SIGTERM until it is KILLed)."""
    print(f"mock: SIGTERM, exiting in {delay:g} s", file=sys.stderr, flush=True)
    asyncio.get_running_loop().call_later(delay, _exit, 0)


async def _main(config: MockConfig, startup_delay: float) -> None:
    if config.term_delay > 0:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _on_term, config.term_delay)
    if startup_delay > 0:
        await asyncio.sleep(startup_delay)  # like vLLM loading weights: connections are refused meanwhile
    server = MockServer(config)
    runner = web.AppRunner(server.app(), access_log=None)  # access logs would dominate a benchmark
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
    except OSError as exc:
        print(f"mock: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    faults = ", ".join(map(str, config.faults)) or "none"
    keyed = "; an API key is required on /v1" if config.api_key else ""
    print(f"mock-server listening on http://{config.host}:{config.port} (faults: {faults}){keyed}", flush=True)
    # No cleanup on the way out: wedged handlers never finish, and the process ending closes every socket.
    await asyncio.Event().wait()


def serve(config: MockConfig) -> None:
    """Run the mock server in the foreground until the process is killed, a fault ends it, or `/restart`."""
    kinds = {fault.kind: fault.value for fault in config.faults}
    if "fail-start" in kinds:
        print("mock: fail-start fault: refusing to start", file=sys.stderr, flush=True)
        raise SystemExit(1)
    marker = kinds.get("fail-restart")
    if isinstance(marker, str):
        # Starts once, then never again: a server whose relaunch fails (a GPU lost, a disk gone), told apart
        # from its first start by a file, since each start is a new process.
        try:
            Path(marker).open("x").close()
        except FileExistsError:
            print(f"mock: fail-restart fault: {marker} exists, refusing to start again", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
    delay = kinds.get("startup-delay")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C in a terminal is the normal way to stop it
        asyncio.run(_main(config, float(delay) if isinstance(delay, int | float) else 0.0))
