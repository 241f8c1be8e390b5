"""Sharded runs: `--shard I/N|auto` under simulated Slurm and Kubernetes variables, concurrent shard processes
killed with SIGKILL and resumed, and `hallurun merge` (every id once, the unsharded run's generation.jsonl, and a
refusal of one line for each kind of bad shard). Real hallurun processes against real mock servers throughout."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import orjson
import pytest
from conftest import Hallurun, events, read_jsonl, wait_until, write_dataset

from hallurun.config import ConfigError, Shard, shard_from_environment, shard_option
from hallurun.errors import EXIT_TABLE

N = 4


def slurm(task: int, count: int = N, low: int = 0) -> dict[str, str]:
    """What Slurm exports to a task of `sbatch --array=LOW-(LOW+COUNT-1)`."""
    return {"SLURM_ARRAY_TASK_ID": str(low + task), "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_MAX": str(low + count - 1), "SLURM_ARRAY_TASK_STEP": "1",
            "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_ARRAY_JOB_ID": "4242"}


def kubernetes(index: int) -> dict[str, str]:
    """What Kubernetes exports to a pod of an Indexed Job (the completions are not exported)."""
    return {"JOB_COMPLETION_INDEX": str(index)}


def shard_args(data: Path, run: Path, *extra: str) -> tuple[str, ...]:
    return ("inference", "--task", str(data), "--model", "m", "--server", "mock", "--run-dir", str(run), *extra)


def ids_of(path: Path) -> list[str]:
    return [str(r["id"]) for r in read_jsonl(path)]


# The decision, without processes.

def test_every_item_is_in_exactly_one_shard_and_the_sizes_add_up() -> None:
    for count in (1, 2, 3, 7, 16):
        for total in (0, 1, 5, 16, 101):
            owners = [[i for i in range(count) if Shard(i, count).holds(p)] for p in range(total)]
            assert all(len(owner) == 1 for owner in owners)
            sizes = [Shard(i, count).size(total) for i in range(count)]
            assert sum(sizes) == total and max(sizes, default=0) - min(sizes, default=0) <= 1


def test_shard_auto_reads_each_scheduler() -> None:
    assert shard_from_environment(slurm(2)) == (Shard(2, 4), "slurm")
    assert shard_from_environment(slurm(0, 8, low=1)) == (Shard(0, 8), "slurm")  # --array=1-8
    stepped = {**slurm(0), "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MAX": "12", "SLURM_ARRAY_TASK_STEP": "4"}
    assert shard_from_environment(stepped) == (Shard(2, 4), "slurm")  # --array=0-12:4
    assert shard_from_environment(kubernetes(3), 4) == (Shard(3, 4), "kubernetes")
    skypilot = {"SKYPILOT_JOB_RANK": "1", "SKYPILOT_NUM_JOBS": "3"}
    assert shard_from_environment(skypilot) == (Shard(1, 3), "skypilot")
    assert shard_option("1/3", None, {}) == Shard(1, 3) and shard_option(None, None, {}) is None


@pytest.mark.parametrize(("environ", "shards", "says"), [
    ({}, None, "no scheduler's index in the environment"),
    (kubernetes(1), None, "give it as --shards N"),
    (kubernetes(4), 4, "not below --shards 4"),
    ({**slurm(1), "SLURM_ARRAY_TASK_COUNT": "3"}, None, "not one contiguous range"),  # --array=0,1,3
    (slurm(1), 8, "--shards 8: the slurm job has 4 tasks"),
    ({"SKYPILOT_JOB_RANK": "x", "SKYPILOT_NUM_JOBS": "2"}, None, "SKYPILOT_JOB_RANK='x' is not a whole number"),
])
def test_shard_auto_that_cannot_tell_is_one_clear_error(environ: dict[str, str], shards: int | None,
                                                        says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        shard_option("auto", shards, environ)


# Whole runs.

def test_four_concurrent_shards_two_killed_and_resumed_merge_to_the_unsharded_run(hallurun: Hallurun,
                                                                                   tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    ids = write_dataset(data, 240)
    run = tmp_path / "RUN"
    slow = ("--concurrency", "2", "--", "--latency", "0.1")
    schedulers = [slurm(0), slurm(1), kubernetes(2), kubernetes(3)]
    auto = [("--shard", "auto") if i < 2 else ("--shard", "auto", "--shards", str(N)) for i in range(N)]
    procs = [hallurun.start(*shard_args(data, run, *auto[i], *slow), env=schedulers[i], log=tmp_path / f"s{i}.log")
             for i in range(N)]
    folders = [run / Shard(i, N).folder for i in range(N)]
    for victim in (1, 2):
        wait_until(lambda v=victim: len(read_jsonl(folders[v] / "results.jsonl")) >= 8, 60, f"shard {victim}'s start")
        os.kill(procs[victim].pid, signal.SIGKILL)
    assert [procs[i].wait(120) for i in range(N)] == [0, -signal.SIGKILL, -signal.SIGKILL, 0]

    # Two shards unfinished: merge says so, one line each, with the command that finishes it.
    refused = hallurun.run("merge", str(run))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 2 and all("not settled; finish it with: hallurun resume" in line for line in lines)
    assert str(folders[1]) in lines[0] and str(folders[2]) in lines[1]
    assert not (run / "results.jsonl").exists()

    # Slurm requeues the very same command; under Kubernetes, `resume --shard auto` continues the shard alike.
    again = hallurun.run(*shard_args(data, run, "--shard", "auto", *slow), env=slurm(1))
    assert again.returncode == 0, again.stderr
    resumed = hallurun.run("resume", str(run), "--shard", "auto", "--shards", str(N), env=kubernetes(2))
    assert resumed.returncode == 0, resumed.stderr
    for victim in (1, 2):  # continued from what the killed process had written, not started again
        starts = [e for e in events(folders[victim]) if e["event"] in ("run_started", "run_resumed")]
        assert len(starts) == 2 and starts[1]["done"] >= 8 and starts[1]["total"] == 60

    merged = hallurun.run("merge", str(run))
    assert merged.returncode == 0, merged.stderr
    assert sorted(ids_of(run / "results.jsonl")) == sorted(ids) and len(ids_of(run / "results.jsonl")) == len(ids)
    assert ids_of(run / "results.jsonl") == ids  # dataset order
    assert read_jsonl(run / "failures.jsonl") == []
    for i, folder in enumerate(folders):  # each shard answered its own items, each once
        assert sorted(ids_of(folder / "results.jsonl")) == [ids[p] for p in range(i, len(ids), N)]
    saved = orjson.loads((run / "manifest.json").read_bytes())
    assert saved["merged"]["shards"] == N and saved["config"]["shard"] is None
    shard_manifest = orjson.loads((folders[3] / "manifest.json").read_bytes())
    assert shard_manifest["config"]["shard"] == {"index": 3, "count": N}
    assert shard_manifest["dataset"]["sha256"] == saved["dataset"]["sha256"] and shard_manifest["items"] == 60

    single = hallurun.run(*shard_args(data, tmp_path / "single", "--concurrency", "8"))
    assert single.returncode == 0, single.stderr
    assert (run / "generation.jsonl").read_bytes() == (tmp_path / "single" / "generation.jsonl").read_bytes()

    status = orjson.loads(hallurun.run("status", str(run), "--json").stdout)
    assert status["finished"] and status["merged"] == N and status["done"] == len(ids)
    assert [part["shard"] for part in status["shards"]] == [f"{i}/{N}" for i in range(N)]
    assert all(part["finished"] for part in status["shards"])


def test_merge_refuses_a_missing_a_foreign_and_an_unfinished_shard_in_one_line_each(hallurun: Hallurun,
                                                                                       tmp_path: Path) -> None:
    data, other = tmp_path / "data.jsonl", tmp_path / "other.jsonl"
    ids = write_dataset(data, 30)
    write_dataset(other, 30, prefix="other")
    run = tmp_path / "RUN"

    def merge_says() -> str:
        proc = hallurun.run("merge", str(run))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and not (run / "results.jsonl").exists()
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        return proc.stderr.strip()

    assert hallurun.run(*shard_args(data, run, "--shard", "0/2")).returncode == 0
    missing = merge_says()
    assert missing.startswith(f"error: {run / 'shard-1-of-2'}: missing; start it with: hallurun inference ")
    # The command it names starts the missing shard (here with the mock server, as the test's shards ran).
    start = missing.split("start it with: ", 1)[1].split()[1:]
    assert start[-4:] == ["--run-dir", str(run), "--shard", "1/2"]
    assert hallurun.run(*start, "--server", "mock").returncode == 0
    assert hallurun.run("merge", str(run)).returncode == 0
    assert sorted(ids_of(run / "results.jsonl")) == sorted(ids)
    for name in ("results.jsonl", "failures.jsonl", "generation.jsonl", "manifest.json"):
        (run / name).unlink()

    # A shard of another dataset, moved in.
    elsewhere = tmp_path / "elsewhere"
    assert hallurun.run(*shard_args(other, elsewhere, "--shard", "1/2")).returncode == 0
    mine = tmp_path / "mine"
    shutil.move(run / "shard-1-of-2", mine)
    shutil.move(elsewhere / "shard-1-of-2", run / "shard-1-of-2")
    foreign = merge_says()
    assert f"{run / 'shard-1-of-2'}: its dataset (sha256" in foreign and "belongs to another run" in foreign
    shutil.rmtree(run / "shard-1-of-2")
    shutil.move(mine, run / "shard-1-of-2")

    # A shard of another N: a start in this folder is refused; one moved in, merge refuses.
    wrong_n = hallurun.run(*shard_args(data, run, "--shard", "2/3"))
    assert wrong_n.returncode == 2 and wrong_n.stderr.strip() == (f"error: --run-dir {run}: it holds shards of 2 "
                                                                  "(shard-I-of-2), not of 3; give --shard I/2, or "
                                                                  "another --run-dir")
    assert hallurun.run(*shard_args(data, elsewhere, "--shard", "2/3")).returncode == 0
    shutil.move(elsewhere / "shard-2-of-3", run / "shard-2-of-3")
    assert "a shard of 3, but the others are shards of 2" in merge_says()
    shutil.rmtree(run / "shard-2-of-3")

    # An unfinished shard: one stopped by SIGINT mid-run.
    slow_data = tmp_path / "slow.jsonl"
    write_dataset(slow_data, 200)
    slow_run = tmp_path / "SLOW"
    assert hallurun.run(*shard_args(slow_data, slow_run, "--shard", "0/2")).returncode == 0
    second = hallurun.start(*shard_args(slow_data, slow_run, "--shard", "1/2", "--concurrency", "1", "--",
                                        "--latency", "0.05"))
    wait_until(lambda: len(read_jsonl(slow_run / "shard-1-of-2" / "results.jsonl")) >= 3, 60, "the shard's start")
    second.send_signal(signal.SIGINT)
    assert second.wait(60) == 130
    run = slow_run
    unfinished = merge_says()
    assert unfinished.startswith(f"error: {run / 'shard-1-of-2'}: ") and unfinished.endswith(
        f"items not settled; finish it with: hallurun resume {run / 'shard-1-of-2'}")


def test_merge_refuses_an_item_answered_in_the_wrong_shard_or_twice(hallurun: Hallurun, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_dataset(data, 12)
    run = tmp_path / "RUN"
    for i in range(2):
        assert hallurun.run(*shard_args(data, run, "--shard", f"{i}/2")).returncode == 0
    first = (run / "shard-0-of-2" / "results.jsonl").read_bytes().splitlines(keepends=True)[0]
    other = run / "shard-1-of-2" / "results.jsonl"
    kept = other.read_bytes()
    other.write_bytes(kept + first)  # a line copied from shard 0: an answer to an item that is not shard 1's
    proc = hallurun.run("merge", str(run))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert f"{other}:7: item " in proc.stderr and "belongs to shard 0, not to this one" in proc.stderr
    twice = kept.splitlines(keepends=True)[2]
    other.write_bytes(kept + twice)
    proc = hallurun.run("merge", str(run))
    assert proc.returncode == 2 and f"{other}:7: item " in proc.stderr and "settled twice" in proc.stderr
    other.write_bytes(kept)
    assert hallurun.run("merge", str(run)).returncode == 0


def test_a_merged_builtin_task_is_evaluated_and_an_unmerged_one_says_merge_first(hallurun: Hallurun,
                                                                                  tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    for i in range(2):
        proc = hallurun.run("inference", "--task", "precisewikiqa", "--limit", "10", "--model", "m", "--server",
                            "mock", "--run-dir", str(run), "--shard", f"{i}/2")
        assert proc.returncode == 0, proc.stderr
    early = hallurun.run("eval", str(run))
    assert early.returncode == 2 and early.stderr.splitlines() == [
        f"error: {run} holds the shards of a sharded run (shard-0-of-2, shard-1-of-2), not merged yet: "
        f"`hallurun merge {run}` joins them; a shard continues with `hallurun resume {run}/shard-I-of-N`"]
    assert hallurun.run("resume", str(run)).stderr == early.stderr
    assert hallurun.run("merge", str(run)).returncode == 0
    done = hallurun.run("eval", str(run))
    assert done.returncode == 0, done.stderr
    results = orjson.loads((run / "eval_results.json").read_bytes())
    assert results["task"] == "precisewikiqa" and results["counts"]["items"] == results["counts"]["scored"] == 10
    again = hallurun.run("resume", str(run))
    assert again.returncode == 2 and "is the merge of 2 shards, not a run to continue" in again.stderr


def test_a_shard_needs_a_shared_run_dir_and_auto_needs_a_scheduler(hallurun: Hallurun, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_dataset(data, 3)
    no_dir = hallurun.run("inference", "--task", str(data), "--model", "m", "--server", "mock", "--shard", "0/2")
    assert no_dir.returncode == 2 and no_dir.stderr.splitlines() == [
        "error: --shard needs --run-dir: the folder every shard writes into, on storage they all share"]
    no_scheduler = hallurun.run(*shard_args(data, tmp_path / "RUN", "--shard", "auto"))
    assert no_scheduler.returncode == 2 and len(no_scheduler.stderr.splitlines()) == 1
    assert "no scheduler's index in the environment" in no_scheduler.stderr
    assert not (tmp_path / "RUN").exists()


def test_the_readme_lists_every_exit_code_hallurun_sets() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 1)[0]
    listed = {int(row.split("|")[1]) for row in table.splitlines() if row.startswith("| ") and row[2].isdigit()}
    assert listed == {c.code for c in EXIT_TABLE if c.ours}


def test_a_shared_folder_holds_shards_only_and_a_busy_shard_makes_merge_wait(hallurun: Hallurun,
                                                                              tmp_path: Path) -> None:
    from hallurun.store.lock import RunLock

    data = tmp_path / "data.jsonl"
    write_dataset(data, 6)
    run = tmp_path / "RUN"
    for i in range(2):
        assert hallurun.run(*shard_args(data, run, "--shard", f"{i}/2")).returncode == 0
    # A run without --shard in the shared folder would be overwritten by the merge: refused, before and after.
    unsharded = hallurun.run(*shard_args(data, run))
    assert unsharded.returncode == 2 and unsharded.stderr.splitlines() == [
        f"error: --run-dir {run}: it holds the shards of a sharded run; an unsharded run needs a folder of its own"]
    # A shard held by a live hallurun (here: its lock, taken by the test): try again later, exit 75.
    held = RunLock(run / "shard-1-of-2")
    held.acquire()
    try:
        busy = hallurun.run("merge", str(run))
        assert busy.returncode == 75 and f"{run / 'shard-1-of-2'} is in use by" in busy.stderr
    finally:
        held.release()
    assert hallurun.run("merge", str(run)).returncode == 0
    after = hallurun.run(*shard_args(data, run))
    assert after.returncode == 2 and "it holds a merged sharded run" in after.stderr
    # A shard whose manifest is not an object: status names it, with no traceback.
    (run / "shard-1-of-2" / "manifest.json").write_bytes(b"[]")
    (run / "manifest.json").unlink()
    status = hallurun.run("status", str(run))
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert f"shard 1/2: no readable manifest ({run / 'shard-1-of-2'})" in status.stdout
    refused = hallurun.run("merge", str(run))
    assert refused.returncode == 2 and "not a manifest (a JSON object)" in refused.stderr
