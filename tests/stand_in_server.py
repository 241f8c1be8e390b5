"""A stand-in for vLLM that misbehaves the way some real servers do when they are stopped.

Launched by hallurun as `--server vllm --server-python WRAPPER`, where WRAPPER runs this file with the
interpreter of these tests: it receives vLLM's command line (`-m vllm.entrypoints.openai.api_server --model M
--host H --port P ...`), takes its own flags out of it, and then becomes `hallurun mock-server` with the rest,
so it speaks vLLM's API. Its own flags:

  --ignore-sigterm  ignore SIGTERM (kept across the exec, like a server stuck in a C extension)
  --setsid-child    first start a helper in a session of its own that lingers, as a daemonizing helper or a
                    worker pool does; it inherits the environment, HALLURUN_RUN_DIR included
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

OWN_FLAGS = ("--ignore-sigterm", "--setsid-child")


def write_wrapper(directory: Path) -> Path:
    """An executable that hallurun can run as `--server-python`: it runs this file with these tests' Python."""
    wrapper = directory / "stand-in-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def main(argv: list[str]) -> None:
    """Drop vLLM's `-m MODULE`, act on our own flags, exec the mock server with the remaining arguments."""
    if argv[:1] == ["-m"]:
        argv = argv[2:]
    flags = {a for a in argv if a in OWN_FLAGS}
    rest = [a for a in argv if a not in OWN_FLAGS]
    if "--setsid-child" in flags:
        # Leaves the server's group and session: no group signal reaches it, and it outlives its parent.
        subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True,
                         stdin=subprocess.DEVNULL)
    if "--ignore-sigterm" in flags:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.execv(sys.executable, [sys.executable, "-m", "hallurun", "mock-server", *rest])


if __name__ == "__main__":
    main(sys.argv[1:])
