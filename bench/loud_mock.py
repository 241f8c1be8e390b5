"""`hallurun mock-server`, unchanged except that it prints `mock: wedged` the moment a fault wedges it.

The benchmark counts wedges on the server's side, so that a client that restarts a healthy server (a restart
storm) shows as more restarts than wedges, whoever the client is. Run it as `python -m bench.loud_mock ARGS`
(ARGS as for `hallurun mock-server`), or through the shim `shim_python` writes for hallurun's `--server-python`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from hallurun import cli
from hallurun.server import mock as mock_server

WEDGED_LINE = "mock: wedged"


class _LoudEvent(asyncio.Event):
    def set(self) -> None:
        if not self.is_set():
            print(WEDGED_LINE, flush=True)
        super().set()


def _patch() -> None:
    original = mock_server.MockServer.__init__

    def init(self: mock_server.MockServer, config: mock_server.MockConfig) -> None:
        original(self, config)
        self.wedged = _LoudEvent()

    mock_server.MockServer.__init__ = init  # type: ignore[method-assign]


def main(args: list[str]) -> None:
    """Serve the mock with ARGS as given to `hallurun mock-server`."""
    _patch()
    cli.main(["mock-server", *args])


def shim_python(folder: Path) -> Path:
    """An executable hallurun can take as `--server-python`: it is run as `SHIM -m hallurun mock-server ARGS`
    and serves the loud mock with ARGS, in this same interpreter."""
    repo = Path(__file__).resolve().parent.parent
    shim = folder / "loud-python"
    shim.write_text(f"#!{sys.executable}\n"
                    "import sys\n"
                    f"sys.path.insert(0, {str(repo)!r})\n"
                    "from bench.loud_mock import main\n"
                    "assert sys.argv[1:4] == ['-m', 'hallurun', 'mock-server'], sys.argv\n"
                    "main(sys.argv[4:])\n")
    shim.chmod(0o755)
    return shim


if __name__ == "__main__":
    main(sys.argv[1:])
