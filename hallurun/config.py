"""The run's configuration: one frozen value, built once from options, the environment and the task."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from hallurun.errors import UsageError

Api = Literal["chat", "completions"]
ServerKind = Literal["vllm", "mock", "external"]


class ConfigError(UsageError):
    """A configuration value is invalid; reported as bad usage (exit code 2)."""


@dataclass(frozen=True)
class Sampling:
    """How the model is asked: part of a run's identity, so `resume` may not change it."""

    api: Api = "chat"
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class ServerSpec:
    """Which server answers and how hallurun launches it."""

    kind: ServerKind = "vllm"
    url: str | None = None  # set for `external`; derived from host and port otherwise
    host: str = "127.0.0.1"
    port: int | None = None  # None: hallurun picks a free port
    python: str | None = None  # interpreter that has vLLM; None: the current one
    args: tuple[str, ...] = ()  # appended to the server command
    startup_timeout: float = 900.0


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. Built once; never mutated."""

    task: str
    dataset: Path
    model: str
    run_dir: Path
    evaluator: str | None = None  # how `hallurun eval` scores this task's answers (from task.json)
    sampling: Sampling = field(default_factory=Sampling)
    server: ServerSpec = field(default_factory=ServerSpec)
    limit: int | None = None
    concurrency: int = 64
    stall_timeout: float = 30.0
    metrics_interval: float = 10.0  # 0: never read the server's /metrics
    request_timeout: float | None = None
    max_attempts: int = 4
    max_restarts: int = 10
    restart_wait: float | None = None  # None: adapt to the observed first startup time
    enable_restart: bool = True
    retry_failed: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.stall_timeout > 0, "--stall-timeout must be positive"),
            (self.metrics_interval >= 0, "--metrics-interval must not be negative"),
            (self.request_timeout is None or self.request_timeout > 0, "--request-timeout must be positive"),
            (self.max_attempts >= 1, "--max-attempts must be at least 1"),
            (self.max_restarts >= 0, "--max-restarts must not be negative"),
            (self.restart_wait is None or self.restart_wait > 0, "--restart-wait must be positive"),
            (self.limit is None or self.limit >= 0, "--limit must not be negative"),
            (self.sampling.max_tokens >= 1, "--max-tokens must be at least 1"),
            (self.sampling.temperature >= 0, "--temperature must not be negative"),
            (0 < self.sampling.top_p <= 1, "--top-p must be above 0 and at most 1"),
            (self.server.startup_timeout > 0, "--startup-timeout must be positive"),
            (self.server.port is None or 0 < self.server.port < 65536, "--port must be between 1 and 65535"),
            (self.server.url is None or not _has_credentials(self.server.url),
             "--server-url must not carry credentials (user:password@): a command line is visible to every user "
             "in `ps`; put a bearer key in HALLURUN_API_KEY instead"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for the manifest (paths as strings)."""
        data = dataclasses.asdict(self)
        data["dataset"] = str(self.dataset)
        data["run_dir"] = str(self.run_dir)
        data["server"]["args"] = list(self.server.args)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a config from its manifest form."""
        data = dict(data)
        data["sampling"] = Sampling(**data["sampling"])
        server = dict(data["server"])
        server["args"] = tuple(server.get("args", ()))
        data["server"] = ServerSpec(**server)
        data["dataset"] = Path(data["dataset"])
        data["run_dir"] = Path(data["run_dir"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _has_credentials(url: str) -> bool:
    return "@" in urlsplit(url).netloc


def env_restart_settings(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, Any]:
    """Read HalluLens' restart-protocol variables, keeping their meaning.

    ENABLE_SERVER_RESTART (default true) switches restarts off; SERVER_RESTART_WAIT_TIME sets how long to
    wait for a restarted server. Returns only the keys that are set.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    flag = env.get("ENABLE_SERVER_RESTART")
    if flag is not None:
        out["enable_restart"] = flag.strip().lower() not in {"0", "false", "no", "off"}
    wait = env.get("SERVER_RESTART_WAIT_TIME")
    if wait is not None:
        try:
            out["restart_wait"] = float(wait)
        except ValueError:
            raise ConfigError(f"SERVER_RESTART_WAIT_TIME must be a number of seconds, got {wait!r}") from None
    return out


def build(task: Any, *, model: str, run_dir: Path, dataset: Path | None = None, limit: int | None = None,
          sampling: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
          operational: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> RunConfig:
    """Build a run's configuration: the task's defaults, overridden by what the user gave.

    `task` is a `hallurun.tasks.registry.Task`; None values in the option dicts mean "not given". HalluLens'
    ENABLE_SERVER_RESTART and SERVER_RESTART_WAIT_TIME apply unless the matching option is given.
    """
    given = {k: v for k, v in (sampling or {}).items() if v is not None}
    sampling_fields = {f.name for f in dataclasses.fields(Sampling)}
    defaults = {k: v for k, v in task.defaults.items() if k in sampling_fields}
    server_opts = {k: v for k, v in (server or {}).items() if v is not None}
    if server_opts.get("url"):
        server_opts["kind"] = "external"
    if server_opts.get("kind") == "external" and not server_opts.get("url"):
        raise ConfigError("--server external needs --server-url")
    ops = env_restart_settings(environ)
    ops.update({k: v for k, v in (operational or {}).items() if v is not None})
    return RunConfig(
        task=task.name,
        evaluator=task.evaluator,
        dataset=Path(dataset) if dataset is not None else task.dataset,
        model=model,
        run_dir=run_dir,
        sampling=Sampling(**{**defaults, **given}),
        server=ServerSpec(**server_opts),
        limit=limit,
        **ops,
    )
