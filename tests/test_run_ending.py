"""The run's inputs and its ending, with real processes: a dataset rewritten under a run, a run directory that
cannot be written, bad options refused before any work, an interrupt during the final stop, and how hallurun
ends when something unexpected happens."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import signal
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from hallurun.cli import main
from hallurun.core import runner
from hallurun.errors import EXIT_IO
from hallurun.store.checkpoint import Checkpoint
from hallurun.store.dataset import DatasetChanged, iter_items, scan
from tests.conftest import Hallurun, events, read_jsonl, server_processes, wait_until, write_dataset


def write_prompts(path: Path, prompts: list[str]) -> None:
    """Records without ids: each item's id is its position, the case where a rewrite is most dangerous."""
    path.write_bytes(b"".join(orjson.dumps({"prompt": p}) + b"\n" for p in prompts))


def mock_args(data: Path, run_dir: Path, *opts: str) -> tuple[str, ...]:
    return ("inference", "--task", str(data), "--model", "m", "--server", "mock", "--run-dir", str(run_dir), *opts)


# -- a dataset rewritten during a run -------------------------------------------------------------------------

def test_the_lazy_read_refuses_a_record_that_is_not_the_one_validated(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_prompts(data, [f"question {i}" for i in range(5)])
    info = scan(data)
    write_prompts(data, [f"question {i}" for i in range(3)] + ["another question", "question 4"])
    read = iter_items(data, expected=info)
    assert [item.prompt for item in (next(read), next(read), next(read))] == [f"question {i}" for i in range(3)]
    with pytest.raises(DatasetChanged, match=r"data.jsonl:4: the file changed during the run"):
        next(read)


def test_the_lazy_read_refuses_records_beyond_those_validated_and_a_shorter_file(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_prompts(data, ["a", "b"])
    info = scan(data)
    write_prompts(data, ["a", "b", "c"])
    with pytest.raises(DatasetChanged, match="more than the 2 records"):
        list(iter_items(data, expected=info))
    assert [i.prompt for i in iter_items(data, limit=2, expected=scan(data, limit=2))] == ["a", "b"]
    write_prompts(data, ["a"])
    with pytest.raises(DatasetChanged, match="1 of the 2 records"):
        list(iter_items(data, expected=info))


def test_a_dataset_rewritten_in_place_during_a_run_is_refused_and_no_answer_meets_another_question(
        hallurun: Hallurun, tmp_path: Path) -> None:
    data, run_dir = tmp_path / "data.jsonl", tmp_path / "run"
    # Large enough that the reader's buffer is far from the end when the file is rewritten.
    original = [f"original question {i}: " + "words " * 20 for i in range(2000)]
    write_prompts(data, original)
    proc = hallurun.start(*mock_args(data, run_dir, "--concurrency", "2", "--", "--latency", "0.1"),
                          log=tmp_path / "run.log")
    wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 4, 60, "some results")
    write_prompts(data, [f"regenerated question {i}" for i in range(2500)])  # a generator re-run with `>`
    assert proc.wait(60) == 2
    output = (tmp_path / "run.log").read_text()
    assert "changed during the run" in output and str(data) in output and "Traceback" not in output
    results = read_jsonl(run_dir / "results.jsonl")
    assert results and len(results) < 2000
    assert all(r["prompt"] == original[int(r["id"])] for r in results)
    assert not (run_dir / "generation.jsonl").exists()
    assert not server_processes(run_dir)

    write_prompts(data, original)  # restored: the run continues where it stopped
    done = hallurun.run("resume", str(run_dir), "--concurrency", "32", "--")  # and without the latency
    assert done.returncode == 0, done.stdout + done.stderr
    generation = read_jsonl(run_dir / "generation.jsonl")
    assert [g["prompt"] for g in generation] == original
    assert Counter(r["id"] for r in read_jsonl(run_dir / "results.jsonl")) == Counter(str(i) for i in range(2000))


def test_resume_from_another_directory_finds_a_relative_dataset(hallurun: Hallurun, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    write_dataset(tmp_path / "work" / "data.jsonl", 30)
    first = Hallurun(tmp_path / "work")
    proc = first.start(*mock_args(Path("data.jsonl"), tmp_path / "run", "--concurrency", "2", "--", "--latency",
                                  "0.1"))
    wait_until(lambda: read_jsonl(tmp_path / "run" / "results.jsonl"), 60, "some results")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    elsewhere = Hallurun(tmp_path)  # another working directory
    done = elsewhere.run("resume", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(read_jsonl(tmp_path / "run" / "generation.jsonl")) == 30


# -- a run directory that cannot be written ----------------------------------------------------------------------

def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_stops_the_run_with_its_own_code_whole_lines_and_a_resume_that_finishes(
        hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 400)
    run_dir = tmp_path / "run"
    # The kernel refuses any write that would take a file past 24 KB: results.jsonl reaches it after ~100 items.
    # Paced (a few items per batch) so that several batches are on disk before one meets the limit.
    args = mock_args(tmp_path / "data.jsonl", run_dir, "--concurrency", "2", "--", "--latency", "0.02")
    proc = subprocess.run(hallurun.cmd(*args),
                          cwd=hallurun.cwd, env=hallurun.env, capture_output=True, text=True, timeout=120,
                          preexec_fn=_file_size_limit(24_000))
    assert proc.returncode == EXIT_IO, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "results.jsonl" in errors[0] and "File too large" in errors[0], proc.stderr
    assert f"hallurun resume {run_dir}" in proc.stderr
    raw = (run_dir / "results.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    written = [orjson.loads(line) for line in raw.splitlines()]  # every line whole: none torn mid-file
    assert written
    assert not server_processes(run_dir)
    done = hallurun.run("resume", str(run_dir), "--concurrency", "16", "--")
    assert done.returncode == 0, done.stdout + done.stderr
    assert Counter(r["id"] for r in read_jsonl(run_dir / "results.jsonl")) == Counter(ids)


def test_a_failed_batch_is_cut_back_off_the_file_and_kept_for_the_next_flush(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path)
    checkpoint.add_result({"id": "a", "generation": "x" * 100})
    checkpoint.flush()
    size = (tmp_path / "results.jsonl").stat().st_size
    checkpoint.add_result({"id": "b", "generation": "y" * 5000})
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, old[1]))
    try:
        with pytest.raises(runner.RunDirWriteError, match=r"results\.jsonl"):
            checkpoint.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
    assert (tmp_path / "results.jsonl").stat().st_size == size  # the part that did go in was cut off again
    checkpoint.close()  # the kept batch goes in now that there is room
    assert [r["id"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["a", "b"]


# -- bad options, refused before any work ----------------------------------------------------------------------

@pytest.mark.parametrize(("opts", "message"), [
    (("--server-python", "/no/such/python"), "--server-python /no/such/python: no such file"),
    (("--temperature", "-0.5"), "--temperature must not be negative"),
    (("--top-p", "1.5"), "--top-p must be above 0 and at most 1"),
    (("--server-url", "http://user:secret@127.0.0.1:9"), "--server-url must not carry credentials"),
    (("--host", "no-such-host.invalid"), "--host no-such-host.invalid: a server cannot listen there"),
])
def test_bad_options_get_one_line_and_exit_2_before_any_work(hallurun: Hallurun, tmp_path: Path,
                                                             opts: tuple[str, ...], message: str) -> None:
    write_dataset(tmp_path / "data.jsonl", 3)
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server", "mock",
                        "--run-dir", str(tmp_path / "run"), *opts)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and f"error: {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "secret" not in proc.stdout
    assert not (tmp_path / "run" / "server.log").exists()


def test_a_run_dir_that_cannot_be_created_is_named(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 3)
    (tmp_path / "a-file").write_text("not a folder")
    proc = hallurun.run(*mock_args(tmp_path / "data.jsonl", tmp_path / "a-file" / "run"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: --run-dir {tmp_path / 'a-file' / 'run'}: cannot create it "
                                        "(Not a directory)"]


def test_a_corrupt_manifest_is_named_and_left_as_it_was(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_bytes(b'{"fingerprint": ')
    proc = hallurun.run(*mock_args(tmp_path / "data.jsonl", run_dir))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "manifest.json: not valid JSON" in proc.stderr
    assert (run_dir / "manifest.json").read_bytes() == b'{"fingerprint": '


# -- the end of a run ---------------------------------------------------------------------------------------------

def test_one_interrupt_while_the_server_stops_after_a_complete_run_keeps_it_complete(
        hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    proc = hallurun.start(*mock_args(tmp_path / "data.jsonl", run_dir, "--", "--term-delay", "5"),
                          log=tmp_path / "run.log")
    wait_until(lambda: "mock: SIGTERM" in (run_dir / "server.log").read_text(errors="replace")
               if (run_dir / "server.log").exists() else False, 60, "the server being stopped")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, (tmp_path / "run.log").read_text()
    assert len(read_jsonl(run_dir / "generation.jsonl")) == 20
    assert events(run_dir, "run_finished")
    assert not server_processes(run_dir)


def test_resume_of_a_finished_run_launches_no_server(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 10)
    run_dir = tmp_path / "run"
    assert hallurun.run(*mock_args(tmp_path / "data.jsonl", run_dir)).returncode == 0
    (run_dir / "generation.jsonl").unlink()
    proc = hallurun.run("resume", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(events(run_dir, "server_started")) == 1
    assert len(read_jsonl(run_dir / "generation.jsonl")) == 10


def open_files(pid: int) -> set[str]:
    """What a process has open now (its descriptors come and go while we look)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(os.readlink(fd))
    return found


def test_a_start_that_meets_status_reading_the_lock_waits_for_it(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 5)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fd = os.open(run_dir / "lock", os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # what `hallurun status` holds for an instant
    try:
        proc = hallurun.start(*mock_args(tmp_path / "data.jsonl", run_dir))
        wait_until(lambda: str(run_dir / "lock") in open_files(proc.pid), 30, "hallurun to open the lock")
    finally:
        os.close(fd)
    assert proc.wait(60) == 0


def test_an_unexpected_exception_says_it_is_a_bug_and_exits_70(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 3)

    async def broken(*args: object, **kwargs: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner, "start_async", broken)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m",
                                       "--run-dir", str(run_dir)])
    assert result.exit_code == 70
    assert "internal error, a bug in hallurun" in result.output and "ZeroDivisionError" in result.output
    # The report names the run the bug met, and asks for the report.
    assert f"run folder: {run_dir}" in result.output and "Please report it" in result.output


def test_as_pid_1_a_sigterm_before_the_run_installs_its_handlers_still_stops_hallurun(
        hallurun: Hallurun, tmp_path: Path) -> None:
    data, run_dir = tmp_path / "data.jsonl", tmp_path / "run"
    # Validating a million records takes seconds: a window before the run installs its own signal handlers.
    data.write_bytes(b"".join(orjson.dumps({"prompt": f"q {i}"}) + b"\n" for i in range(1_000_000)))
    # hallurun as PID 1 of a new PID namespace, as in a container, where the kernel drops unhandled SIGTERMs.
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *hallurun.cmd(*mock_args(data, run_dir))],
                            cwd=hallurun.cwd, env=hallurun.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pid_1 = int(wait_until(lambda: children.read_text().split(), 30, "hallurun to start")[0])
    wait_until(lambda: (run_dir / "lock").exists(), 30, "hallurun to reach the dataset")
    os.kill(pid_1, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and not (run_dir / "manifest.json").exists()


def test_a_run_dir_whose_lock_cannot_be_opened_is_named(hallurun: Hallurun, tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 3)
    run_dir = tmp_path / "run"
    (run_dir / "lock").mkdir(parents=True)  # as root, permissions block nothing: a folder in its place does
    proc = hallurun.run(*mock_args(tmp_path / "data.jsonl", run_dir))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and f"{run_dir / 'lock'}: cannot open it" in proc.stderr


def test_resume_of_a_manifest_without_its_configuration_is_one_line(hallurun: Hallurun, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_bytes(b"{}")
    proc = hallurun.run("resume", str(run_dir))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {run_dir / 'manifest.json'}: unreadable configuration ('config')"]


def test_a_last_moment_flush_gives_up_on_a_batch_whose_thread_cannot_start(tmp_path: Path) -> None:
    # A second Ctrl-C flushes from the event loop's own thread. A batch taken by `flush_in_thread` whose thread
    # has not been started yet holds the lock, and cannot start while the handler holds the loop: waiting for
    # it would hang hallurun for good.
    checkpoint = Checkpoint(tmp_path)
    checkpoint.add_result({"id": "a", "generation": "x"})

    async def second_signal_meets_a_batch() -> bool:
        batch = asyncio.ensure_future(checkpoint.flush_in_thread())
        await asyncio.sleep(0)  # the batch is taken and the lock held; its thread is not running yet
        gave_up = checkpoint.flush(wait=0.2) is False
        await batch
        return gave_up

    assert asyncio.run(second_signal_meets_a_batch())
    checkpoint.close()
    assert [r["id"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["a"]


def test_resume_force_runs_again_the_items_whose_question_changed_and_eval_reads_the_run(
        hallurun: Hallurun, tmp_path: Path) -> None:
    data, run_dir = tmp_path / "data.jsonl", tmp_path / "run"
    def write(prompts: list[str]) -> None:  # records without ids, with what a mixedentities eval reads
        data.write_bytes(b"".join(orjson.dumps({"prompt": p, "name": f"Thing {i}"}) + b"\n"
                                  for i, p in enumerate(prompts)))

    before = [f"question {i}" for i in range(20)]
    write(before)
    assert hallurun.run(*mock_args(data, run_dir)).returncode == 0
    after = [f"a new question {i}" if i in (3, 7) else p for i, p in enumerate(before)]
    write(after)  # ids are positions: items 3 and 7 now ask something else
    assert hallurun.run("resume", str(run_dir)).returncode == 2
    proc = hallurun.run("resume", str(run_dir), "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 answer(s) were to questions that have changed" in proc.stdout
    assert [r["id"] for r in read_jsonl(run_dir / "results.superseded.jsonl")] == ["3", "7"]
    results = read_jsonl(run_dir / "results.jsonl")
    assert sorted(int(r["id"]) for r in results) == list(range(20))
    assert all(r["prompt"] == after[int(r["id"])] for r in results)
    assert [g["prompt"] for g in read_jsonl(run_dir / "generation.jsonl")] == after
    judged = hallurun.run("eval", str(run_dir), "--evaluator", "mixedentities")
    assert judged.returncode == 0, judged.stdout + judged.stderr
