"""Which GPUs this process may use, and how a pool of server replicas is laid out on them.

`visible_gpus` reads CUDA_VISIBLE_DEVICES the way CUDA does (or asks the driver when it is unset); `plan` turns
`--replicas N|auto` and `--gpus-per-replica K` into one `Placement` per replica, each with its own
CUDA_VISIBLE_DEVICES and a tensor parallel size of K.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from hallurun.config import ConfigError

VARIABLE = "CUDA_VISIBLE_DEVICES"
Source = Literal["CUDA_VISIBLE_DEVICES", "driver", "none"]
_UUID_PREFIXES = ("GPU-", "MIG-")
# CUDA reads an index like C's strtoul: an optional sign, then digits; what follows the digits is ignored.
_INDEX = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Visible:
    """The GPUs this process may use, where that came from, and why some named ones are not usable."""

    gpus: tuple[str, ...]
    source: Source  # CUDA_VISIBLE_DEVICES when set, else the driver when it answers, else none
    setting: str | None = None  # CUDA_VISIBLE_DEVICES as set; None when unset
    note: str = ""  # one line when the setting hides or drops GPUs, or names GPUs no driver backs


@dataclass(frozen=True)
class Placement:
    """One server replica: its position in the pool and the GPUs it is given (none on a CPU machine)."""

    index: int
    gpus: tuple[str, ...] = ()

    @property
    def cuda_visible_devices(self) -> str | None:
        """The replica's CUDA_VISIBLE_DEVICES, or None when it has no GPU (a CPU server)."""
        return ",".join(self.gpus) if self.gpus else None

    @property
    def tensor_parallel_size(self) -> int:
        """vLLM's --tensor-parallel-size for this replica: one shard per GPU, 1 for a CPU server."""
        return max(1, len(self.gpus))


def driver_gpu_count() -> int | None:
    """How many GPUs the NVIDIA driver lists (`nvidia-smi -L`), or None when no driver answers.

    nvidia-smi ignores CUDA_VISIBLE_DEVICES, so this is the machine's (or container's) physical count. MIG
    instances are listed on indented lines under their GPU and are not counted."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))


def _parse(setting: str) -> tuple[tuple[str, ...], str]:
    """The identifiers CUDA takes from a CUDA_VISIBLE_DEVICES value, and a note on what it ignores.

    CUDA's rules (CUDA C++ Programming Guide, "CUDA Environment Variables"): devices are enumerated in the order
    listed, and "if one of the indices is invalid, only the devices whose index precedes the invalid index are
    visible" ("0,2,-1,1" shows 0 and 2). The finer points follow PyTorch's `torch.cuda._parse_visible_devices`,
    which mirrors what the driver does: entries are whitespace-stripped and an index is read like strtoul
    ("1gpu" is 1); a negative, empty or unreadable entry ends the list; UUID lists ("GPU-…", or "MIG-…") take
    entries with the first one's prefix only, so a list cannot mix indices and UUIDs; a repeated entry hides
    every device. Indices past the driver's count are dropped by the caller, which knows the count."""
    taken: list[str] = []
    entries = [entry.strip() for entry in setting.split(",")]
    prefix = next((p for p in _UUID_PREFIXES if entries[0].startswith(p)), None)
    for position, entry in enumerate(entries):
        if prefix is not None:
            ident = entry if entry.startswith(prefix) else None
        else:
            match = _INDEX.match(entry)
            ident = str(int(match.group())) if match and int(match.group()) >= 0 else None
        if ident is None:
            if not taken:
                return (), f"CUDA_VISIBLE_DEVICES={setting!r} hides every GPU (CUDA stops at {entry!r})"
            return tuple(taken), f"CUDA stops at {entry!r}, hiding {','.join(entries[position:])!r}"
        if ident in taken:
            return (), f"CUDA_VISIBLE_DEVICES={setting!r} repeats {entry!r}, so CUDA hides every GPU"
        taken.append(ident)
    return tuple(taken), ""


def discover(environ: Mapping[str, str], probe: Callable[[], int | None] | None = None) -> Visible:
    """The GPUs this process may use, with where that came from (see `visible_gpus`)."""
    count_gpus = driver_gpu_count if probe is None else probe
    setting = environ.get(VARIABLE)
    if setting is None:
        count = count_gpus()
        if count is None:
            return Visible((), "none", note="no NVIDIA driver answers")
        return Visible(tuple(str(i) for i in range(count)), "driver")
    gpus, note = _parse(setting)
    if not gpus:
        return Visible((), VARIABLE, setting, note)
    count = count_gpus()
    if count is None:
        # Without a driver CUDA sees no device, whatever the variable names; so does launch.has_nvidia_gpu, which
        # then applies vLLM's CPU defaults.
        return Visible((), VARIABLE, setting, f"CUDA_VISIBLE_DEVICES={setting!r} is set but no NVIDIA driver answers")
    for position, gpu in enumerate(gpus):
        # An index the machine lacks is an invalid entry: CUDA shows only the ones before it. A UUID is matched by
        # the driver (a unique prefix is enough) and is not checked here.
        if gpu.isdigit() and int(gpu) >= count:
            why = f"CUDA stops at {gpu!r}: the driver has {count} GPU(s)"
            if position == 0:
                return Visible((), VARIABLE, setting, f"CUDA_VISIBLE_DEVICES={setting!r} hides every GPU ({why})")
            return Visible(gpus[:position], VARIABLE, setting, f"{why}, so {','.join(gpus[position:])!r} is hidden")
    return Visible(gpus, VARIABLE, setting, note)


def visible_gpus(environ: Mapping[str, str], probe: Callable[[], int | None] | None = None) -> tuple[str, ...]:
    """The GPU identifiers (indices or UUIDs, as CUDA_VISIBLE_DEVICES names them) this process may use.

    CUDA_VISIBLE_DEVICES, when set, read as CUDA reads it (an empty value or a leading -1 hides every GPU; an
    entry that is -1 or invalid hides itself and all after it); unset, every GPU the driver lists, as "0".."n-1".
    No driver: (). `probe` counts the driver's GPUs (None: no driver); by default it runs `nvidia-smi -L`."""
    return discover(environ, probe).gpus


def parse_replicas(text: str) -> int | Literal["auto"]:
    """`--replicas`: a whole number of at least 1, or `auto` (one replica per --gpus-per-replica GPUs)."""
    value = text.strip()
    if value.lower() == "auto":
        return "auto"
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--replicas must be a whole number of at least 1, or auto; got {text!r}")
    return int(value)


def plan(replicas: int | Literal["auto"], gpus_per_replica: int, gpus: tuple[str, ...]) -> tuple[Placement, ...]:
    """One Placement per replica: consecutive `gpus_per_replica`-sized slices of `gpus`, in order.

    Without GPUs every replica is a CPU server (no GPUs; `auto` means one). GPUs left over after the last whole
    slice stay unused. Raises ConfigError, one line naming the option, when the numbers cannot work."""
    if gpus_per_replica < 1:
        raise ConfigError(f"--gpus-per-replica must be at least 1, got {gpus_per_replica}")
    if isinstance(replicas, int) and replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {replicas}")
    if isinstance(replicas, int):
        count = replicas
        if gpus and count * gpus_per_replica > len(gpus):
            raise ConfigError(f"--replicas {count} with --gpus-per-replica {gpus_per_replica} needs "
                              f"{count * gpus_per_replica} GPU(s), but {len(gpus)} are visible ({','.join(gpus)})")
    elif not gpus:
        count = 1  # auto on a CPU machine: one CPU server
    else:
        count = len(gpus) // gpus_per_replica
        if count == 0:
            raise ConfigError(f"--replicas auto: {len(gpus)} visible GPU(s) cannot hold one replica of "
                              f"--gpus-per-replica {gpus_per_replica}")
    k = gpus_per_replica  # without GPUs every slice of () is (): CPU servers
    return tuple(Placement(i, gpus[i * k:(i + 1) * k]) for i in range(count))
