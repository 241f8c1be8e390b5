"""The bench's tables tell an aborted client from a finished one (issue 13, item 18): an abort shows its exit code
and reason, never as lost items; and the quick mode's restart wait stays above the mock's measured start."""

from __future__ import annotations

import contextlib
import urllib.request
from pathlib import Path
from typing import Any

from bench.baselines import stream_body
from bench.common import count_wedges, last_line, mock_server, write_dataset
from bench.recovery import RESTART_WAIT_S, Timing, hallurun_side, restart_wait
from bench.report import markdown, tables
from tests.conftest import wait_until

REASON = "no healthy answer from http://127.0.0.1:41234/health in time"


def _aborted_hallurun(section: str) -> dict[str, Any]:
    """A row as `bench.recovery` writes it for a hallurun run that ended with exit 3 after 257 of 500 items."""
    row: dict[str, Any] = {
        "client": "hallurun", "items": 500, "scale": 20, "mock_start_s": 1.5, "restart_wait_s": 1.5,
        "ended": {"finished": False, "exit_code": 3, "reason": REASON, "not_done": 243}, "finished": False,
        # What the old bench stored for such a run: the 243 items it had not reached counted as lost.
        "lost": 243, "duplicated": 0, "wedges": 1, "restarts": 0, "detail": {"exit_code": 3},
    }
    if section == "recovery":
        row |= {"wedge_every": 300, "clean_ended": {"finished": True, "exit_code": 0}, "clean_s": 0.5,
                "faulty_s": 0.4, "slowdown": 0.8, "lost_per_wedge_s": -0.1, "restarts_per_wedge": 0.0,
                "placeholders_or_failures": 0, "intact": 257}
    else:
        row |= {"wall_s": 0.4, "isolated": False, "wedges_until_isolated": None, "poison_generation": None,
                "others_placeholders_or_failures": 0}
    return row


def _finished_baseline(section: str) -> dict[str, Any]:
    row = {**_aborted_hallurun(section), "client": "HalluLens protocol", "finished": True, "lost": 2,
           "ended": {"finished": True, "exit_code": 0}, "detail": {}}
    if section == "recovery":
        row["intact"] = 386
    return row


def _cells(section: str) -> dict[str, list[str]]:
    """The section's transposed table as {row header: [cell per client]}."""
    results = {"sections": {section: [_aborted_hallurun(section), _finished_baseline(section)]}}
    [(_, header, rows)] = tables(results)
    assert header[1:] == ["hallurun", "HalluLens protocol"]
    return {row[0]: row[1:] for row in rows}


def test_recovery_table_says_a_client_aborted_with_its_exit_code_not_that_it_lost_items() -> None:
    cells = _cells("recovery")
    assert cells["run with wedges"] == [f"aborted: exit 3 ({REASON})", "finished (exit 0)"]
    assert cells["fault-free run"] == ["finished (exit 0)", "finished (exit 0)"]
    assert cells["lost"] == ["– (aborted with 243 not done)", "2"]
    # Figures of a run that did not finish mean nothing: not shown, rather than a wrong time or count.
    assert cells["with wedges s"][0] == "–" and cells["intact"] == ["–", "386"]
    assert cells["restart wait s"] == ["1.5", "1.5"]


def test_poison_table_says_a_client_aborted_with_its_exit_code_not_that_it_lost_items() -> None:
    cells = _cells("poison")
    assert cells["run"] == [f"aborted: exit 3 ({REASON})", "finished (exit 0)"]
    assert cells["lost"] == ["– (aborted with 243 not done)", "2"]
    assert cells["wall s"][0] == "–"


def test_a_results_file_from_before_the_outcome_was_recorded_still_shows_the_abort() -> None:
    """bench/results-quick.json as the old bench wrote it: `finished` false and exit 3 in the detail."""
    row = _aborted_hallurun("recovery")
    del row["ended"], row["clean_ended"]
    text = markdown({"sections": {"recovery": [row]}})
    assert "| run with wedges | aborted: exit 3 |" in text
    assert "| lost | – (aborted) |" in text


def test_quick_restart_wait_stays_above_the_measured_start() -> None:
    # Measured here: the mock's start at ÷20 took 1.4–1.6 s, against 30 / 20 = 1.5 s before.
    assert restart_wait(20, 1.5) >= 3 * 1.5
    assert restart_wait(20, 0.2) == RESTART_WAIT_S / 20  # a fast start keeps the scaled wait
    assert restart_wait(10, 2.31) == 7.0  # rounded up to a tenth


def test_last_line_drops_terminal_control_sequences() -> None:
    said = "\x1b[?25l\x1b[2K progress 10/20\r\x1b[2K\x1b[31merror: the server exited\x1b[0m\n\n"
    assert last_line(said) == "error: the server exited"
    assert last_line("\x1b[2K\n") is None


def test_hallurun_side_reports_a_real_abort_with_its_exit_code(tmp_path: Path) -> None:
    """A restart wait below the server's start: real hallurun against the real loud mock gives up with exit 3,
    and the bench reports that as an abort, not as items lost."""
    dataset = tmp_path / "data.jsonl"
    ids = write_dataset(dataset, 200)
    # ÷20: a 1 s startup delay and a 1.5 s stall timeout; the 0.3 s restart wait cannot be met.
    timing = Timing(scale=20, mock_start_s=1.5, restart_wait_s=0.3)
    run = hallurun_side(tmp_path, "aborts", dataset, ids, ("hang-after:100",), timing, timeout=300)
    assert not run.finished, run.detail
    assert run.ended.exit_code == 3
    assert run.ended.reason  # hallurun's own words, from its run_aborted event
    assert run.lost is None and run.wall_s is None
    assert 100 <= run.ended.not_done <= 200  # the mock answers none of the requests after its 100th


def _ask(url: str, timeout: float) -> None:
    request = urllib.request.Request(url + "/v1/chat/completions", data=stream_body("a question"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        resp.read()


def test_each_wedge_of_the_real_mock_counts_once(tmp_path: Path) -> None:
    """The mock says `mock: wedged (hang-after) at request N` itself, beside the loud mock's own line: one wedge,
    one count (the two lines were counted as two wedges)."""
    log = tmp_path / "server.log"
    with mock_server(["--fault", "hang-after:1"], log) as url:
        _ask(url, timeout=30)
        with contextlib.suppress(TimeoutError, OSError):  # the second request wedges the server: it never answers
            _ask(url, timeout=3)
        wait_until(lambda: count_wedges(log) > 0, 30, "the loud mock's wedge line")
        assert b"mock: wedged (hang-after)" in log.read_bytes()
        assert count_wedges(log) == 1


def test_the_replicas_section_draws_one_table_per_part() -> None:
    """bench.replicas writes one list of rows with a `part` each; the report splits them into four tables, and a
    part that did not run (vLLM, in --quick) draws no table rather than an empty one."""
    rows: list[dict[str, Any]] = [
        {"part": "scaling", "replicas": 2, "batch": 8, "token_rate": 40.0, "concurrency": 16, "items": 800,
         "steady_rps": 40.2, "speedup": 1.98, "speedup_target": 1.8, "cpu_us_per_request": 900.0,
         "cpu_ratio": 1.01, "met": True},
        {"part": "wedge", "replicas": 4, "window": "adaptive", "lost_s": 9.3, "window_s": 2.0, "quiet_s": 2.4,
         "relaunch_s": 30.6, "bound_s": 10.26, "met": True},
        {"part": "bursts", "replicas": 2, "items": 20_000, "faults": ["burst:3:8", "prefill:0.5"], "restarts": 0,
         "window_min_s": 6.1, "window_max_s": 12.0, "met": True},
    ]
    drawn = tables({"sections": {"replicas": rows}})
    found = {title.split(" ", 1)[0]: (header, cells) for title, header, cells in drawn}
    assert sorted(found) == ["6a.", "6b.", "6c."]
    header, [cells] = found["6a."]
    assert dict(zip(header, cells, strict=True))["× one replica"] == "1.98"
    header, [cells] = found["6b."]
    assert dict(zip(header, cells, strict=True))["target s"] == "10.3"
    header, [cells] = found["6c."]
    row = dict(zip(header, cells, strict=True))
    assert row["faults"] == "burst:3:8 prefill:0.5" and row["restarts"] == "0" and row["met"] == "yes"
