"""The checkpoint's file handling, on real files: torn tails, duplicates, retried failures."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from hallurun.store.checkpoint import Checkpoint, read_records, repair
from hallurun.store.dataset import DatasetError, iter_items, scan


def test_repair_keeps_complete_lines_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "gen')
    assert repair(path) == len(b'{"id": "c", "gen')
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    assert repair(path) == 0


def test_repair_of_a_single_torn_line_empties_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "a", "ge')
    repair(path)
    assert path.read_bytes() == b""


def test_checkpoint_records_each_id_once_and_survives_reopening(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path)
    assert checkpoint.add_result({"id": "a", "generation": "x"})
    assert not checkpoint.add_result({"id": "a", "generation": "again"})
    assert checkpoint.add_failure("b", "http_400", "too long", 1)
    assert not checkpoint.add_failure("a", "http_500", "late", 2)
    checkpoint.close()
    reopened = Checkpoint(tmp_path)
    assert reopened.done == {"a"} and reopened.failed == {"b": "http_400"}
    assert reopened.is_settled("a") and reopened.is_settled("b") and not reopened.is_settled("c")
    reopened.close()


def test_a_flush_after_a_cancelled_threaded_flush_finds_its_batch_written(tmp_path: Path) -> None:
    # The run's flusher writes from a thread and may be cancelled at the end of a run before that thread has
    # even started; the final flush must neither lose its batch nor overtake it.
    checkpoint = Checkpoint(tmp_path)
    for i in range(2000):
        checkpoint.add_result({"id": f"a{i}", "generation": "x" * 200})

    async def cancelled_flush() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        gate = threading.Event()
        blocker = loop.run_in_executor(None, gate.wait)  # holds the only thread: the batch's write must queue
        task = asyncio.create_task(checkpoint.flush_in_thread())
        await asyncio.sleep(0)  # it takes its batch and queues the write
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Let the queued write run a little later, from another thread: the flush below must wait for it.
        threading.Timer(0.2, gate.set).start()
        checkpoint.add_result({"id": "last", "generation": "y"})
        checkpoint.flush()
        await blocker

    asyncio.run(cancelled_flush())
    checkpoint.close()
    ids = [r["id"] for r in read_records(tmp_path / "results.jsonl")]
    assert sorted(ids) == sorted([f"a{i}" for i in range(2000)] + ["last"])
    assert ids[-1] == "last"


def test_retrying_failures_keeps_their_history(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path)
    checkpoint.add_failure("b", "http_500", "boom", 4)
    checkpoint.flush()
    assert checkpoint.forget_failures() == ["b"]
    assert not checkpoint.is_settled("b")
    checkpoint.close()
    assert (tmp_path / "failures.jsonl").read_bytes() == b""
    assert [r["id"] for r in read_records(tmp_path / "failures.retried.jsonl")] == ["b"]


def test_dataset_ids_default_to_record_position(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"prompt": f"p{i}"}) + b"\n" for i in range(3)))
    assert [item.id for item in iter_items(path)] == ["0", "1", "2"]
    assert scan(path, limit=2).count == 2


@pytest.mark.parametrize(("content", "where", "what"), [
    (b'{"prompt": "ok"}\n[1, 2]\n', ":2:", "JSON object"),
    (b'{"prompt": ""}\n', ":1:", "'prompt'"),
    (b'{"prompt": "a", "id": true}\n', ":1:", "'id'"),
    (b"\n\n", "", "no records"),
])
def test_dataset_errors_name_file_line_and_field(tmp_path: Path, content: bytes, where: str, what: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        scan(path)
    assert str(path) + where in str(info.value) and what in str(info.value)
