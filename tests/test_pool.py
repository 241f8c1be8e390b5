"""A pool of servers: replicas supervised alone, each item exactly once, through a wedge, a crash, a replica that
cannot start again, poison and an external server that goes away. Every test runs hallurun and its servers as
real processes."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.conftest import Hallurun, events, read_jsonl, start_mock, stop_mock, wait_until, write_dataset
from tests.test_inference import assert_exactly_once


def _by_replica(run_dir: Path, name: str) -> Counter[int]:
    return Counter(e.get("replica") for e in events(run_dir, name))


def test_three_replicas_one_wedged_one_crashed_one_retired_and_every_item_once(hallurun: Hallurun,
                                                                                tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 120)
    run_dir = tmp_path / "run"
    marker = tmp_path / "replica-2-started"
    proc = hallurun.run(
        "inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
        "--replicas", "3", "--concurrency", "4", "--stall-timeout", "2", "--run-dir", str(run_dir), "--",
        "--token-rate", "200",
        "--replica-fault", "0:hang-after:15",  # wedges once; its relaunch serves the rest
        "--replica-fault", "1:crash-after:25",  # crashes after 25 requests (the probe included); restarted each time
        "--replica-fault", "2:hang-after:5", "--replica-fault", f"2:fail-restart:{marker}")  # cannot start again
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert _by_replica(run_dir, "server_started") [0] >= 1 and len(_by_replica(run_dir, "server_started")) == 3
    assert _by_replica(run_dir, "hang_detected")[0] >= 1 and _by_replica(run_dir, "hang_detected")[2] == 1
    assert _by_replica(run_dir, "server_exited")[1] >= 1
    retired = events(run_dir, "replica_retired")
    assert [e["replica"] for e in retired] == [2] and retired[0]["left"] == 2
    assert "replica 2 retired" in proc.stdout
    # Each replica writes its own log.
    assert all((run_dir / f"server-{i}.log").exists() for i in range(3))
    assert not (run_dir / "server.log").exists()
    # The wedge of one replica requeued its items without charging an attempt: none needed a fourth.
    assert all(r["attempts"] <= 2 for r in read_jsonl(run_dir / "results.jsonl"))
    done_by = Counter(e.get("replica") for e in events(run_dir, "server_restarted"))
    assert done_by[2] == 0  # its restart failed: it was retired, not restarted


def test_the_run_fails_only_when_no_replica_is_left(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 30)
    run_dir = tmp_path / "run"
    proc = hallurun.run(
        "inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
        "--replicas", "2", "--concurrency", "2", "--stall-timeout", "2", "--max-restarts", "0",
        "--run-dir", str(run_dir), "--", "--fault", "hang-after:4")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert {e["replica"] for e in events(run_dir, "replica_retired")} == {0, 1}
    assert "--max-restarts=0" in proc.stderr
    settled = [r["id"] for r in read_jsonl(run_dir / "results.jsonl")]
    assert len(settled) == len(set(settled)) and set(settled) < set(ids)


def test_poison_is_found_across_replicas_while_the_others_keep_serving(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 600,
                        prompt=lambda i: "POISON-PILL here" if i == 7 else f"Question {i}: what is {i} plus 1?")
    run_dir = tmp_path / "run"
    proc = hallurun.run(
        "inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
        "--replicas", "2", "--concurrency", "3", "--stall-timeout", "2", "--run-dir", str(run_dir), "--",
        "--token-rate", "40", "--fault", "poison:POISON-PILL")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert [(f["id"], f["reason"]) for f in failures] == [(ids[7], "poison")]
    assert {r["id"] for r in read_jsonl(run_dir / "results.jsonl")} == set(ids) - {ids[7]}
    # Convicted by two wedges of a freshly started server with it alone in flight, on whichever replica ran it.
    solo = [e for e in events(run_dir, "hang_detected") if e["items"] == [ids[7]]]
    assert len(solo) >= 2
    (quarantined,) = events(run_dir, "item_quarantined")
    assert quarantined["id"] == ids[7]
    # While the suspect ran alone on one replica, the other kept serving: items settled in between.
    assert [r for r in read_jsonl(run_dir / "results.jsonl") if solo[0]["t"] < r["done_at"] < quarantined["t"]]


def test_an_external_pool_goes_on_without_a_server_that_went_away(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 300)  # long enough to outlast the outage and the restart wait
    steady = start_mock(tmp_path, "--token-rate", "100")
    going = start_mock(tmp_path, "--token-rate", "100")
    run_dir = tmp_path / "run"
    try:
        run = hallurun.start(
            "inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url", steady.url,
            "--server-url", going.url, "--concurrency", "2", "--restart-wait", "3", "--run-dir", str(run_dir),
            log=tmp_path / "hallurun.log")
        wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 10, 60, "the first results")
        going.proc.send_signal(signal.SIGKILL)  # gone for good: no supervisor brings it back
        going.proc.wait()
        run.wait(timeout=120)
    finally:
        stop_mock(steady)
        stop_mock(going)
    assert run.returncode == 0, (tmp_path / "hallurun.log").read_text()
    assert_exactly_once(run_dir, ids)
    assert [e["replica"] for e in events(run_dir, "replica_retired")] == [1]
    assert _by_replica(run_dir, "server_unreachable")[1] >= 1
    assert 0 not in _by_replica(run_dir, "replica_retired")


def test_an_engine_that_pauses_longer_than_ever_before_is_asked_not_restarted(hallurun: Hallurun,
                                                                               tmp_path: Path) -> None:
    # The mock's first pause (seed 1: 3.8 s, some 20 s in) comes after the window has learnt a steady pace and
    # shrunk to its floor: silence alone would call it a wedge. The engine is asked for a token instead, answers
    # once the pause is over, and the pause is learnt.
    ids = write_dataset(tmp_path / "data.jsonl", 900)
    run_dir = tmp_path / "run"
    proc = hallurun.run(
        "inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock", "--concurrency",
        "8", "--max-tokens", "12", "--run-dir", str(run_dir), "--", "--token-rate", "40", "--seed", "1",
        "--fault", "burst:4:15")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert not events(run_dir, "hang_detected") and not events(run_dir, "server_restarted")
    explained = events(run_dir, "silence_explained")
    assert explained and explained[0]["window_s"] < 30 and explained[0]["quiet_s"] >= explained[0]["window_s"]
    assert explained[0]["probe_answered"] or explained[0]["streams_resumed"]
