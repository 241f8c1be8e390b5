"""SPEC.toml: what a sweep runs. Read once into typed values; a bad key is one line naming it (exit 2).

    folder = "runs/compare-8b"          # optional: the sweep's folder, from where hallurun runs [default:
                                        # runs/<spec file's stem>]; task files and files in `args` are found
                                        # from the spec's own folder
    tasks = ["precisewikiqa", "mixedentities"]   # built-in names, task folders or prompt files
    limit = 500                         # optional: items per task (a model's own `limit` wins)

    [sampling]                          # optional, over each task's defaults: max_tokens, temperature, top_p, seed, api
    [options]                           # optional: concurrency, stall_timeout, max_attempts, max_restarts, ...

    [[models]]                          # one table per model, run in this order
    name = "meta-llama/Llama-3.1-8B-Instruct"
    label = "llama-8b"                  # optional: its folders' and the report's name [default: from `name`]
    server = "vllm"                     # vllm (launched) | mock | external (give `url`, one or a list)
    args = ["--max-model-len", "8192"]  # the server command's arguments
    replicas = 1                        # or "auto"; gpus_per_replica = 1
    limit = 100

    [judge]                             # optional [default: the heuristic judge]
    model = "meta-llama/Llama-3.1-70B-Instruct"   # or "heuristic"
    server = "vllm"                     # or url = "http://host:8000"
    args = ["--tensor-parallel-size", "4"]
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallurun.config import RunOptions, SamplingOverrides, ServerKind, ServerSpec
from hallurun.errors import UsageError


class SpecError(UsageError):
    """A sweep spec that cannot be run: one line naming the file and the key (exit 2)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a sweep: how its server is launched (or reached), and how many items of each task."""

    name: str
    label: str
    server: ServerSpec
    limit: int | None = None


@dataclass(frozen=True)
class JudgeSpec:
    """The sweep's judge: a model (its server launched, or at `url`), or None for the heuristic judge."""

    model: str | None = None
    url: str | None = None
    server: ServerSpec = field(default_factory=ServerSpec)

    @property
    def name(self) -> str:
        return self.model or "heuristic"


@dataclass(frozen=True)
class SweepSpec:
    """A whole sweep: every task for every model, then one judge for every run."""

    source: Path
    folder: Path
    tasks: tuple[str, ...]
    models: tuple[ModelSpec, ...]
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    limit: int | None = None
    sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    options: RunOptions = field(default_factory=RunOptions)

    def identity(self) -> dict[str, Any]:
        """What a sweep's results depend on (the options aside), as JSON: kept in the sweep's folder, so that a
        spec changed under it is found."""
        return {
            "tasks": list(self.tasks), "limit": self.limit, "sampling": dataclasses.asdict(self.sampling),
            "models": [_model_identity(m) for m in self.models],
            "judge": {"model": self.judge.model, "url": self.judge.url, "server": _server_identity(self.judge.server)},
        }


def _server_identity(server: ServerSpec) -> dict[str, Any]:
    return {"kind": server.kind, "urls": list(server.urls), "args": list(server.args)}


def _model_identity(model: ModelSpec) -> dict[str, Any]:
    return {"name": model.name, "label": model.label, "limit": model.limit, "server": _server_identity(model.server)}


_SAMPLING = {"api": str, "max_tokens": int, "temperature": float, "top_p": float, "seed": int}
_OPTIONS = {"concurrency": int, "stall_timeout": float, "metrics_interval": float, "request_timeout": float,
            "max_attempts": int, "max_restarts": int, "restart_wait": float, "adaptive_window": bool}
_SERVER_KEYS = {"server", "url", "args", "replicas", "gpus_per_replica", "port", "python", "startup_timeout"}
_MODEL_KEYS = {"name", "label", "limit", *_SERVER_KEYS}
_JUDGE_KEYS = {"model", *_SERVER_KEYS}
_TOP_KEYS = {"folder", "tasks", "limit", "sampling", "options", "models", "judge"}


class _Reader:
    """Typed reads of a TOML table, each failure one SpecError naming the file and the key."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"{self.source}: {key}: {problem}")

    def known(self, table: dict[str, Any], keys: set[str], where: str) -> None:
        for key in table:
            if key not in keys:
                raise self.fail(f"{where}{key}", f"unknown key; use one of {', '.join(sorted(keys))}")

    def get(self, table: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise self.fail(f"{where}{key}", f"must be {_KIND_NAMES[kind]}, not {type(value).__name__} {value!r}")
        return value

    def strings(self, table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}{key}", "must be a string or a list of strings")
        return tuple(value)


_KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


def load(source: Path) -> SweepSpec:
    """Read and check a sweep spec. Raises SpecError (exit 2): one line naming the file and the key."""
    try:
        data = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML ({exc})") from None
    read = _Reader(source)
    read.known(data, _TOP_KEYS, "")
    tasks = read.strings(data, "tasks", "")
    if not tasks:
        raise read.fail("tasks", "give at least one task (a built-in name, a task folder or a prompt file)")
    if len(set(tasks)) != len(tasks):
        raise read.fail("tasks", "a task is named twice")
    base = source.parent
    tasks = tuple(t if "/" not in t and not t.endswith(".jsonl") else str((base / t).resolve()) for t in tasks)
    models_data = read.get(data, "models", list, "", [])
    if not models_data:
        raise read.fail("models", "give at least one [[models]] table")
    models = tuple(_model(read, table, f"models[{i}].", base) for i, table in enumerate(models_data))
    labels = [m.label for m in models]
    if dup := next((label for label in labels if labels.count(label) > 1), None):
        raise read.fail("models", f"two models have the label {dup!r}; give each a `label` of its own")
    sampling_data = read.get(data, "sampling", dict, "", {})
    read.known(sampling_data, set(_SAMPLING), "sampling.")
    sampling = SamplingOverrides(**{k: read.get(sampling_data, k, kind, "sampling.")
                                    for k, kind in _SAMPLING.items() if k in sampling_data})
    if sampling.api is not None and sampling.api not in ("chat", "completions"):
        raise read.fail("sampling.api", "must be chat or completions")
    options_data = read.get(data, "options", dict, "", {})
    read.known(options_data, set(_OPTIONS), "options.")
    options = RunOptions(**{k: read.get(options_data, k, kind, "options.")
                            for k, kind in _OPTIONS.items() if k in options_data})
    folder = Path(read.get(data, "folder", str, "", "") or Path("runs") / source.stem)
    return SweepSpec(source=source, folder=folder, tasks=tasks, models=models,
                     judge=_judge(read, read.get(data, "judge", dict, "", {}), base),
                     limit=_limit(read, data, ""), sampling=sampling, options=options)


def _limit(read: _Reader, table: dict[str, Any], where: str) -> int | None:
    limit = read.get(table, "limit", int, where)
    if limit is not None and limit < 1:
        raise read.fail(f"{where}limit", "must be at least 1")
    return limit


def _server(read: _Reader, table: dict[str, Any], where: str, base: Path) -> ServerSpec:
    kind = read.get(table, "server", str, where, "vllm")
    urls = read.strings(table, "url", where)
    if kind not in ("vllm", "mock", "external"):
        raise read.fail(f"{where}server", "must be vllm, mock or external")
    if urls:
        kind = "external"
    elif kind == "external":
        raise read.fail(f"{where}url", "server = \"external\" needs the server's url")
    replicas = table.get("replicas", 1)
    if replicas != "auto" and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
        raise read.fail(f"{where}replicas", "must be a whole number of at least 1, or \"auto\"")
    server_kind: ServerKind = kind
    # Paths given to the mock (--script FILE) are the spec's own neighbours, wherever the sweep is run from.
    args = tuple(str((base / a).resolve()) if a.endswith((".jsonl", ".json")) and not Path(a).is_absolute() else a
                 for a in read.strings(table, "args", where))
    spec = ServerSpec(kind=server_kind, url=urls[0] if urls else None, extra_urls=urls[1:], args=args,
                      replicas=replicas, gpus_per_replica=read.get(table, "gpus_per_replica", int, where, 1),
                      port=read.get(table, "port", int, where), python=read.get(table, "python", str, where),
                      startup_timeout=read.get(table, "startup_timeout", float, where, 900.0))
    return spec


def _model(read: _Reader, table: Any, where: str, base: Path) -> ModelSpec:
    if not isinstance(table, dict):
        raise read.fail(where.rstrip("."), "must be a table ([[models]])")
    read.known(table, _MODEL_KEYS, where)
    name = read.get(table, "name", str, where)
    if not name:
        raise read.fail(f"{where}name", "missing: the model, as its server knows it")
    label = read.get(table, "label", str, where) or re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/").split("/")[-1])
    if not re.fullmatch(r"[A-Za-z0-9._-]+", label):
        raise read.fail(f"{where}label", "letters, digits, '.', '_' and '-' only (it names folders)")
    return ModelSpec(name=name, label=label, server=_server(read, table, where, base), limit=_limit(read, table, where))


def _judge(read: _Reader, table: dict[str, Any], base: Path) -> JudgeSpec:
    read.known(table, _JUDGE_KEYS, "judge.")
    model = read.get(table, "model", str, "judge.")
    server = _server(read, table, "judge.", base) if table else ServerSpec()
    if model in (None, "heuristic") and not server.urls:
        if set(table) - {"model"}:
            raise read.fail("judge", "the heuristic judge takes no server settings")
        return JudgeSpec()
    return JudgeSpec(model=model, url=server.url, server=server)
