"""The run's configuration: one frozen value, built once from typed options, the environment and the task.

What a caller gives is typed too: `SamplingOverrides` over a task's default `Sampling`, a `ServerSpec` (or just
its kind) for a new run, `ServerOptions` and `RunOptions` for what may change on resume; in each, None means
"not given". A misspelt option is a TypeError where the value is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
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
    # The pool: launched servers, each supervised alone ("auto": one per visible GPU, 1 without one). An external
    # pool is `url` and `extra_urls`, one replica per URL.
    replicas: int | Literal["auto"] = 1
    gpus_per_replica: int = 1  # passed to vLLM as --tensor-parallel-size
    extra_urls: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        """The external servers' URLs, one replica each (empty for a launched server)."""
        return (self.url, *self.extra_urls) if self.url else ()


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`: the items at dataset positions p with p mod count == index. By
    position (after --limit), so every item is in exactly one shard, the shards are within one item of the same
    size, a dataset sorted by popularity or length is dealt evenly, and a resumed shard gets the same items."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"--shard {self.index}/{self.count}: give I/N with N ≥ 1 and 0 ≤ I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder(self) -> str:
        """The shard's run folder, inside the shared run folder."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, position: int) -> bool:
        """Whether the item at `position` of the dataset is this shard's."""
        return position % self.count == self.index

    def size(self, total: int) -> int:
        """How many of `total` items are this shard's."""
        return len(range(self.index, total, self.count))

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, as `--shard` takes it."""
        index, slash, count = text.strip().partition("/")
        if not slash or not index.isdecimal() or not count.isdecimal():
            raise ConfigError(f"--shard {text}: give I/N (0-based, as in 0/4), or auto")
        return cls(int(index), int(count))


def shard_from_environment(environ: Mapping[str, str], shards: int | None = None) -> tuple[Shard, str]:
    """`--shard auto`: this task's shard from the scheduler that started it, and the scheduler's name.

    Slurm job arrays (SLURM_ARRAY_TASK_ID over a contiguous range, its bounds and step from SLURM_ARRAY_TASK_MIN,
    _STEP and _COUNT or _MAX), Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX; Kubernetes does not export the
    completions, so `shards` must give N), SkyPilot (SKYPILOT_JOB_RANK of SKYPILOT_NUM_JOBS). `shards`, when
    given, must agree with what the scheduler says. Raises ConfigError (exit 2) when no scheduler says.
    """
    def number(name: str) -> int:
        value = environ.get(name, "")
        if not value.strip().isdecimal():
            raise ConfigError(f"--shard auto: {name}={value!r} is not a whole number")
        return int(value)

    if "SLURM_ARRAY_TASK_ID" in environ:
        task, low = number("SLURM_ARRAY_TASK_ID"), number("SLURM_ARRAY_TASK_MIN")
        step = number("SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
        span = (number("SLURM_ARRAY_TASK_MAX") - low) // max(step, 1) + 1 if "SLURM_ARRAY_TASK_MAX" in environ \
            else None
        count = number("SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in environ else span
        if count is None or step < 1 or (span is not None and span != count) or (task - low) % step:
            raise ConfigError("--shard auto: this Slurm array is not one contiguous range (SLURM_ARRAY_TASK_MIN/"
                              "MAX/STEP/COUNT disagree); submit it as --array=0-<N-1>, or give --shard I/N")
        found, source = Shard((task - low) // step, count), "slurm"
    elif "JOB_COMPLETION_INDEX" in environ:
        if shards is None:
            raise ConfigError("--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job), but Kubernetes "
                              "does not export the number of completions: give it as --shards N")
        index = number("JOB_COMPLETION_INDEX")
        if index >= shards:
            raise ConfigError(f"--shard auto: JOB_COMPLETION_INDEX={index} is not below --shards {shards}; give "
                              "the Job's completions as --shards")
        found, source = Shard(index, shards), "kubernetes"
    elif "SKYPILOT_JOB_RANK" in environ:
        found, source = Shard(number("SKYPILOT_JOB_RANK"), number("SKYPILOT_NUM_JOBS")), "skypilot"
    else:
        raise ConfigError("--shard auto: no scheduler's index in the environment (SLURM_ARRAY_TASK_ID, "
                          "JOB_COMPLETION_INDEX, SKYPILOT_JOB_RANK); give --shard I/N")
    if shards is not None and shards != found.count:
        raise ConfigError(f"--shards {shards}: the {source} job has {found.count} tasks")
    return found, source


def shard_option(text: str | None, shards: int | None, environ: Mapping[str, str]) -> Shard | None:
    """`--shard I/N|auto` and `--shards N` as a Shard (None: not sharded)."""
    if text is None:
        if shards is not None:
            raise ConfigError("--shards N goes with --shard auto (a Kubernetes Indexed Job's completions)")
        return None
    if text.strip() == "auto":
        return shard_from_environment(environ, shards)[0]
    shard = Shard.parse(text)
    if shards is not None and shards != shard.count:
        raise ConfigError(f"--shards {shards} disagrees with --shard {text}")
    return shard


def _given(value: Any) -> dict[str, Any]:
    """The fields of an options value that were given (not None)."""
    return {f.name: v for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None}


@dataclass(frozen=True, kw_only=True)
class SamplingOverrides:
    """Sampling the user gave over a task's defaults; None: not given (the task's default stays)."""

    api: Api | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    def over(self, defaults: Sampling) -> Sampling:
        """`defaults` with what was given here."""
        return dataclasses.replace(defaults, **_given(self))


def sampling_defaults(defaults: Mapping[str, Any]) -> Sampling:
    """A task's default sampling from its task.json `defaults`; keys that are not sampling fields are left out."""
    known = {f.name for f in dataclasses.fields(Sampling)}
    return Sampling(**{k: v for k, v in defaults.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """The server settings that may change between a run and its resumption; None: not given (unchanged)."""

    port: int | None = None
    python: str | None = None
    startup_timeout: float | None = None
    args: tuple[str, ...] | None = None
    replicas: int | Literal["auto"] | None = None
    gpus_per_replica: int | None = None

    def over(self, spec: ServerSpec) -> ServerSpec:
        """`spec` with what was given here."""
        return dataclasses.replace(spec, **_given(self))


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The operational options of a run: how hard it works and how long it waits, not what it asks, so they may
    change between a run and its resumption. None: not given (the default, or what the run had)."""

    concurrency: int | None = None
    stall_timeout: float | None = None
    metrics_interval: float | None = None  # 0: never read the server's /metrics
    request_timeout: float | None = None
    max_attempts: int | None = None
    max_restarts: int | None = None
    restart_wait: float | None = None
    enable_restart: bool | None = None  # HalluLens' ENABLE_SERVER_RESTART
    adaptive_window: bool | None = None  # False: a wedge is --stall-timeout of silence, as before pools

    def over(self, base: RunOptions) -> RunOptions:
        """`base` with what was given here."""
        return dataclasses.replace(base, **self.given())

    def given(self) -> dict[str, Any]:
        """The options given, by RunConfig field name."""
        return _given(self)


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
    shard: Shard | None = None  # this run is one shard of a sharded run (its folder is RUN/shard-I-of-N)
    task_ref: str | None = None  # what --task named (a built-in's name, a folder's or a file's absolute path)
    concurrency: int = 64
    stall_timeout: float = 30.0
    metrics_interval: float = 10.0  # 0: never read the server's /metrics
    request_timeout: float | None = None
    max_attempts: int = 4
    max_restarts: int = 10
    restart_wait: float | None = None  # None: adapt to the observed first startup time
    enable_restart: bool = True
    adaptive_window: bool = True  # the wedge window learns each replica's pace, with stall_timeout its ceiling
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
            (self.server.replicas == "auto" or (isinstance(self.server.replicas, int)
                                                 and self.server.replicas >= 1),
             "--replicas must be a whole number of at least 1, or auto"),
            (self.server.gpus_per_replica >= 1, "--gpus-per-replica must be at least 1"),
            (not (self.server.urls and self.server.replicas not in (1, "auto")),
             "--replicas does not apply to --server-url: each URL given is one replica"),
            (not any(_has_credentials(url) for url in self.server.urls),
             "--server-url must not carry credentials (user:password@): a command line is visible to every user "
             "in `ps`; put a bearer key in HALLURUN_API_KEY instead"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def items_in(self, count: int) -> int:
        """How many of a dataset's `count` items (after --limit) this run answers: its shard's, or all."""
        return count if self.shard is None else self.shard.size(count)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for the manifest (paths as strings)."""
        data = dataclasses.asdict(self)
        data["dataset"] = str(self.dataset)
        data["run_dir"] = str(self.run_dir)
        data["server"]["args"] = list(self.server.args)
        data["server"]["extra_urls"] = list(self.server.extra_urls)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a config from its manifest form."""
        data = dict(data)
        data["sampling"] = Sampling(**data["sampling"])
        server = dict(data["server"])
        server["args"] = tuple(server.get("args", ()))
        server["extra_urls"] = tuple(server.get("extra_urls", ()))
        data["server"] = ServerSpec(**server)
        if data.get("shard") is not None:
            data["shard"] = Shard(**data["shard"])
        data["dataset"] = Path(data["dataset"])
        data["run_dir"] = Path(data["run_dir"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _has_credentials(url: str) -> bool:
    return "@" in urlsplit(url).netloc


def env_restart_settings(environ: Mapping[str, str] | None = None) -> RunOptions:
    """Read HalluLens' restart-protocol variables, keeping their meaning.

    ENABLE_SERVER_RESTART (default true) switches restarts off; SERVER_RESTART_WAIT_TIME sets how long to
    wait for a restarted server. Returns only what is set (the rest not given).
    """
    env = os.environ if environ is None else environ
    enable_restart = restart_wait = None
    flag = env.get("ENABLE_SERVER_RESTART")
    if flag is not None:
        enable_restart = flag.strip().lower() not in {"0", "false", "no", "off"}
    wait = env.get("SERVER_RESTART_WAIT_TIME")
    if wait is not None:
        try:
            restart_wait = float(wait)
        except ValueError:
            raise ConfigError(f"SERVER_RESTART_WAIT_TIME must be a number of seconds, got {wait!r}") from None
    return RunOptions(enable_restart=enable_restart, restart_wait=restart_wait)


def server_spec(server: ServerSpec | ServerKind) -> ServerSpec:
    """The server of a new run: a kind alone launches it with the defaults; a URL means an external server."""
    spec = ServerSpec(kind=server) if isinstance(server, str) else server
    if spec.kind not in ("vllm", "mock", "external"):
        raise ConfigError(f"--server must be vllm, mock or external, got {spec.kind!r}")
    if spec.url:
        spec = dataclasses.replace(spec, kind="external")
    if spec.kind == "external" and not spec.url:
        raise ConfigError("--server external needs --server-url")
    seen: set[str] = set()
    for url in spec.urls:
        if url.rstrip("/") in seen:
            raise ConfigError(f"--server-url {url} is given twice: each URL is one replica")
        seen.add(url.rstrip("/"))
    return spec


def build(*, task: str, dataset: Path, model: str, run_dir: Path, sampling: Sampling | None = None,
          overrides: SamplingOverrides | None = None, evaluator: str | None = None, limit: int | None = None,
          server: ServerSpec | ServerKind = "vllm", options: RunOptions | None = None, retry_failed: bool = False,
          shard: Shard | None = None, task_ref: str | None = None,
          environ: Mapping[str, str] | None = None) -> RunConfig:
    """Build a run's configuration: the task's name, data and default `sampling`, with the user's `overrides`,
    `server` and `options` over them.

    HalluLens' ENABLE_SERVER_RESTART and SERVER_RESTART_WAIT_TIME (from `environ`, default the process's
    environment) apply unless the matching option is given. Invalid values raise ConfigError (exit code 2).
    """
    chosen = (options or RunOptions()).over(env_restart_settings(environ))
    return RunConfig(
        task=task,
        evaluator=evaluator,
        dataset=Path(dataset),
        model=model,
        run_dir=Path(run_dir),
        sampling=(overrides or SamplingOverrides()).over(sampling or Sampling()),
        server=server_spec(server),
        limit=limit,
        shard=shard,
        task_ref=task_ref,
        retry_failed=retry_failed,
        **chosen.given(),
    )


def resumed(config: RunConfig, *, run_dir: Path, dataset: Path, options: RunOptions | None = None,
            server: ServerOptions | None = None, retry_failed: bool = False) -> RunConfig:
    """A run's saved configuration as its resumption runs it: only what may change on resume changes (the
    operational options and the server's launch settings); task, model, sampling and data stay."""
    return dataclasses.replace(config, run_dir=run_dir, dataset=dataset, retry_failed=retry_failed,
                               server=(server or ServerOptions()).over(config.server),
                               **(options or RunOptions()).given())
