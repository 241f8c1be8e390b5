"""A stand-in external server that wedges, loses a `POST /restart`, and drops one health check after each one.

It answers its first `--serve N` generations (hallurun's readiness probe among them), then none: each hangs while
`/health` stays 200, as a wedged vLLM does. `POST /restart` is answered 200 every time, but the first `--lost R`
are not carried out (the request a proxy or a flaky network swallowed on its way in); the next one brings the
generations back. After every `POST /restart` the next `/health` fails once (503), as one dropped health check
would: so hallurun sees the server "go" although it never restarted. Run as a real process:

    python tests/unmoved_server.py --port P --serve 3 --lost 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from aiohttp import web
from held_probe_server import answer_ok  # run as a script from tests/, whose folder is on sys.path


def app(serve: int, lost: int) -> web.Application:
    """The routes: `/health`, `/restart`, chat and text completions."""
    state = {"served": 0, "restarts": 0, "blip": False, "wedged": False}

    async def health(request: web.Request) -> web.Response:
        if state["blip"]:
            state["blip"] = False
            return web.Response(status=503)
        return web.Response()

    async def restart(request: web.Request) -> web.Response:
        state["restarts"] += 1
        state["blip"] = True
        if state["restarts"] > lost:
            state["wedged"] = False
            state["served"] = 0
        print(f"unmoved: POST /restart {state['restarts']} ({'done' if not state['wedged'] else 'lost'})",
              file=sys.stderr, flush=True)
        return web.json_response({"status": "restarting"})

    async def generate(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if state["wedged"] or (state["served"] >= serve and not state["restarts"] > lost):
            state["wedged"] = True
            await asyncio.get_running_loop().create_future()  # never answered: the wedge
        state["served"] += 1
        return await answer_ok(request, body)

    application = web.Application()
    application.add_routes([web.get("/health", health), web.post("/restart", restart),
                            web.post("/v1/chat/completions", generate), web.post("/v1/completions", generate)])
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--serve", type=int, default=3)
    parser.add_argument("--lost", type=int, default=1)
    args = parser.parse_args()
    web.run_app(app(args.serve, args.lost), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
