"""The server's life, end to end with real processes: whose server answers, external restarts, stop paths that
leave nothing behind, and a run the server cannot serve."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    Hallurun,
    events,
    free_port,
    mock_command,
    mock_health,
    read_jsonl,
    server_processes,
    start_mock,
    stop_mock,
    wait_until,
    write_dataset,
)
from tests.stand_in_server import write_wrapper
from tests.test_inference import assert_exactly_once


def dead_or_dying(pid: int) -> bool:
    """Gone, a zombie, or with SIGKILL already pending, so nothing can save it: a check that needs no waiting.
    A process signalled with kill(2)/killpg(2) keeps the signal in its shared pending set until it is reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields["State"].strip()[0] in "ZX":
        return True
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGKILL - 1)))


def guardians(parent: int) -> set[int]:
    """Pids of the guardian processes that `parent` started."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"hallurun.server.guardian" in cmdline:
            found.add(int(entry.name))
    return found


def stand_in_run(hallurun: Hallurun, tmp_path: Path, n: int, *server_args: str,
                 opts: tuple[str, ...] = ()) -> tuple[Path, list[str], tuple[str, ...]]:
    """The arguments of a run against the stand-in server (a vLLM command line, run by `--server-python`)."""
    ids = write_dataset(tmp_path / "data.jsonl", n)
    run_dir = tmp_path / "run"
    args = ("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "vllm",
            "--server-python", str(write_wrapper(tmp_path)), "--run-dir", str(run_dir), *opts, "--", *server_args)
    return run_dir, ids, args


# -- item 4: an external server restarted by someone else -------------------------------------------------------

def test_external_restart_waits_for_the_old_server_to_go_and_the_new_one_to_start(hallurun: Hallurun,
                                                                                   tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 120)
    port = free_port()
    # Its supervisor brings it back when it exits (on POST /restart); each start takes seconds, like a model load,
    # so the probe meets refused connections for longer than a handful of tries.
    server = " ".join(hallurun.cmd("mock-server", "--port", str(port), "--fault", "hang-after:40",
                                   "--fault", "startup-delay:4"))
    outside = subprocess.Popen(["bash", "-c", f"while true; do {server}; done"], env=hallurun.env,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "run"
    try:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m",
                            "--server-url", f"http://127.0.0.1:{port}", "--run-dir", str(run_dir),
                            "--stall-timeout", "2", "--restart-wait", "60", timeout=300)
    finally:
        os.killpg(outside.pid, signal.SIGKILL)
        outside.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert len(events(run_dir, "restart_requested")) == len(events(run_dir, "server_restarted")) >= 2


# -- item 7: a server hallurun did not launch on the port ---------------------------------------------------------

def test_an_explicit_port_already_in_use_is_refused_before_launch(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 10)
    stranger = start_mock(tmp_path)
    run_dir = tmp_path / "run"
    try:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                            "--port", str(stranger.port), "--run-dir", str(run_dir))
    finally:
        stop_mock(stranger)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--port {stranger.port}: something is already listening on 127.0.0.1:{stranger.port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not read_jsonl(run_dir / "results.jsonl") and not read_jsonl(run_dir / "failures.jsonl")
    assert not events(run_dir, "server_started")


def test_a_stranger_that_takes_the_picked_port_before_the_server_binds_is_not_used(hallurun: Hallurun,
                                                                                  tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    # The launched server binds late, like vLLM after loading its weights; the stranger binds in between.
    proc = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                          "--run-dir", str(run_dir), "--", "--fault", "startup-delay:8", log=tmp_path / "out.log")
    stranger = None
    try:
        launched = wait_until(lambda: re.search(r"--port (\d+)", _text(run_dir / "server.log")), 60, "the launch")
        port = int(launched.group(1))
        stranger = subprocess.Popen(mock_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: mock_health(f"http://127.0.0.1:{port}") == 200, 30, "the stranger")
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if stranger is not None:
            stranger.kill()
            stranger.wait()
    output = (tmp_path / "out.log").read_text()
    assert code != 0, output
    assert f"pid {stranger.pid} (" in output and "Traceback" not in output
    assert not read_jsonl(run_dir / "results.jsonl") and not read_jsonl(run_dir / "failures.jsonl")


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# -- item 12: a second Ctrl-C during the stop, and a guardian killed first ---------------------------------------

def test_a_second_interrupt_during_the_stop_grace_kills_a_server_that_ignores_sigterm(hallurun: Hallurun,
                                                                                      tmp_path: Path) -> None:
    run_dir, _, args = stand_in_run(hallurun, tmp_path, 2000, "--ignore-sigterm", "--latency", "0.05",
                                    opts=("--concurrency", "4"))
    proc = hallurun.start(*args)
    wait_until(lambda: read_jsonl(run_dir / "results.jsonl"), 60, "results")
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: events(run_dir, "server_stopping"), 30, "the stop to begin")
    pids = server_processes(run_dir)
    assert pids  # the server ignores the TERM: the stop is waiting out its grace
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    alive = [pid for pid in pids if not dead_or_dying(pid)]
    assert not alive, f"still running after hallurun exited, without a KILL on its way: {alive}"


def test_a_killed_guardian_is_replaced_and_kill_9_then_leaves_no_server(hallurun: Hallurun, tmp_path: Path) -> None:
    run_dir, _, args = stand_in_run(hallurun, tmp_path, 2000, "--ignore-sigterm", "--latency", "0.05",
                                    opts=("--concurrency", "4"))
    proc = hallurun.start(*args)
    try:
        wait_until(lambda: read_jsonl(run_dir / "results.jsonl"), 60, "results")
        (first,) = guardians(proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: guardians(proc.pid) - {first}, 30, "a new guardian")
        assert server_processes(run_dir)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # The server ignores SIGTERM (its parent-death signal too): only the new guardian's KILL ends it.
    wait_until(lambda: not server_processes(run_dir), 30, "the server to be reaped")


# -- item 13: a descendant that left the server's session --------------------------------------------------------

@pytest.mark.parametrize("end", ["finish", "kill_9", "restart"])
def test_a_descendant_in_a_session_of_its_own_does_not_survive(hallurun: Hallurun, tmp_path: Path,
                                                               end: str) -> None:
    faults = ("--fault", "crash-after:25") if end == "restart" else ()
    run_dir, ids, args = stand_in_run(hallurun, tmp_path, 40 if end != "kill_9" else 2000, "--setsid-child",
                                      "--latency", "0.05", *faults, opts=("--concurrency", "4"))
    if end == "kill_9":
        proc = hallurun.start(*args)
        wait_until(lambda: read_jsonl(run_dir / "results.jsonl"), 60, "results")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        done = hallurun.run(*args, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_exactly_once(run_dir, ids)
    if end == "restart":
        assert events(run_dir, "server_restarted")
    wait_until(lambda: not server_processes(run_dir), 30, "every process of the server tree to be gone")


# -- item 14 (part): --max-tokens beyond the server's context ----------------------------------------------------

def test_max_tokens_beyond_the_servers_context_is_refused_before_the_run(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 10)
    run_dir = tmp_path / "run"
    # With a key, as vLLM with --api-key: /v1/models is read with it, or the check could not see the limit.
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                        "--run-dir", str(run_dir), "--max-tokens", "64", "--", "--max-model-len", "64",
                        env={"HALLURUN_API_KEY": "sesame"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--max-tokens 64" in proc.stderr and "max_model_len 64" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not read_jsonl(run_dir / "results.jsonl") and not read_jsonl(run_dir / "failures.jsonl")


def test_max_tokens_within_the_servers_context_runs(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 10)
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                        "--run-dir", str(run_dir), "--max-tokens", "32", "--", "--max-model-len", "64",
                        env={"HALLURUN_API_KEY": "sesame"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)


# -- the API key ----------------------------------------------------------------------------------------------------

def _key_nowhere(run_dir: Path, key: str) -> None:
    for name in ("manifest.json", "events.jsonl", "server.log", "results.jsonl"):
        path = run_dir / name
        assert not path.exists() or key not in path.read_text(errors="replace"), name


def test_the_key_from_hallurun_api_key_opens_an_external_server_for_the_probe_and_every_request(
        hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 20)
    server = start_mock(tmp_path, "--api-key", "open-sesame")
    try:
        run_dir = tmp_path / "run"
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url",
                            server.url, "--run-dir", str(run_dir), env={"HALLURUN_API_KEY": "open-sesame"})
    finally:
        stop_mock(server)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    _key_nowhere(run_dir, "open-sesame")
    assert "open-sesame" not in proc.stdout + proc.stderr


def test_a_vllm_api_key_inherited_from_the_shell_does_not_lock_hallurun_out_of_its_own_server(
        hallurun: Hallurun, tmp_path: Path) -> None:
    # The mock, like vLLM, enforces VLLM_API_KEY from its environment; hallurun sends only HALLURUN_API_KEY.
    ids = write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                        "--run-dir", str(run_dir), env={"VLLM_API_KEY": "from-the-shell"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert "API key is required" not in (run_dir / "server.log").read_text()
    keyed = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                         "--run-dir", str(tmp_path / "keyed"), env={"VLLM_API_KEY": "from-the-shell",
                                                                    "HALLURUN_API_KEY": "the-run-key"})
    assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    assert_exactly_once(tmp_path / "keyed", ids)
    assert "API key is required" in (tmp_path / "keyed" / "server.log").read_text()  # the run's own key
    _key_nowhere(tmp_path / "keyed", "the-run-key")


def test_an_old_server_that_stays_after_post_restart_is_asked_again(hallurun: Hallurun, tmp_path: Path) -> None:
    # Each server process says yes to its first POST /restart and stays: only a second request makes it go.
    ids = write_dataset(tmp_path / "data.jsonl", 60)
    port = free_port()
    server = " ".join([*mock_command(port, "--fault", "hang-after:30", "--fault", "ignore-restarts:1")])
    outside = subprocess.Popen(["bash", "-c", f"while true; do {server}; done"], env=hallurun.env,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "run"
    try:
        wait_until(lambda: mock_health(f"http://127.0.0.1:{port}") == 200, 30, "the external server")
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url",
                            f"http://127.0.0.1:{port}", "--run-dir", str(run_dir), "--stall-timeout", "2",
                            "--restart-wait", "30")
    finally:
        os.killpg(outside.pid, signal.SIGKILL)
        outside.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert events(run_dir, "restart_requested_again")


@contextlib.contextmanager
def _stand_in(script: str, *args: str) -> Iterator[str]:
    """A stand-in server of tests/ (a real process) on a free port, once healthy: its URL; killed afterwards."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / script), "--port", str(port), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: mock_health(url) == 200, 30, "the stand-in server")
        yield url
    finally:
        server.kill()
        server.wait(10)


def test_a_server_still_wedged_after_post_restart_is_asked_again_though_a_health_check_failed_meanwhile(
        hallurun: Hallurun, tmp_path: Path) -> None:
    # Chaos seed 7054 (through the fault proxy): a POST /restart that never reached the server, then one dropped
    # health check, which looked like the old server going; the server, healthy and still wedged, timed out every
    # probe until the restart wait ran out, and the run ended with exit 3. A server that answers /health but not
    # a generation after it was asked to restart has not restarted: it is asked again.
    ids = write_dataset(tmp_path / "data.jsonl", 10)
    run_dir = tmp_path / "run"
    with _stand_in("unmoved_server.py", "--serve", "3", "--lost", "1") as url:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url",
                            url, "--run-dir", str(run_dir), "--stall-timeout", "2",
                            "--restart-wait", "20", "--concurrency", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert len(events(run_dir, "restart_requested")) == 1 and len(events(run_dir, "server_restarted")) == 1
    assert events(run_dir, "restart_requested_again")


def test_an_external_server_found_wedged_at_the_first_start_is_asked_to_restart(hallurun: Hallurun,
                                                                               tmp_path: Path) -> None:
    # Chaos seed 10007: hallurun killed (-9) with a stalling item in flight left the external server wedged
    # (/health 200, no generation answered); the resume's first start timed out probe after probe until the
    # startup timeout ran out (exit 3). A server that is healthy but times out a one-token probe is wedged,
    # at a first start too: it is asked to restart.
    ids = write_dataset(tmp_path / "data.jsonl", 6)
    run_dir = tmp_path / "run"
    with _stand_in("unmoved_server.py", "--serve", "0", "--lost", "0") as url:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url",
                            url, "--run-dir", str(run_dir), "--startup-timeout", "20")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    kinds = [e["event"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert kinds.index("restart_requested") < kinds.index("server_started")


def test_a_server_failing_many_of_its_requests_still_passes_the_readiness_probe(hallurun: Hallurun,
                                                                                tmp_path: Path) -> None:
    # Seeded: this mock fails its first six requests (the probes) with HTTP 500 and then answers: a flaky server
    # a run copes with by retrying, not a broken one. Five failed probes used to refuse it.
    ids = write_dataset(tmp_path / "data.jsonl", 10)
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                        "--run-dir", str(run_dir), "--max-attempts", "20", "--",
                        "--fault", "error-rate:0.6", "--seed", "4")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert events(run_dir, "server_started")
    settled = {r["id"] for r in read_jsonl(run_dir / "results.jsonl")} | {
        f["id"] for f in read_jsonl(run_dir / "failures.jsonl")}
    assert settled == set(ids)


def test_a_probe_that_is_never_answered_leaves_time_for_another(hallurun: Hallurun, tmp_path: Path) -> None:
    # The first readiness probe goes on a connection that is accepted and never answered; one probe used to wait
    # for the whole startup timeout, and the start failed although the server answered the next one at once.
    ids = write_dataset(tmp_path / "data.jsonl", 10)
    run_dir = tmp_path / "run"
    with _stand_in("held_probe_server.py", "--hold", "1") as url:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url",
                            url, "--run-dir", str(run_dir), "--startup-timeout", "12")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
