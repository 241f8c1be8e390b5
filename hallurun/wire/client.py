"""The HTTP client: one streaming OpenAI-style request per call, over a shared aiohttp session.

It reports every byte it sees to the watchdog's clocks (the server's `Activity` and the request's `Flight`)
and turns each way a request can fail into a `RequestError` with a reason, leaving the decisions to others.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from hallurun.config import Sampling
from hallurun.wire.policy import RequestError, classify_status
from hallurun.wire.watchdog import Activity, Flight


@dataclass(frozen=True, slots=True)
class Completion:
    """What came back for one prompt."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def request_body(model: str, prompt: str, sampling: Sampling, *, stream: bool = True) -> dict[str, Any]:
    """The JSON body for a prompt: one user message for `chat`, the raw prompt for `completions`."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def endpoint(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


class Client:
    """Sends prompts to one server and parses the SSE stream."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str, sampling: Sampling,
                 activity: Activity, api_key: str | None = None) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + endpoint(sampling.api)
        self._model = model
        self._sampling = sampling
        self._activity = activity
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def retarget(self, base_url: str) -> None:
        """Point at a relaunched server (its port may differ)."""
        self._url = base_url.rstrip("/") + endpoint(self._sampling.api)

    async def complete(self, prompt: str, flight: Flight) -> Completion:
        """Run one attempt. Raises RequestError, or aiohttp.ClientError for connection failures."""
        loop = asyncio.get_running_loop()
        body = orjson.dumps(request_body(self._model, prompt, self._sampling))
        async with self._session.post(self._url, data=body, headers=self._headers) as resp:
            self._activity.touch(loop.time())
            if resp.status != 200:
                text = await resp.text(errors="replace")
                self._activity.touch(loop.time())
                raise classify_status(resp.status, text, resp.headers.get("Retry-After"))
            return await self._read_stream(resp, flight, loop)

    async def _read_stream(self, resp: aiohttp.ClientResponse, flight: Flight,
                           loop: asyncio.AbstractEventLoop) -> Completion:
        # Per network read only the clocks are touched; the events are parsed once, at the end, in one JSON
        # call. A real server sends one read per token, and parsing as they came cost more than the request.
        # Any body byte counts as data: headers alone (a request queued in the server) do not.
        reads: list[bytes] = []
        async for chunk in resp.content.iter_any():
            now = loop.time()
            self._activity.touch(now)
            flight.data(now)
            reads.append(chunk)
            # Stop at the end marker, a line of its own (an answer may well contain the text "[DONE]"); one split
            # across more than two reads is found at the end of the body instead.
            if b"[DONE]" in chunk and _DONE_LINE.search(b"".join(reads[-2:])):
                await _drain(resp.content)
                break
        # Here the stream either held [DONE] or its body ended cleanly: a body cut short (a chunked body without
        # its last chunk, a reset) raises from the read instead, as a connection failure.
        body = b"".join(reads)
        payloads = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")]
        answer = StreamedAnswer(chat=self._sampling.api == "chat")
        if answer.feed(payloads) or answer.finished:
            return answer.completion()
        raise RequestError("incomplete_stream", "stream ended before [DONE] or a finish_reason", retryable=True)


_DONE_LINE = re.compile(rb"^data: ?\[DONE\]\r?$", re.MULTILINE)
# How long to wait, after [DONE], for the end of the body: it follows at once from a well-behaved server.
_DRAIN_S = 1.0


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what follows the `[DONE]` line (the chunked body's last, empty chunk), so the connection goes back to
    the pool. aiohttp closes a connection released before the end of its body, and against vLLM that was every
    other request: a new connection each time, which the server pays for. The answer is complete already, so a
    server that never ends the body, or breaks the connection, costs at most `_DRAIN_S` and the connection."""
    if content.at_eof():
        return
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_S):
            await content.read()


class StreamedAnswer:
    """The answer being assembled from SSE data payloads (no I/O: the client feeds it what it reads)."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, payloads: list[bytes]) -> bool:
        """Take consecutive `data:` payloads; True once the stream is complete (`[DONE]` was among them)."""
        done = b"[DONE]" in payloads
        if done:
            payloads = payloads[:payloads.index(b"[DONE]")]
        for chunk in _parse_all(payloads):
            if "error" in chunk:
                # vLLM reports failures in-band after the HTTP 200 has gone out (and then still sends [DONE]).
                raise RequestError("stream_error", f"in-band error: {_error_text(chunk['error'])}",
                                   retryable=True)
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
                if piece:
                    self.parts.append(piece)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        return done

    @property
    def finished(self) -> bool:
        """Whether the answer has ended (a choice gave its finish_reason). With a body that ended cleanly, that
        is a whole answer even without `[DONE]`, which some OpenAI-compatible servers never send."""
        return self.finish_reason is not None

    def completion(self) -> Completion:
        return Completion("".join(self.parts), self.finish_reason, *_usage(self.usage))


def _parse_all(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Parse JSON payloads in one call (as one array); on failure, name the payload at fault."""
    if not payloads:
        return []
    try:
        chunks = orjson.loads(b"[" + b",".join(payloads) + b"]")
    except orjson.JSONDecodeError:
        chunks = None
    if chunks is None or len(chunks) != len(payloads) or not all(isinstance(c, dict) for c in chunks):
        # Joining can hide a payload's fault (an empty one, or `1,2` reading as two): parse each on its own.
        chunks = []
        for payload in payloads:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                chunk = None
            if not isinstance(chunk, dict):
                raise RequestError("bad_stream", f"unparseable SSE data: {payload[:200]!r}", retryable=True)
            chunks.append(chunk)
    return chunks


def _usage(usage: dict[str, Any] | None) -> tuple[int | None, int | None]:
    if not usage:
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]
