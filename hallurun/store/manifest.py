"""`manifest.json`: what a run is (configuration, dataset fingerprint), so `resume` can continue it alone."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson

from hallurun import __version__
from hallurun.config import RunConfig
from hallurun.errors import UsageError
from hallurun.store import shards
from hallurun.store.dataset import DatasetInfo
from hallurun.store.durable import write_atomic

MANIFEST = "manifest.json"


class ManifestError(UsageError):
    """The manifest is missing or unreadable, or the run cannot be continued as asked."""


def identity(config: RunConfig, dataset_sha256: str) -> dict[str, Any]:
    """What makes two runs' results comparable: task, model, sampling and data (the shard aside)."""
    return {
        "task": config.task,
        "model": config.model,
        "sampling": config.to_json()["sampling"],
        "dataset_sha256": dataset_sha256,
        "limit": config.limit,
    }


def fingerprint(config: RunConfig, dataset_sha256: str) -> str:
    """A short hash of a run's identity, and of its shard: one shard's folder never continues another's."""
    what = identity(config, dataset_sha256)
    if config.shard is not None:
        what["shard"] = [config.shard.index, config.shard.count]
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def write(config: RunConfig, dataset: DatasetInfo) -> dict[str, Any]:
    """Write the manifest atomically (temp file, fsync, rename)."""
    manifest = {
        "hallurun_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": fingerprint(config, dataset.sha256),
        "dataset": {"path": str(dataset.path.resolve()), "sha256": dataset.sha256, "count": dataset.count},
        "items": config.items_in(dataset.count),  # this run's share of them: all, or its shard's
        "config": config.to_json(),
    }
    write_atomic(config.run_dir / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def read(run_dir: Path) -> dict[str, Any]:
    """Read a run's manifest."""
    path = run_dir / MANIFEST
    try:
        saved = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        sharded = shards.not_merged(run_dir)
        raise ManifestError(sharded or f"{path}: not found; is {run_dir} a hallurun run directory?") from None
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise ManifestError(f"{path}: not a manifest (a JSON object)")
    return saved


def merged_from(saved: dict[str, Any]) -> int | None:
    """How many shards a merged run's manifest was merged from; None for a run that was not merged."""
    merged = saved.get("merged")
    if not isinstance(merged, dict):
        return None
    shards_ = merged.get("shards")
    return shards_ if isinstance(shards_, int) and not isinstance(shards_, bool) else 0
