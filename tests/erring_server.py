"""A stand-in server whose every streamed generation is refused with one HTTP status, run as a real process.

It answers `/health` and a non-streamed generation (hallurun's readiness probe) as vLLM would, so the run
starts, and then answers every streamed request with `--status` (429 with `Retry-After: --retry-after`): a
healthy server that refuses the work, as one overloaded or misconfigured does. The mock server cannot do this:
its error faults hit the readiness probe as well.

    python tests/erring_server.py --port P --status 500
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web


def app(status: int, retry_after: str) -> web.Application:
    """The routes: `/health`, chat and text completions."""

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def generate(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "OK"}, "text": "OK",
                      "finish_reason": "stop"}
            return web.Response(body=orjson.dumps({"choices": [choice]}), content_type="application/json")
        error = {"error": {"message": f"stand-in: every stream gets {status}", "code": status}}
        headers = {"Retry-After": retry_after} if status == 429 else None
        return web.Response(status=status, body=orjson.dumps(error), content_type="application/json",
                            headers=headers)

    application = web.Application()
    application.add_routes([web.get("/health", health), web.post("/v1/chat/completions", generate),
                            web.post("/v1/completions", generate)])
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=500)
    parser.add_argument("--retry-after", default="2")
    args = parser.parse_args()
    web.run_app(app(args.status, args.retry_after), host="127.0.0.1", port=args.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
