"""End-to-end runs of `hallurun inference` against the fault-injecting mock server, all real processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.conftest import Hallurun, events, read_jsonl, server_processes, wait_until, write_dataset


def mock_run(hallurun: Hallurun, dataset: Path, run_dir: Path, *opts: str, faults: tuple[str, ...] = (),
             server_args: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
    server_args = (*server_args, *(a for f in faults for a in ("--fault", f)))
    return hallurun.run("inference", "--task", str(dataset), "--model", "mock-model", "--server", "mock",
                        "--run-dir", str(run_dir), *opts, "--", *server_args, **kw)


def assert_exactly_once(run_dir: Path, ids: list[str], failed: set[str] = frozenset()) -> None:
    results = read_jsonl(run_dir / "results.jsonl")
    counts = Counter(r["id"] for r in results)
    duplicated = [i for i, c in counts.items() if c > 1]
    assert not duplicated, f"duplicated results: {duplicated[:10]}"
    assert set(counts) == set(ids) - set(failed), f"missing: {sorted(set(ids) - set(failed) - set(counts))[:10]}"


def test_clean_run_writes_every_result_once_and_hallulens_generation_file(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 120, extra=lambda i: {"h_score_cat": i % 10})
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    result = read_jsonl(run_dir / "results.jsonl")[0]
    for key in ("id", "prompt", "answer", "h_score_cat", "generation", "finish_reason", "prompt_tokens",
                "completion_tokens", "latency_s", "attempts"):
        assert key in result, key
    assert result["generation"] and result["attempts"] == 1
    generation = read_jsonl(run_dir / "generation.jsonl")
    assert [g["id"] for g in generation] == ids  # dataset order
    assert set(generation[0]) == {"id", "prompt", "answer", "h_score_cat", "generation"}
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["dataset"]["count"] == 120 and len(manifest["dataset"]["sha256"]) == 64
    assert manifest["config"]["sampling"]["max_tokens"] == 256  # the default for ad-hoc prompt files
    names = [e["event"] for e in events(run_dir)]
    assert names[0] == "run_started" and "server_started" in names and names[-1] == "run_finished"
    assert "hallurun resume" in proc.stdout
    assert not server_processes(run_dir)


def test_rerunning_gives_identical_generations(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 30)
    for name in ("a", "b"):
        assert mock_run(hallurun, tmp_path / "data.jsonl", tmp_path / name).returncode == 0
    assert (tmp_path / "a" / "generation.jsonl").read_bytes() == (tmp_path / "b" / "generation.jsonl").read_bytes()


def test_the_engine_line_comes_from_metrics_unless_they_are_turned_off(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 200)
    outputs = {}
    for name, opts in (("default", ()), ("off", ("--metrics-interval", "0"))):
        proc = mock_run(hallurun, tmp_path / "data.jsonl", tmp_path / name, "--concurrency", "8", *opts,
                        server_args=("--latency", "0.1"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs[name] = proc.stdout + proc.stderr
    # The mock's /metrics page, read during the run, feeds the display's engine line.
    assert "engine: running" in outputs["default"]
    assert "engine:" not in outputs["off"]


def test_wedges_cost_exactly_one_restart_each_at_concurrency_64(hallurun: Hallurun, tmp_path: Path) -> None:
    # Each server process answers 150 generation requests (the readiness probe is one), then wedges:
    # /health stays 200 while every stream stops. 300 items need three processes, so exactly two wedges.
    ids = write_dataset(tmp_path / "data.jsonl", 300)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "64", "--stall-timeout", "1.5",
                    faults=("hang-after:150",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    hangs, restarts = events(run_dir, "hang_detected"), events(run_dir, "server_restarted")
    assert len(hangs) == 2 and len(restarts) == 2
    # One verdict for the whole wedged server: 64 requests were waiting on it at the first wedge.
    assert hangs[0]["in_flight"] == 64
    assert {r["cause"] for r in restarts} == {"wedge"}
    # In-flight items went back without losing an attempt.
    assert all(r["attempts"] == 1 for r in read_jsonl(run_dir / "results.jsonl"))


@pytest.mark.parametrize("paced", [False, True], ids=["one-write", "token-by-token"])
def test_an_answer_that_contains_the_end_marker_is_read_whole(hallurun: Hallurun, tmp_path: Path,
                                                               paced: bool) -> None:
    # The stream ends at a `data: [DONE]` line, not wherever the text "[DONE]" appears in an answer.
    answer = "Streams end with data: [DONE] after the last chunk.\ndata: [DONE]\n\nThat is all. [DONE]"
    script = tmp_path / "script.jsonl"
    script.write_bytes(orjson.dumps({"match": "SSE", "response": answer}) + b"\n")
    ids = write_dataset(tmp_path / "data.jsonl", 6, prompt=lambda i: f"How does SSE end? ({i})")
    run_dir = tmp_path / "run"
    pacing = ("--token-rate", "200") if paced else ()
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, server_args=("--script", str(script), *pacing))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    for result in read_jsonl(run_dir / "results.jsonl"):
        assert result["generation"] == answer and result["attempts"] == 1


def test_crashed_server_is_relaunched_at_once(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 200)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "16", "--stall-timeout", "60",
                    faults=("crash-after:90",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    exits, restarts = events(run_dir, "server_exited"), events(run_dir, "server_restarted")
    assert len(exits) >= 2 and len(restarts) == len(exits)
    assert {r["cause"] for r in restarts} == {"server_exited"}
    assert not events(run_dir, "hang_detected")
    # Relaunch is immediate, not after a stall timeout of 60 s or a backoff.
    for gone, back in zip(exits, restarts, strict=True):
        assert back["t"] - gone["t"] < 10


def test_poison_item_is_quarantined_and_everything_else_finishes(hallurun: Hallurun, tmp_path: Path) -> None:
    poison = "item-00013"
    ids = write_dataset(tmp_path / "data.jsonl", 80,
                        prompt=lambda i: "Tell me about XYZZY-POISON" if i == 13 else f"What is {i} squared?")
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "16", "--stall-timeout", "1",
                    faults=("poison:XYZZY-POISON",))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids, failed={poison})
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert [(f["id"], f["reason"]) for f in failures] == [(poison, "poison")]
    assert [e["id"] for e in events(run_dir, "item_quarantined")] == [poison]
    assert len(events(run_dir, "server_restarted")) <= 5  # poison.py: at most five per poison input
    assert poison in proc.stdout


def test_400_fails_fast_and_429_500_are_retried(hallurun: Hallurun, tmp_path: Path) -> None:
    long_prompt = " ".join(["word"] * 400)
    too_long = {f"item-{i:05d}" for i in (3, 17, 31)}
    ids = write_dataset(tmp_path / "data.jsonl", 60,
                        prompt=lambda i: long_prompt if f"item-{i:05d}" in too_long else f"Short question {i}?")
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "16", "--max-attempts", "8",
                    faults=("error-rate:0.15", "rate-limit:0.03", "stream-error-rate:0.05"),
                    server_args=("--max-model-len", "300"))
    # The mock's context limit makes the long prompts a permanent 400, like vLLM's max_model_len.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids, failed=too_long)
    failures = {f["id"]: f for f in read_jsonl(run_dir / "failures.jsonl")}
    assert set(failures) == too_long
    assert all(f["reason"] == "http_400" and f["attempts"] == 1 for f in failures.values())
    attempts = [r["attempts"] for r in read_jsonl(run_dir / "results.jsonl")]
    assert max(attempts) > 1, "with these error rates some items must have needed a retry"
    assert not events(run_dir, "server_restarted")


def test_a_dropped_kept_alive_connection_is_sent_again_at_once(hallurun: Hallurun, tmp_path: Path) -> None:
    # The mock closes every connection that served a completion as the next request arrives on it, unanswered
    # (vLLM's keep-alive timer firing late under load). One item at a time, so each item meets a dropped
    # connection once (the first, that of the readiness probe's generation), then goes out on a new one.
    ids = write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "1", "--metrics-interval", "0",
                    faults=("drop-reused:1",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    # Not an attempt spent, nor a retry with its backoff: the same attempt, sent again.
    assert {r["attempts"] for r in read_jsonl(run_dir / "results.jsonl")} == {1}
    finished = events(run_dir, "run_finished")[0]
    assert finished["retries"] == 0 and finished["resent"] == len(ids)


def test_bad_dataset_line_is_reported_with_file_and_line(hallurun: Hallurun, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "a", "prompt": "fine"}\n\n{"id": "b", "prompt": 7}\n')
    proc = mock_run(hallurun, data, tmp_path / "run")
    assert proc.returncode == 2
    assert f"{data}:3" in proc.stderr and "'prompt'" in proc.stderr
    assert "Traceback" not in proc.stderr
    data.write_text('{"id": "a", "prompt": "fine"}\n{"id": "a", "prompt": "again"}\n')
    proc = mock_run(hallurun, data, tmp_path / "run2")
    assert proc.returncode == 2 and f"{data}:2" in proc.stderr and "'id'" in proc.stderr
    data.write_text('{"prompt": "fine"}\n{not json\n')
    proc = mock_run(hallurun, data, tmp_path / "run3")
    assert proc.returncode == 2 and f"{data}:2" in proc.stderr and "Traceback" not in proc.stderr


def test_torn_last_line_is_repaired_on_resume(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 50)
    run_dir = tmp_path / "run"
    assert mock_run(hallurun, tmp_path / "data.jsonl", run_dir).returncode == 0
    results = run_dir / "results.jsonl"
    raw = results.read_bytes()
    torn_id = orjson.loads(raw.splitlines()[-1])["id"]
    results.write_bytes(raw[:-25])  # a crash in the middle of the last write
    proc = hallurun.run("resume", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "repaired" in proc.stdout
    assert_exactly_once(run_dir, ids)
    assert orjson.loads(results.read_bytes().splitlines()[-1])["id"] == torn_id
    assert events(run_dir, "run_resumed")[0]["repaired_bytes"] > 0


def test_second_runner_is_refused_by_the_lock(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 400)
    run_dir = tmp_path / "run"
    first = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                           "--run-dir", str(run_dir), "--concurrency", "2", "--", "--latency", "0.05")
    try:
        wait_until(lambda: events(run_dir, "server_started"), 30, "the first run to start")
        second = hallurun.run("resume", str(run_dir))
        assert second.returncode == 75  # busy: a scheduler tries again later
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        status = orjson.loads(hallurun.run("status", str(run_dir), "--json").stdout)
        assert status["running_pid"] == first.pid and status["total"] == 400
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(30) == 130


def test_interrupt_stops_cleanly_and_resume_finishes(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 300)
    run_dir = tmp_path / "run"
    log = tmp_path / "first.log"
    first = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                           "--run-dir", str(run_dir), "--concurrency", "4", "--", "--latency", "0.05", log=log)
    wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 20, 60, "some results")
    first.send_signal(signal.SIGINT)
    assert first.wait(30) == 130
    assert f"hallurun resume {run_dir}" in log.read_text()
    assert not server_processes(run_dir)
    assert events(run_dir, "interrupted")
    proc = hallurun.run("resume", str(run_dir), "--concurrency", "32")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    status = orjson.loads(hallurun.run("status", str(run_dir), "--json").stdout)
    assert status["done"] == 300 and status["failed"] == 0 and status["finished"]


def test_kill_9_at_random_moments_then_resume_is_exactly_once(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 400)
    run_dir = tmp_path / "run"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    args = ("--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock", "--run-dir", str(run_dir),
            "--concurrency", "8", "--", "--latency", "0.03")
    for round_ in range(4):
        # A kill before the manifest is written leaves nothing to resume: the same command starts again.
        started = (run_dir / "manifest.json").exists()
        proc = hallurun.start(*(("resume", str(run_dir)) if started else ("inference", *args)))
        delay = rng.uniform(0.2, 2.5)
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # The guardian reaps the orphaned server group.
        wait_until(lambda: not server_processes(run_dir), 20, f"no server left (seed {seed}, round {round_})")
    final = hallurun.run("inference", *args)  # the original command continues the same run
    assert final.returncode == 0, f"seed {seed}: " + final.stdout + final.stderr
    assert_exactly_once(run_dir, ids)


def test_no_server_survives_kill_9_of_hallurun(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 1000)
    run_dir = tmp_path / "run"
    proc = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                          "--run-dir", str(run_dir), "--concurrency", "4", "--", "--latency", "0.05")
    wait_until(lambda: read_jsonl(run_dir / "results.jsonl"), 30, "results")
    assert server_processes(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not server_processes(run_dir), 20, "the server to be reaped")


def test_resume_refuses_a_changed_dataset_unless_forced(hallurun: Hallurun, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_dataset(data, 20)
    run_dir = tmp_path / "run"
    assert mock_run(hallurun, data, run_dir, "--limit", "10").returncode == 0
    write_dataset(data, 20, prefix="other")
    proc = hallurun.run("resume", str(run_dir))
    assert proc.returncode == 2 and "dataset changed" in proc.stderr
    proc = hallurun.run("resume", str(run_dir), "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_server_that_cannot_start_fails_fast_with_its_log(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 5)
    proc = mock_run(hallurun, tmp_path / "data.jsonl", tmp_path / "run", faults=("fail-start",), timeout=60)
    assert proc.returncode == 3
    assert "fail-start" in proc.stderr and "hallurun resume" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_healthy_server_whose_generations_fail_does_not_start(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 5)
    proc = mock_run(hallurun, tmp_path / "data.jsonl", tmp_path / "run", faults=("error-rate:1",), timeout=60)
    assert proc.returncode == 3
    assert "HTTP 500" in proc.stderr and "Traceback" not in proc.stderr


def test_restart_budget_exhausted_exits_3(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 200)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--max-restarts", "1", "--stall-timeout", "1",
                    faults=("hang-after:5",))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "--max-restarts" in proc.stderr and f"hallurun resume {run_dir}" in proc.stderr
    assert len(events(run_dir, "server_restarted")) == 1


def test_a_single_quiet_stream_is_retried_alone_without_a_restart(hallurun: Hallurun, tmp_path: Path) -> None:
    stalled = "item-00002"
    ids = write_dataset(tmp_path / "data.jsonl", 150,
                        prompt=lambda i: "STALL-ME please" if i == 2 else f"What is {i} cubed?")
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "8", "--stall-timeout", "1.5",
                    faults=("stream-stall:STALL-ME",), server_args=("--token-rate", "40"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    attempts = {r["id"]: r["attempts"] for r in read_jsonl(run_dir / "results.jsonl")}
    assert attempts[stalled] == 2
    assert all(a == 1 for i, a in attempts.items() if i != stalled)
    assert not events(run_dir, "hang_detected") and not events(run_dir, "server_restarted")


def test_without_restarts_a_wedge_costs_attempts_like_a_timeout(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 30)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "4", "--stall-timeout", "1",
                    "--max-attempts", "2", faults=("hang-after:11",), env={"ENABLE_SERVER_RESTART": "false"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    done = {r["id"] for r in read_jsonl(run_dir / "results.jsonl")}
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert len(done) == 10 and {f["reason"] for f in failures} == {"stalled"}
    assert done | {f["id"] for f in failures} == set(ids)
    assert not events(run_dir, "server_restarted")


def test_options_come_from_the_environment(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 5)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir,
                    env={"HALLURUN_CONCURRENCY": "3", "HALLURUN_MAX_TOKENS": "12", "SERVER_RESTART_WAIT_TIME": "7"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = orjson.loads((run_dir / "manifest.json").read_bytes())["config"]
    assert config["concurrency"] == 3 and config["sampling"]["max_tokens"] == 12 and config["restart_wait"] == 7


def _start_external(hallurun: Hallurun, port: int, faults: str, supervised: bool) -> subprocess.Popen:
    server = " ".join([*hallurun.cmd("mock-server", "--port", str(port)), *faults.split()])
    script = f"while true; do {server}; done" if supervised else f"exec {server}"
    return subprocess.Popen(["bash", "-c", script], env=hallurun.env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_external_server_is_asked_to_restart_and_its_supervisor_brings_it_back(hallurun: Hallurun,
                                                                              tmp_path: Path) -> None:
    from hallurun.server.supervisor import free_port

    ids = write_dataset(tmp_path / "data.jsonl", 120)
    port = free_port("127.0.0.1")
    outside = _start_external(hallurun, port, "--fault hang-after:50", supervised=True)
    run_dir = tmp_path / "run"
    try:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m",
                            "--server-url", f"http://127.0.0.1:{port}", "--run-dir", str(run_dir),
                            "--stall-timeout", "1", "--restart-wait", "30")
    finally:
        os.killpg(outside.pid, signal.SIGKILL)
        outside.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert len(events(run_dir, "restart_requested")) == len(events(run_dir, "server_restarted")) >= 2


def test_external_server_nobody_brings_back_ends_with_a_clear_message(hallurun: Hallurun, tmp_path: Path) -> None:
    from hallurun.server.supervisor import free_port

    write_dataset(tmp_path / "data.jsonl", 60)
    port = free_port("127.0.0.1")
    outside = _start_external(hallurun, port, "--fault hang-after:20", supervised=False)
    run_dir = tmp_path / "run"
    try:
        proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m",
                            "--server-url", f"http://127.0.0.1:{port}", "--run-dir", str(run_dir),
                            "--stall-timeout", "1", "--restart-wait", "2")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(outside.pid, signal.SIGKILL)
        outside.wait()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "a supervisor must bring" in proc.stderr and f"hallurun resume {run_dir}" in proc.stderr
    assert events(run_dir, "restart_requested")


def test_second_interrupt_exits_at_once_without_orphans(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 2000)
    run_dir = tmp_path / "run"
    proc = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                          "--run-dir", str(run_dir), "--concurrency", "4", "--", "--latency", "0.05")
    wait_until(lambda: read_jsonl(run_dir / "results.jsonl"), 30, "results")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    wait_until(lambda: not server_processes(run_dir), 20, "the server to be gone")
    ids = [r["id"] for r in read_jsonl(run_dir / "results.jsonl")]
    assert len(ids) == len(set(ids))


def test_default_run_dir_and_resume_and_status_without_arguments(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 40)
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "org/My Model",
                        "--server", "mock", "--limit", "25")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("data-My_Model-")
    assert_exactly_once(run_dir, ids[:25])
    status = orjson.loads(hallurun.run("status", "--json").stdout)
    assert (status["total"], status["done"], status["failed"], status["restarts"]) == (25, 25, 0, 0)
    proc = hallurun.run("resume")
    assert proc.returncode == 0 and "25/25 already settled" in proc.stdout


def test_resume_retry_failed_runs_failures_again(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    # A context too short for any item: every one fails with a permanent 400.
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--max-tokens", "10",
                    server_args=("--max-model-len", "20"))
    assert proc.returncode == 1
    assert {f["reason"] for f in read_jsonl(run_dir / "failures.jsonl")} == {"http_400"}
    # Without --retry-failed, failures stay settled.
    assert "20/20 already settled" in hallurun.run("resume", str(run_dir)).stdout
    # The server's arguments after `--` may change on resume (here: no context limit).
    proc = hallurun.run("resume", str(run_dir), "--retry-failed", "--", "--latency", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert read_jsonl(run_dir / "failures.jsonl") == []
    assert len(read_jsonl(run_dir / "failures.retried.jsonl")) == 20
