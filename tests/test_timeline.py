"""The run timeline (`hallurun.core.timeline`): lanes, marks, sessions and throughput computed from hand-written
records, and `write` drawing a PNG for a real mock run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from hallurun.core import timeline
from hallurun.core.timeline import Mark, Session, Span
from tests.conftest import Hallurun

T0 = 1_800_000_000.0  # an epoch second; every hand-written time below is an offset from it


def ev(at: float, name: str, **fields: Any) -> dict[str, Any]:
    return {"t": T0 + at, "event": name, **fields}


def spans(*items: tuple[float, float, str]) -> list[Span]:
    return [Span(T0 + a, T0 + b, state) for a, b, state in items]


def test_one_replica_wedged_and_restarted() -> None:
    events = [
        ev(0, "run_started", total=10),
        ev(10, "server_started", replica=0, startup_s=10),
        ev(100, "hang_detected", replica=0, quiet_s=30, window_s=30, items=["a"]),
        ev(101, "server_stopping", replica=0, pids=[1]),
        ev(102, "server_stopped", replica=0, pids=[1], returncode=-15),
        ev(110, "server_started", replica=0, startup_s=8),
        ev(110, "server_restarted", replica=0, cause="wedge", restarts=1),
        ev(200, "server_stopping", replica=0),
        ev(201, "server_stopped", replica=0),
        ev(202, "run_finished", done=10),
    ]
    assert timeline.lanes(events) == {0: spans((0, 10, "starting"), (10, 70, "serving"), (70, 100, "wedged"),
                                               (100, 110, "restarting"), (110, 200, "serving"))}
    assert timeline.marks(events) == [Mark(T0 + 100, "wedge", 0)]
    assert timeline.sessions(events) == [Session(T0, T0 + 202, "finished")]


def test_wedge_without_quiet_s_uses_window_s_and_never_reaches_before_the_session() -> None:
    events = [ev(0, "run_started"), ev(2, "server_started", startup_s=2), ev(20, "hang_detected", window_s=5),
              ev(25, "server_started"), ev(40, "hang_detected", quiet_s=500), ev(41, "run_aborted")]
    assert timeline.lanes(events) == {0: spans((0, 2, "starting"), (2, 15, "serving"), (15, 20, "wedged"),
                                               (20, 25, "restarting"), (25, 40, "wedged"), (40, 41, "restarting"))}


def test_two_replicas_one_retired() -> None:
    events = [
        ev(0, "run_started"),
        ev(5, "server_started", replica=0, startup_s=5),
        ev(6, "server_started", replica=1, startup_s=6),
        ev(50, "replica_retired", replica=1, reason="kept wedging"),
        ev(51, "server_stopping", replica=1),
        ev(52, "server_stopped", replica=1),
        ev(60, "server_started", replica=1),  # nothing changes a retired lane for the rest of the session
        ev(98, "server_stopping", replica=0),
        ev(99, "server_stopped", replica=0),
        ev(100, "run_finished"),
    ]
    assert timeline.lanes(events) == {
        0: spans((0, 5, "starting"), (5, 98, "serving")),
        1: spans((0, 6, "starting"), (6, 50, "serving"), (50, 100, "retired")),
    }


def test_a_crash_is_restarting_until_the_server_is_back() -> None:
    events = [ev(0, "run_started"), ev(1, "server_started", replica=0, startup_s=1),
              ev(50, "server_exited", replica=0, returncode=-9, in_flight=3),
              ev(60, "server_started", replica=0, startup_s=10),
              ev(60, "server_restarted", replica=0, cause="server_exited"),
              ev(90, "run_finished")]
    assert timeline.lanes(events) == {0: spans((0, 1, "starting"), (1, 50, "serving"), (50, 60, "restarting"),
                                               (60, 90, "serving"))}
    assert timeline.marks(events) == [Mark(T0 + 50, "crash", 0)]


def test_unreachable_until_back_or_restarted() -> None:
    events = [ev(0, "run_started"), ev(0, "server_started"),
              ev(10, "server_unreachable", in_flight=2), ev(14, "server_back", waited_s=4),
              ev(30, "server_unreachable"), ev(60, "server_stopping"), ev(61, "server_stopped"),
              ev(70, "server_started"), ev(70, "server_restarted", cause="unreachable"), ev(80, "run_finished")]
    assert timeline.lanes(events) == {0: spans((0, 10, "serving"), (10, 14, "unreachable"), (14, 30, "serving"),
                                               (30, 60, "unreachable"), (60, 70, "restarting"), (70, 80, "serving"))}


def test_an_older_run_without_replica_fields_is_replica_0() -> None:
    # The shape of a real single-server run before the pool: no `replica` anywhere.
    events = [
        {"time": "2026-12-01T15:00:46.228+00:00", "t": T0, "event": "run_started", "total": 40},
        {"t": T0 + 0.3, "event": "server_started", "url": "http://127.0.0.1:1", "pid": 7, "startup_s": 0.3},
        {"t": T0 + 30, "event": "hang_detected", "in_flight": 26, "quiet_s": 20.0},
        {"t": T0 + 30.1, "event": "item_quarantined", "id": "pwqa-0015"},
        {"t": T0 + 30.2, "event": "server_stopping", "pids": [7]},
        {"t": T0 + 30.3, "event": "server_stopped", "pids": [7], "returncode": -15},
        {"t": T0 + 31, "event": "server_started", "pid": 8, "startup_s": 0.7},
        {"t": T0 + 31, "event": "server_restarted", "cause": "wedge", "restarts": 1},
        {"t": T0 + 40, "event": "server_stopping", "pids": [8]},
        {"t": T0 + 40.1, "event": "server_stopped", "pids": [8]},
        {"t": T0 + 40.2, "event": "run_finished", "done": 39, "failed": 1},
    ]
    assert timeline.lanes(events) == {0: spans((0, 0.3, "starting"), (0.3, 10, "serving"), (10, 30, "wedged"),
                                               (30, 31, "restarting"), (31, 40, "serving"))}
    assert timeline.marks(events) == [Mark(T0 + 30, "wedge", 0), Mark(T0 + 30.1, "quarantine", 0, "pwqa-0015")]


def test_a_quarantine_without_replica_belongs_to_the_replica_that_wedged() -> None:
    events = [ev(0, "run_started"), ev(1, "server_started", replica=0), ev(1, "server_started", replica=1),
              ev(20, "hang_detected", replica=1, quiet_s=5), ev(20.1, "item_quarantined", id="x"),
              ev(21, "item_quarantined", id="y", replica=0)]
    assert [m for m in timeline.marks(events) if m.kind == "quarantine"] == [
        Mark(T0 + 20.1, "quarantine", 1, "x"), Mark(T0 + 21, "quarantine", 0, "y")]


def test_two_sessions_with_a_gap_have_no_lane_in_the_gap() -> None:
    events = [
        ev(0, "run_started"),
        ev(5, "server_started", startup_s=5),
        ev(100, "hang_detected", quiet_s=10),
        ev(101, "server_stopping"),
        # killed here: no run_finished, no restart
        ev(400, "run_resumed", done=50),
        ev(420, "server_started", startup_s=20),
        ev(500, "server_stopping"),
        ev(501, "server_stopped"),
        ev(502, "run_finished"),
    ]
    assert timeline.sessions(events) == [Session(T0, T0 + 101, "open"), Session(T0 + 400, T0 + 502, "finished")]
    assert timeline.lanes(events) == {0: spans((0, 5, "starting"), (5, 90, "serving"), (90, 100, "wedged"),
                                               (100, 101, "restarting"),
                                               (400, 420, "starting"), (420, 500, "serving"))}
    # Items it settled after its last event show that the killed session lasted that long; one of the next
    # session's does not stretch it; `end` stretches only a last session still open.
    settled = [T0 + 150, T0 + 450]
    assert timeline.sessions(events, T0 + 900, settled=settled) == [
        Session(T0, T0 + 150, "open"), Session(T0 + 400, T0 + 502, "finished")]
    assert timeline.sessions(events[:4], T0 + 300) == [Session(T0, T0 + 300, "open")]


def test_a_serving_lane_lasts_until_a_killed_session_s_last_settled_item() -> None:
    events = [ev(0, "run_started"), ev(5, "server_started"), ev(10, "progress")]
    assert timeline.lanes(events, settled=[T0 + 60]) == {0: spans((5, 60, "serving"))}
    assert timeline.lanes(events, T0 + 90) == {0: spans((5, 90, "serving"))}


def test_a_run_with_no_restarts() -> None:
    events = [ev(0, "run_started"), ev(3, "server_started", startup_s=3), ev(60, "server_stopping"),
              ev(61, "server_stopped"), ev(61.5, "run_finished")]
    assert timeline.lanes(events) == {0: spans((0, 3, "starting"), (3, 60, "serving"))}
    assert timeline.marks(events) == []


def test_torn_unknown_and_malformed_lines_are_skipped(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(ev(0, "run_started")),
        b"not json at all",
        b"[1, 2, 3]",
        b"42",
        b'{"event": "server_started"}',  # no time
        orjson.dumps({"t": "soon", "event": "hang_detected"}),
        orjson.dumps({"t": T0 + 1, "event": 7}),
        orjson.dumps(ev(2, "server_started", replica="one", startup_s="slow")),  # replica 0, no startup span
        orjson.dumps(ev(3, "something_new", replica=4)),
        orjson.dumps(ev(50, "hang_detected", quiet_s=None)),
        orjson.dumps({"time": "2027-01-15T08:01:00.000+00:00", "event": "server_started"}),  # T0 + 60, as ISO only
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b'\n{"t": 1800000099.0, "event": "run_fini')  # torn last line
    events = timeline.read_jsonl(path)
    assert timeline.lanes(events) == {0: spans((2, 50, "serving"), (50, 60, "restarting"))}
    assert timeline.build(events) is not None


def test_throughput_bins() -> None:
    flow = timeline.throughput([T0 + 1, T0 + 5, T0 + 12, T0 + 65, T0 - 3], T0, T0 + 65, failed_at=[T0 + 15],
                               bin_s=10)
    assert flow.bin_s == 10
    assert flow.starts == [T0 + i * 10 for i in range(7)]
    assert flow.done == [3, 1, 0, 0, 0, 0, 1]  # one before the start counts in the first bin, one at the end last
    assert flow.failed == [0, 1, 0, 0, 0, 0, 0]
    assert flow.widths == [10, 10, 10, 10, 10, 10, 5]
    assert flow.per_minute == [18.0, 12.0, 0, 0, 0, 0, 12.0]  # the last bin is 5 s wide: 1 item in it is 12/min
    assert timeline.throughput([T0 + 1], T0, T0 + 600).bin_s == 10
    assert timeline.bin_seconds(60) == 1 and timeline.bin_seconds(600) == 10
    assert timeline.bin_seconds(3 * 3600) == 60 and timeline.bin_seconds(20 * 3600) == 300
    hourly = timeline.throughput([T0 + 59, T0 + 61, T0 + 3599], T0, T0 + 3600)
    assert hourly.bin_s == 60 and len(hourly.starts) == 60
    assert (hourly.done[0], hourly.done[1], hourly.done[59], sum(hourly.done)) == (1, 1, 1, 3)


def test_build_counts_settled_items_from_results_and_failures() -> None:
    events = [ev(0, "run_started"), ev(1, "server_started"), ev(30, "run_finished")]
    results = [{"id": "a", "done_at": T0 + 2}, {"id": "b", "done_at": T0 + 12.5}, {"id": "c", "done_at": T0 + 13},
               {"id": "d"}, "torn", {"id": "e", "done_at": T0 - 9999}]  # before the run: a clock gone wrong
    failures = [{"id": "f", "reason": "stalled", "done_at": T0 + 25}, {"id": "a", "reason": "http"}]
    built = timeline.build(events, results, failures)
    assert built is not None and built.throughput is not None
    assert (built.start, built.end) == (T0, T0 + 30)
    assert built.throughput.bin_s == 1 and len(built.throughput.starts) == 30
    flow = built.throughput
    assert [i for i, n in enumerate(flow.done) if n] == [2, 12, 13] and sum(flow.done) == 3  # e is left out
    assert [i for i, n in enumerate(flow.failed) if n] == [25]
    assert built.undated == 2  # d, and the failure of a
    assert built.counts["done"] == 5 and built.counts["failed"] == 1  # a's failure was followed by its result


def test_older_results_without_done_at_have_no_throughput() -> None:
    events = [ev(0, "run_started"), ev(1, "server_started"), ev(30, "run_finished")]
    built = timeline.build(events, [{"id": "a"}, {"id": "b"}])
    assert built is not None and built.throughput is None and built.undated == 2
    assert built.lanes == {0: spans((1, 30, "serving"))}
    assert timeline.build([]) is None and timeline.build(["junk", {"event": "x"}]) is None


def test_ticks_are_round_local_clock_times() -> None:
    positions = timeline.ticks(T0 + 7, T0 + 7 + 8 * 3600)
    assert 2 <= len(positions) <= 9
    step = positions[1][0] - positions[0][0]
    assert step in (3600, 7200) and all(len(label) == 5 and label[2] == ":" for _, label in positions)
    assert all(label.endswith(":00") for _, label in positions)
    short = timeline.ticks(T0, T0 + 60)
    assert all(len(label) == 8 for _, label in short)  # HH:MM:SS when ticks are seconds apart


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, hallurun.core.timeline; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_write_returns_none_without_events(tmp_path: Path) -> None:
    assert timeline.write(tmp_path) is None
    (tmp_path / "events.jsonl").write_bytes(b"")
    assert timeline.write(tmp_path) is None
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*tmp"))


def test_write_draws_a_png_for_a_real_mock_run(hallurun: Hallurun, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", "precisewikiqa", "--model", "m", "--server", "mock", "--limit", "40",
                        "--stall-timeout", "2", "--run-dir", str(run_dir), "--", "--fault", "hang-after:15")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = timeline.write(run_dir)
    assert path == run_dir / "timeline.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not list(run_dir.glob(".*tmp"))  # written to a temporary name, then replaced
    built = timeline.build(timeline.read_jsonl(run_dir / "events.jsonl"),
                           timeline.read_jsonl(run_dir / "results.jsonl"))
    assert built is not None and list(built.lanes) == [0]
    states = [s.state for s in built.lanes[0]]
    assert states[0] == "starting" and "wedged" in states and "restarting" in states and states[-1] == "serving"
    assert any(m.kind == "wedge" for m in built.marks)
    assert [s.how for s in built.sessions] == ["finished"]
    # Written again over the first: still one valid file.
    assert timeline.write(run_dir) == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
