"""How hallurun launches each kind of server: its command line, its environment, and vLLM's CPU defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from hallurun.config import RunConfig

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
CPU_KVCACHE_GIB = "1"  # without it vLLM's CPU build asks for more memory than a NUMA node has free
CPU_MAX_MODEL_LEN = 4096  # a context whose KV cache fits CPU_KVCACHE_GIB for common 7-8B models
TINY = "tiny"
TRAINED = "trained"  # hallurun/server/trained_model.py
# vLLM closes a connection idle for 5 s by default. Under load its event loop can fire that timer after the next
# request has arrived, dropping up to 200 connections at once; hallurun is its launched server's only client
# and keeps at most `--concurrency` + 8 connections, which it closes itself after 15 s idle (aiohttp's default).
KEEP_ALIVE_S = "60"


@dataclass(frozen=True)
class Launch:
    """A server command and the variables it needs beyond hallurun's own environment."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def has_nvidia_gpu() -> bool:
    """True when an NVIDIA driver answers; then vLLM runs on the GPU and needs no CPU defaults."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def model_path(model: str, *, build_tiny: bool = True) -> str:
    """What the server loads: the built model for `tiny` or `trained` (built on first use), else the name as given."""
    if model not in (TINY, TRAINED):
        local = Path(model).expanduser()
        # The server runs in the run directory, so a relative local path must be made absolute.
        return str(local.resolve()) if local.exists() else model
    if model == TRAINED:
        from hallurun.server import trained_model

        return trained_model.resolve(model) if build_tiny else str(trained_model.model_dir())
    from hallurun.server import tiny_model

    if not build_tiny:
        return str(tiny_model.cache_dir() / tiny_model.TINY_DIR)
    return tiny_model.resolve(model)


def _has_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _context_length(model: str) -> int | None:
    """A local model's own maximum context, from its config.json."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    try:
        value = orjson.loads(config.read_bytes()).get("max_position_embeddings")
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, int) else None


def command(config: RunConfig, port: int, *, gpu: bool | None = None, environ: dict[str, str] | None = None,
            build_tiny: bool = True, cpus: tuple[int, ...] = ()) -> Launch:
    """The command and extra environment for the configured server, listening on `port`."""
    spec = config.server
    python = spec.python or sys.executable
    if "/" in python:
        python = str(Path(python).expanduser().absolute())  # absolute: the server runs in the run directory
    args = spec.args
    if spec.kind == "mock":
        return Launch([python, "-m", "hallurun", "mock-server", "--model", config.model, "--host", spec.host,
                       "--port", str(port), *args])
    if spec.kind != "vllm":
        raise ValueError("an external server is not launched by hallurun")
    env_now = os.environ if environ is None else environ
    path = model_path(config.model, build_tiny=build_tiny)
    cmd = [python, "-m", VLLM_MODULE, "--model", path, "--host", spec.host, "--port", str(port)]
    if path != config.model and not _has_flag(args, "--served-model-name"):
        cmd += ["--served-model-name", config.model]  # requests keep using the name the user gave
    if spec.gpus_per_replica > 1 and not (_has_flag(args, "--tensor-parallel-size") or _has_flag(args, "-tp")):
        cmd += ["--tensor-parallel-size", str(spec.gpus_per_replica)]  # the replica's own GPUs, one model copy
    env: dict[str, str] = {}
    if "VLLM_HTTP_TIMEOUT_KEEP_ALIVE" not in env_now:
        env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = KEEP_ALIVE_S
    notes: list[str] = []
    if not (has_nvidia_gpu() if gpu is None else gpu):
        # CPU defaults, each skipped when the user set it (after `--` or in the environment).
        if "VLLM_CPU_KVCACHE_SPACE" not in env_now:
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
        ranks = spec.gpus_per_replica  # on the CPU, --tensor-parallel-size ranks: one list of cores each
        groups = [cpus[i * len(cpus) // ranks:(i + 1) * len(cpus) // ranks] for i in range(ranks)]
        if cpus and all(groups) and "VLLM_CPU_OMP_THREADS_BIND" not in env_now:
            # This replica's own cores (server.pool.cpu_shares), not the ones every replica would pick.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, g)) for g in groups)
        if not _has_flag(args, "--max-model-len"):
            own = _context_length(path)
            cmd += ["--max-model-len", str(min(own, CPU_MAX_MODEL_LEN) if own else CPU_MAX_MODEL_LEN)]
        notes.append("no NVIDIA GPU: vLLM's CPU defaults applied (override them after `--`)")
    return Launch([*cmd, *args], env, tuple(notes))
