"""hallurun: run LLM prompt batches against a supervised server, exactly once.

The Python API (`hallurun.api`): `run`, `run_async`, `resume`, `resume_async`, returning a `RunResult`, and
`evaluate`, returning the metrics (`Evaluated`); `merge`, joining a sharded run's shards; `sweep`, many models over
many tasks; the typed configuration values they take; the error family. They load on first use (PEP 562):
`import hallurun` stays cheap for the command line and the mock server's process, which start often, and
`__version__` never imports aiohttp.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Evaluated",
    "HallurunError",
    "RunConfig",
    "RunHandle",
    "RunOptions",
    "RunResult",
    "RunStopped",
    "Sampling",
    "SamplingOverrides",
    "ServerError",
    "ServerOptions",
    "ServerSpec",
    "Shard",
    "UsageError",
    "__version__",
    "evaluate",
    "merge",
    "resume",
    "resume_async",
    "run",
    "run_async",
    "sweep",
]

# Where each public name lives; read by __getattr__ on first use.
_HOMES = {
    "run": "hallurun.api", "run_async": "hallurun.api", "evaluate": "hallurun.api", "merge": "hallurun.api",
    "sweep": "hallurun.api",
    "Evaluated": "hallurun.eval.evaluate", "resume": "hallurun.api", "resume_async": "hallurun.api",
    "RunResult": "hallurun.core.result", "RunHandle": "hallurun.core.handle",
    "RunConfig": "hallurun.config", "RunOptions": "hallurun.config", "Sampling": "hallurun.config",
    "SamplingOverrides": "hallurun.config", "ServerOptions": "hallurun.config", "ServerSpec": "hallurun.config",
    "ConfigError": "hallurun.config", "Shard": "hallurun.config",
    "HallurunError": "hallurun.errors", "UsageError": "hallurun.errors", "ServerError": "hallurun.errors",
    "RunStopped": "hallurun.errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hallurun' has no attribute {name!r}")
    return getattr(import_module(home), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from hallurun.api import evaluate, merge, resume, resume_async, run, run_async, sweep
    from hallurun.config import (
        ConfigError,
        RunConfig,
        RunOptions,
        Sampling,
        SamplingOverrides,
        ServerOptions,
        ServerSpec,
        Shard,
    )
    from hallurun.core.handle import RunHandle
    from hallurun.core.result import RunResult
    from hallurun.errors import HallurunError, RunStopped, ServerError, UsageError
    from hallurun.eval.evaluate import Evaluated
