"""Everything a run checks and takes before any work starts: the run directory and its lock, the manifest, the
dataset, the host, the server's Python, the tiny model. Blocking work, run from a worker thread; every problem a
user can fix is raised as a `UsageError` (exit code 2) naming the option, the file or the line."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hallurun.config import ConfigError, RunConfig, RunOptions, ServerOptions, resumed
from hallurun.errors import UsageError
from hallurun.server import launch, pool
from hallurun.server.supervisor import free_port
from hallurun.store import manifest, shards
from hallurun.store.dataset import DatasetError, DatasetInfo, scan
from hallurun.store.durable import RunDirWriteError
from hallurun.store.lock import RunLock


@dataclass
class Prepared:
    """A run ready to go: its configuration, its validated dataset and the run directory's lock, held."""

    config: RunConfig
    info: DatasetInfo
    lock: RunLock
    write_manifest: bool  # a new run, or `resume --force` on a changed dataset
    changed: bool = False  # `resume --force`: the dataset changed since the run started

    def release(self) -> None:
        """Drop the run directory's lock."""
        self.lock.release()


def for_start(config: RunConfig) -> Prepared:
    """Start a run, or continue it if its directory already holds the same run."""
    if config.shard is not None:
        _check_shared_folder(config.run_dir.parent, config.shard.count)
    elif shards.find(config.run_dir):
        merged = (config.run_dir / manifest.MANIFEST).is_file()
        raise UsageError(f"--run-dir {config.run_dir}: it holds {'a merged' if merged else 'the shards of a'} sharded "
                         "run; an unsharded run needs a folder of its own")
    try:
        config.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--run-dir {config.run_dir}: cannot create it ({exc.strerror or exc})") from None
    # Absolute, so that `hallurun resume` finds the data from any working directory.
    config = dataclasses.replace(config, dataset=config.dataset.absolute())
    lock = _lock(config.run_dir)
    try:
        info = preflight(config)
        if (config.run_dir / manifest.MANIFEST).exists():
            try:
                existing = manifest.read(config.run_dir)
                same = existing["fingerprint"] == manifest.fingerprint(config, info.sha256)
            except manifest.ManifestError as exc:
                raise UsageError(f"{exc}; the folder holds a damaged run: choose another --run-dir") from None
            except (KeyError, TypeError):
                raise UsageError(f"{config.run_dir / manifest.MANIFEST}: field 'fingerprint' missing; the folder "
                                 "holds a damaged run: choose another --run-dir") from None
            if manifest.merged_from(existing) is not None:
                raise UsageError(f"{config.run_dir} holds a merged sharded run, which continues shard by shard "
                                 f"(`hallurun resume {config.run_dir}/shard-I-of-N`); give another --run-dir")
            if not same:
                raise UsageError(f"{config.run_dir} holds a different run (task, model, sampling or data differ); "
                                 f"use `hallurun resume {config.run_dir}` or choose another --run-dir")
    except BaseException:
        lock.release()
        raise
    return Prepared(config, info, lock, write_manifest=True)


def for_resume(run_dir: Path, options: RunOptions | None = None, server: ServerOptions | None = None, *,
               retry_failed: bool = False, force: bool = False) -> Prepared:
    """Continue a run from its manifest. Only operational settings may change (`config.resumed`)."""
    if not run_dir.exists() and shards.shard_of(run_dir):
        raise UsageError(f"{run_dir}: this shard has not started; start it with its `hallurun inference ... "
                         "--shard` command, which also continues a shard that has")
    if run_dir.is_dir() and not (run_dir / manifest.MANIFEST).is_file():
        manifest.read(run_dir)  # a folder that holds no run is refused (ManifestError) before it gets a lock file
    with contextlib.suppress(manifest.ManifestError):
        merged = manifest.merged_from(manifest.read(run_dir))
        if merged is not None:
            raise UsageError(f"{run_dir} is the merge of {merged} shards, not a run to continue: resume a shard "
                             f"(`hallurun resume {run_dir}/shard-I-of-N`), then merge again")
    lock = _lock(run_dir)
    try:
        try:
            saved = manifest.read(run_dir)
            # The manifest's dataset path is absolute (older runs kept a relative one in their configuration).
            config = resumed(RunConfig.from_json(saved["config"]), run_dir=run_dir,
                             dataset=Path(saved["dataset"]["path"]), options=options, server=server,
                             retry_failed=retry_failed)
            started_with = str(saved["dataset"]["sha256"])
        except (manifest.ManifestError, ConfigError) as exc:
            raise UsageError(str(exc)) from None
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{run_dir / manifest.MANIFEST}: unreadable configuration ({exc})") from None
        info = preflight(config)
        changed = info.sha256 != started_with
        if changed and config.shard is not None:
            raise UsageError(f"{config.dataset}: the dataset changed since this shard started (sha256 "
                             f"{started_with[:12]} → {info.sha256[:12]}); a shard cannot continue on a changed "
                             "dataset (its items would move between shards): restore it, or start a new sharded "
                             "run in another --run-dir")
        if changed and not force:
            raise UsageError(f"{config.dataset}: the dataset changed since this run started (sha256 "
                             f"{started_with[:12]} → {info.sha256[:12]}); "
                             "restore it, or pass --force to continue with the new file")
    except BaseException:
        lock.release()
        raise
    return Prepared(config, info, lock, write_manifest=changed, changed=changed)


def _check_shared_folder(shared: Path, count: int) -> None:
    """A shard starts only in a folder that holds shards of the same N (or nothing yet): reads only, since other
    shards may be starting on other hosts at this moment."""
    others = sorted({shard.count for shard, _ in shards.find(shared)} - {count})
    if others:
        raise UsageError(f"--run-dir {shared}: it holds shards of {others[0]} (shard-I-of-{others[0]}), not of "
                         f"{count}; give --shard I/{others[0]}, or another --run-dir")
    with contextlib.suppress(manifest.ManifestError):
        if manifest.merged_from(manifest.read(shared)) is None:
            raise UsageError(f"--run-dir {shared}: it holds an unsharded run; give another --run-dir")


def write_manifest(config: RunConfig, info: DatasetInfo) -> None:
    """Write the manifest; a run directory that cannot take it is bad usage, before anything ran."""
    try:
        manifest.write(config, info)
    except RunDirWriteError as exc:
        raise UsageError(f"{exc}; nothing was run") from None


def _lock(run_dir: Path) -> RunLock:
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    lock = RunLock(run_dir)
    lock.acquire()  # LockError (2), or RunDirBusy (75: another hallurun runs it; try again later)
    return lock


def preflight(config: RunConfig) -> DatasetInfo:
    """Everything checked before any work starts: the data, the host, the server's Python; the tiny model built."""
    info = _scan(config)
    pool.slots(config.server, os.environ)  # a pool that does not fit the GPUs is a ConfigError, here
    _check_host(config)
    _check_server_python(config)
    _prepare_model(config)
    return info


def _check_host(config: RunConfig) -> None:
    """A `--host` a launched server cannot listen on is bad usage, found before anything starts."""
    if config.server.kind == "external":
        return
    try:
        free_port(config.server.host)
    except OSError as exc:  # socket.gaierror included: a name that does not resolve
        raise UsageError(f"--host {config.server.host}: a server cannot listen there ({exc.strerror or exc}); "
                         "give an IPv4 address of this machine, such as 127.0.0.1") from None


def _check_server_python(config: RunConfig) -> None:
    """A `--server-python` that cannot run is bad usage, found before anything starts."""
    python = config.server.python
    if python is None or config.server.kind == "external":
        return
    if "/" not in python:
        if shutil.which(python) is None:
            raise UsageError(f"--server-python {python}: not found on PATH")
        return
    path = Path(python).expanduser()
    if not path.is_file():
        raise UsageError(f"--server-python {python}: no such file")
    if not os.access(path, os.X_OK):
        raise UsageError(f"--server-python {python}: not executable")


def _scan(config: RunConfig) -> DatasetInfo:
    try:
        return scan(config.dataset, config.limit)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


def _prepare_model(config: RunConfig) -> None:
    """Build the tiny model before the run starts (it takes seconds, and must not stall the event loop: this
    runs in a worker thread)."""
    if config.server.kind != "vllm":
        return
    try:
        launch.model_path(config.model)
    except ImportError as exc:
        raise UsageError(f"--model {config.model} needs torch, transformers and tokenizers here ({exc}); "
                         "run `make install`") from None
