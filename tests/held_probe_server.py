"""A stand-in server that never answers its first `--hold N` non-streamed generations (hallurun's readiness
probe), and answers everything after them, streamed or not, as vLLM would. Run as a real process: a connection
that is accepted and never answered, as a half-open one or one a proxy holds.

    python tests/held_probe_server.py --port P --hold 1
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
from aiohttp import web


async def answer_ok(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Answer a generation request with "OK", streamed (SSE, ending in [DONE]) or not, as vLLM would."""
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": "OK"}, "text": "OK",
                  "finish_reason": "stop"}
        return web.Response(body=orjson.dumps({"choices": [choice]}), content_type="application/json")
    piece = {"delta": {"content": "OK"}} if request.path.endswith("/chat/completions") else {"text": "OK"}
    event = {"choices": [{"index": 0, **piece, "finish_reason": "stop"}]}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response


def app(hold: int) -> web.Application:
    """The routes: `/health`, chat and text completions."""
    held = 0

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def generate(request: web.Request) -> web.StreamResponse:
        nonlocal held
        body = orjson.loads(await request.read())
        if not body.get("stream") and held < hold:
            held += 1
            await asyncio.get_running_loop().create_future()  # never answered
        return await answer_ok(request, body)

    application = web.Application()
    application.add_routes([web.get("/health", health), web.post("/v1/chat/completions", generate),
                            web.post("/v1/completions", generate)])
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold", type=int, default=1)
    args = parser.parse_args()
    web.run_app(app(args.hold), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
