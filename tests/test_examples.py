"""The scheduler examples (examples/slurm, examples/kubernetes, examples/skypilot) and docs/scaling.md's exit-code
table, against hallurun.errors.EXIT_TABLE.

Static checks read the codes each example names (literal numbers in the files) and the fields a scheduler acts
on. The logic is run, not read: shard.sbatch, submit.sh and merge.sbatch under bash, the Kubernetes command
under sh and the SkyPilot job's `run` under bash, with stubs for hallurun, scontrol and sbatch on PATH, for every
code in the table (and one it does not have), and with the signals each scheduler sends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hallurun.errors import EXIT_FAILED_ITEMS, EXIT_OK, EXIT_TABLE, final_codes, retry_codes

REPO = Path(__file__).resolve().parent.parent
SLURM = REPO / "examples" / "slurm"
K8S = REPO / "examples" / "kubernetes"
SKY = REPO / "examples" / "skypilot"
SCALING = REPO / "docs" / "scaling.md"

TABLE = {c.code: c for c in EXIT_TABLE}
RETRY = set(retry_codes())
RETRY_OURS = {c.code for c in EXIT_TABLE if c.retry and c.ours}
FINISHED = {EXIT_OK, EXIT_FAILED_ITEMS}  # a finished shard: merge takes it; never retried
FINAL_FAILURES = set(final_codes()) - FINISHED
Start = Callable[[list[str], dict[str, str]], tuple[subprocess.Popen[str], int]]
UNKNOWN = 42  # a code hallurun never sets: nothing may retry it
ALL_CODES = sorted([*TABLE, UNKNOWN])

HALLURUN_STUB = """#!/bin/sh
# Records its arguments; exits with STUB_EXIT_<subcommand>, else STUB_EXIT; `wait` waits for SIGTERM, then 130.
printf '%s\\n' "$*" >> "$STUB_DIR/hallurun.args"
echo $$ > "$STUB_DIR/hallurun.pid"
if [ -n "${STUB_SHARD_DIR:-}" ]; then
  [ -f "$STUB_SHARD_DIR/results.jsonl" ] && echo restored >> "$STUB_DIR/hallurun.seen"
  mkdir -p "$STUB_SHARD_DIR" && echo '{}' >> "$STUB_SHARD_DIR/results.jsonl"
fi
eval "code=\\${STUB_EXIT_$1:-\\${STUB_EXIT:-0}}"
if [ "$code" = wait ]; then
  terms=0
  trap 'terms=$((terms + 1)); echo TERM >> "$STUB_DIR/hallurun.signals"' TERM
  : > "$STUB_DIR/hallurun.ready"
  while [ "$terms" -eq 0 ]; do sleep 0.02; done
  sleep 0.3  # long enough to record a second SIGTERM, had one been sent
  exit 130
fi
exit "$code"
"""

RECORDER_STUB = """#!/bin/sh
printf '%s\\n' "$*" >> "$STUB_DIR/{name}.args"
{extra}
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A folder of stub commands (hallurun, scontrol, sbatch); returns it, the place they log to as well."""
    bin_dir = tmp_path / "stubs"
    bin_dir.mkdir()
    scripts = {
        "hallurun": HALLURUN_STUB,
        "scontrol": RECORDER_STUB.format(name="scontrol", extra='exit "${SCONTROL_EXIT:-0}"'),
        # sbatch --parsable prints "jobid;cluster": the first call gets 1001 (with a cluster), later ones 1002...
        "sbatch": RECORDER_STUB.format(name="sbatch", extra=(
            'n=$(wc -l < "$STUB_DIR/sbatch.args")\n'
            'printf "RUN=%s TASK=%s MODEL=%s\\n" "$RUN" "$TASK" "$MODEL" >> "$STUB_DIR/sbatch.env"\n'
            'if [ "$n" -eq 1 ]; then echo "1001;cluster0"; else echo $((1000 + n)); fi')),
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir


def stub_env(stubs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HALLURUN_", "SKYPILOT_", "STUB_"))}
    env.pop("VENV", None)
    env.update(PATH=f"{stubs}{os.pathsep}{env['PATH']}", STUB_DIR=str(stubs), **extra)
    return env


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def shell_codes(text: str, name: str) -> set[int]:
    """The numbers of the one `NAME="..."` assignment in a shell script (a list of exit codes)."""
    found = re.findall(rf'^\s*{name}="([0-9 ]+)"', text, re.MULTILINE)
    assert len(found) == 1, f"{name}=\"...\" should be assigned exactly once, found {found}"
    return {int(c) for c in found[0].split()}


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def load_one(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def expected_exit(code: int) -> int:
    """What every example's wrapper exits with: 0 for a finished shard (1 included), else hallurun's code."""
    return 0 if code in FINISHED else code


# --- Slurm ---------------------------------------------------------------------------------------------------

SLURM_MAX_RESTARTS = 2
SLURM_TASK = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0",
              "SLURM_ARRAY_TASK_STEP": "1", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_JOB_ID": "4245"}


def slurm_env(stubs: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return stub_env(stubs, **SLURM_TASK, RUN=str(tmp_path / "run"), TASK="precisewikiqa", MODEL="m", SHARDS="8",
                    MAX_RESTARTS=str(SLURM_MAX_RESTARTS), **extra)


def run_shard(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SLURM / "shard.sbatch")], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("script", ["shard.sbatch", "merge.sbatch", "submit.sh"])
def test_slurm_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_slurm_shard_codes_are_the_table() -> None:
    text = (SLURM / "shard.sbatch").read_text()
    retry, finished = shell_codes(text, "RETRY_CODES"), shell_codes(text, "FINISHED_CODES")
    assert retry | finished <= set(TABLE)
    assert retry == RETRY
    assert finished == FINISHED


def test_slurm_shard_directives() -> None:
    directives = re.findall(r"^#SBATCH\s+(\S+)", (SLURM / "shard.sbatch").read_text(), re.MULTILINE)
    assert "--requeue" in directives  # without it Slurm refuses `scontrol requeue` (ESLURM_DISABLED)
    assert "--open-mode=append" in directives  # a requeued task must not truncate the log of the last attempt
    signals = [d for d in directives if d.startswith("--signal=")]
    # B: signals the batch shell only (which forwards it); without B: only srun steps would get it.
    assert len(signals) == 1 and re.fullmatch(r"--signal=B:USR1@\d+", signals[0]), signals


@pytest.mark.parametrize("code", ALL_CODES)
@pytest.mark.parametrize("restarts", [0, SLURM_MAX_RESTARTS - 1, SLURM_MAX_RESTARTS])
def test_slurm_shard_requeues_exactly_the_retry_codes_under_the_cap(stubs: Path, tmp_path: Path, code: int,
                                                                    restarts: int) -> None:
    result = run_shard(slurm_env(stubs, tmp_path, STUB_EXIT=str(code), SLURM_RESTART_COUNT=str(restarts)))
    assert result.returncode == expected_exit(code), result.stdout + result.stderr
    requeues = lines(stubs / "scontrol.args")
    if code in RETRY and restarts < SLURM_MAX_RESTARTS:
        assert requeues == ["requeue 4242_3"], result.stdout + result.stderr
    else:
        assert requeues == [], result.stdout + result.stderr
    (call,) = lines(stubs / "hallurun.args")
    run = tmp_path / "run"
    assert call == f"inference --task precisewikiqa --model m --run-dir {run} --shard auto --shards 8 --replicas auto"


def test_slurm_shard_outside_an_array_requeues_the_job_itself(stubs: Path, tmp_path: Path) -> None:
    env = slurm_env(stubs, tmp_path, STUB_EXIT="3", SHARD="3/8")
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP",
                "SLURM_ARRAY_TASK_COUNT"):
        del env[key]
    result = run_shard(env)
    assert result.returncode == 3
    assert lines(stubs / "scontrol.args") == ["requeue 4245"]
    assert "--shard 3/8" in lines(stubs / "hallurun.args")[0]


def test_slurm_shard_requeue_refused_still_ends_with_hallurun_code(stubs: Path, tmp_path: Path) -> None:
    result = run_shard(slurm_env(stubs, tmp_path, STUB_EXIT="75", SCONTROL_EXIT="1"))
    assert result.returncode == 75
    assert "could not requeue" in result.stderr


@pytest.fixture
def start_waiting(stubs: Path) -> Iterator[Start]:
    """Start a wrapper whose stub hallurun waits for SIGTERM; returns the wrapper and the stub's pid. Whatever a
    failing test leaves running is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(command, env={**env, "STUB_EXIT": "wait"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        wait_for(stubs / "hallurun.ready")
        return proc, int((stubs / "hallurun.pid").read_text())

    yield start
    running = [p.pid for p in started if p.poll() is None]
    stub_pid = stubs / "hallurun.pid"
    if running and stub_pid.exists():
        pid = int(stub_pid.read_text())
        with contextlib.suppress(OSError):  # the stub's own pid, if it is still the stub
            if str(stubs / "hallurun").encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                running.append(pid)
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in started:
        proc.communicate(timeout=10)


def test_slurm_time_limit_warning_stops_hallurun_once_and_requeues(stubs: Path, tmp_path: Path,
                                                                   start_waiting: Start) -> None:
    proc, _ = start_waiting(["bash", str(SLURM / "shard.sbatch")], slurm_env(stubs, tmp_path))
    os.kill(proc.pid, signal.SIGUSR1)  # --signal=B:USR1@...: Slurm signals the batch shell alone
    out, _ = proc.communicate(timeout=10)
    assert lines(stubs / "hallurun.signals") == ["TERM"], out  # forwarded as exactly one SIGTERM
    assert proc.returncode == 130, out
    assert lines(stubs / "scontrol.args") == ["requeue 4242_3"], out


def test_slurm_ending_the_job_is_not_forwarded_nor_requeued(stubs: Path, tmp_path: Path,
                                                             start_waiting: Start) -> None:
    proc, child = start_waiting(["bash", str(SLURM / "shard.sbatch")], slurm_env(stubs, tmp_path))
    # scancel, pre-emption, the time limit itself: Slurm sends SIGTERM to every process of the job. The shell's
    # first: a SIGTERM it forwarded would reach the stub before the stub's own (two signals pending at once merge).
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(child, signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert lines(stubs / "hallurun.signals") == ["TERM"], out  # its own only: the shell sent no second one
    assert proc.returncode == 130, out
    assert lines(stubs / "scontrol.args") == [], out  # Slurm requeues a pre-empted job itself


def submit_values() -> dict[str, str]:
    text = (SLURM / "submit.sh").read_text()
    return {name: re.search(rf"^{name}=(\S+)", text, re.MULTILINE).group(1)
            for name in ("RUN", "TASK", "MODEL", "SHARDS")}


def test_slurm_submit_array_then_merge_after_any(stubs: Path, tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SLURM / "submit.sh")], cwd=tmp_path, env=stub_env(stubs),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    values = submit_values()
    shards = int(values["SHARDS"])
    array, merge = lines(stubs / "sbatch.args")
    assert array.split() == ["--parsable", f"--array=0-{shards - 1}", "--export=ALL", str(SLURM / "shard.sbatch")]
    # afterany on the array's id ("1001;cluster0" from --parsable, cluster cut off): see submit.sh for why.
    assert merge.split() == ["--parsable", "--dependency=afterany:1001", "--export=ALL", str(SLURM / "merge.sbatch")]
    run = values["RUN"].replace("$PWD", str(tmp_path))
    assert lines(stubs / "sbatch.env") == [f"RUN={run} TASK={values['TASK']} MODEL={values['MODEL']}"] * 2


@pytest.mark.parametrize(("merge_code", "eval_called"), [(0, True), (2, False)])
def test_slurm_merge_then_eval(stubs: Path, tmp_path: Path, merge_code: int, eval_called: bool) -> None:
    env = stub_env(stubs, RUN=str(tmp_path / "run"), STUB_EXIT_merge=str(merge_code))
    result = subprocess.run(["bash", str(SLURM / "merge.sbatch")], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == merge_code
    calls = [f"merge {tmp_path / 'run'}"] + ([f"eval {tmp_path / 'run'}"] if eval_called else [])
    assert lines(stubs / "hallurun.args") == calls


# --- Kubernetes ----------------------------------------------------------------------------------------------

def shards_job() -> dict[str, Any]:
    return load_one(K8S / "shards-job.yaml")


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def wrapper(job: dict[str, Any]) -> str:
    c = container(job)
    assert c["command"] == ["/bin/sh", "-c"]
    (script,) = c["args"]
    return script


def rules(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["spec"]["podFailurePolicy"]["rules"]


def exit_code_rules(job: dict[str, Any], action: str) -> list[int]:
    found = [r["onExitCodes"] for r in rules(job) if r["action"] == action and "onExitCodes" in r]
    assert len(found) == 1, f"expected one {action} rule on exit codes, found {found}"
    (req,) = found
    assert req["operator"] == "In"
    assert req["containerName"] == container(job)["name"]
    values = req["values"]
    assert values == sorted(set(values)), "Kubernetes wants the values ordered and without duplicates"
    assert 0 not in values, "Kubernetes refuses 0 with the In operator"
    return values


def test_kubernetes_shards_job_is_an_indexed_job_of_n() -> None:
    job = shards_job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy and per-index limits
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec.get("podReplacementPolicy", "Failed") == "Failed"
    (shards,) = re.findall(r"--shards (\d+)", wrapper(job))
    assert spec["completions"] == spec["parallelism"] == int(shards)
    assert "--shard auto" in wrapper(job)
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_kubernetes_pod_failure_policy_is_the_table() -> None:
    job = shards_job()
    every = [v for r in rules(job) if "onExitCodes" in r for v in r["onExitCodes"]["values"]]
    assert set(every) <= set(TABLE)
    assert set(exit_code_rules(job, "FailIndex")) == FINAL_FAILURES
    assert set(exit_code_rules(job, "Count")) in (RETRY, RETRY_OURS)
    # First, so that a pre-empted pod (which exits 130 or 137) is ignored rather than counted.
    first = rules(job)[0]
    assert first["action"] == "Ignore"
    assert [c["type"] for c in first["onPodConditions"]] == ["DisruptionTarget"]
    assert all(c.get("status", "True") == "True" for c in first["onPodConditions"])


def test_kubernetes_volume_and_merge_job_agree() -> None:
    pvc = load_one(K8S / "pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    job, merge = shards_job(), load_one(K8S / "merge-job.yaml")
    for j in (job, merge):
        (volume,) = [v for v in j["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert j["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (run,) = re.findall(r"--run-dir (\S+)", wrapper(job))
    script = wrapper(merge)
    assert script.index(f"hallurun merge {run}") < script.index(f"hallurun eval {run}")
    fail_job = exit_code_rules(merge, "FailJob")
    assert set(fail_job) <= set(TABLE)
    assert set(fail_job) == FINAL_FAILURES


@pytest.mark.parametrize("code", ALL_CODES)
def test_kubernetes_wrapper_reports_one_as_success(stubs: Path, code: int) -> None:
    result = subprocess.run(["sh", "-c", wrapper(shards_job())], env=stub_env(stubs, STUB_EXIT=str(code)),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == expected_exit(code), result.stdout + result.stderr
    (call,) = lines(stubs / "hallurun.args")
    assert call.startswith("inference ") and "--shard auto --shards " in call


def test_kubernetes_wrapper_forwards_sigterm_once(stubs: Path, start_waiting: Start) -> None:
    # On a pod's deletion Kubernetes signals the container's PID 1, the shell, and nothing else.
    proc, _ = start_waiting(["sh", "-c", wrapper(shards_job())], stub_env(stubs))
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert lines(stubs / "hallurun.signals") == ["TERM"], out
    assert proc.returncode == 130, out  # reaches podFailurePolicy as it is: Ignore if disrupted, else Count


# --- SkyPilot -------------------------------------------------------------------------------------------------

def sky(name: str) -> dict[str, Any]:
    return load_one(SKY / name)


def test_skypilot_pool_and_jobs_fit_together() -> None:
    pool, job, merge = sky("pool.yaml"), sky("job.yaml"), sky("merge.yaml")
    assert pool["pool"]["workers"] >= 1
    assert "run" not in pool  # SkyPilot refuses a run section in a pool
    for j in (job, merge):
        assert not {"setup", "file_mounts", "workdir"} & set(j), "a pool job may not have these"
        assert j["resources"]["accelerators"] == pool["resources"]["accelerators"]
        mount = pool["file_mounts"][j["envs"]["BUCKET_DIR"]]
        assert mount["mode"] == "MOUNT"
    assert job["envs"]["RUN"] == merge["envs"]["RUN"]


def test_skypilot_job_retries_are_the_table() -> None:
    job = sky("job.yaml")
    run = job["run"]
    assert "--shard auto" in run
    recovery = job["resources"]["job_recovery"]
    recover = recovery["recover_on_exit_codes"]
    assert len(recover) == len(set(recover))
    assert set(recover) <= set(TABLE)
    assert set(recover) == RETRY
    assert shell_codes(run, "RETRY_CODES") == set(recover)
    # Anything else, hallurun's 2 and 70 included, must end the job without a restart.
    assert recovery["max_restarts_on_errors"] == 0
    (gave_up,) = (int(c) for c in re.findall(r"^\s*GAVE_UP=(\d+)", run, re.MULTILINE))
    assert gave_up != 0 and gave_up not in TABLE and gave_up not in recover


def run_sky_job(stubs: Path, root: Path, code: int | str, max_restarts: int = 5) -> subprocess.CompletedProcess[str]:
    job = sky("job.yaml")
    home, bucket = root / "home", root / "bucket"
    home.mkdir(exist_ok=True)
    bucket.mkdir(exist_ok=True)
    run_name = job["envs"]["RUN"]
    env = stub_env(stubs, **{k: str(v) for k, v in job["envs"].items()})
    env.update(HOME=str(home), BUCKET_DIR=str(bucket), MAX_RESTARTS=str(max_restarts), SKYPILOT_JOB_RANK="1",
               SKYPILOT_NUM_JOBS="2", STUB_EXIT=str(code),
               STUB_SHARD_DIR=str(home / "hallurun-runs" / run_name / "shard-1-of-2"))
    return subprocess.run(["bash", "-c", job["run"]], env=env, capture_output=True, text=True, timeout=30)


def stored(root: Path) -> Path:
    return root / "bucket" / sky("job.yaml")["envs"]["RUN"] / "shard-1-of-2.tar"


@pytest.mark.parametrize("code", ALL_CODES)
def test_skypilot_job_ends_and_stores_by_code(stubs: Path, tmp_path: Path, code: int) -> None:
    result = run_sky_job(stubs, tmp_path, code)
    assert result.returncode == expected_exit(code), result.stdout + result.stderr
    # Stored: a finished shard, and a stopped one (the next attempt resumes it), but not one another process holds.
    assert stored(tmp_path).exists() == (code in FINISHED or (code in RETRY and code != 75))
    if stored(tmp_path).exists():
        with tarfile.open(stored(tmp_path)) as tar:
            assert "shard-1-of-2/results.jsonl" in tar.getnames()
    assert "--shard auto" in lines(stubs / "hallurun.args")[0]


def test_skypilot_job_resumes_from_the_bucket_and_gives_up_after_max_restarts(stubs: Path, tmp_path: Path) -> None:
    first = run_sky_job(stubs, tmp_path, 130, max_restarts=1)
    assert first.returncode == 130, first.stdout + first.stderr
    # The next attempt may land on another worker: an empty local disk, the bucket's tar.
    shutil.rmtree(tmp_path / "home" / "hallurun-runs")
    second = run_sky_job(stubs, tmp_path, 3, max_restarts=1)
    assert lines(stubs / "hallurun.seen") == ["restored"]
    gave_up = int(re.search(r"GAVE_UP=(\d+)", sky("job.yaml")["run"]).group(1))
    assert second.returncode == gave_up, second.stdout + second.stderr
    third = run_sky_job(stubs, tmp_path, 0, max_restarts=1)  # a finished shard is stored and ends well regardless
    assert third.returncode == 0


def test_skypilot_merge_unpacks_every_shard_then_merges_and_evaluates(stubs: Path, tmp_path: Path) -> None:
    merge = sky("merge.yaml")
    shards, run_name = int(merge["envs"]["SHARDS"]), merge["envs"]["RUN"]
    remote = tmp_path / "bucket" / run_name
    remote.mkdir(parents=True)
    for i in range(shards):
        folder = tmp_path / "made" / f"shard-{i}-of-{shards}"
        folder.mkdir(parents=True)
        (folder / "results.jsonl").write_text("{}\n")
        with tarfile.open(remote / f"{folder.name}.tar", "w") as tar:
            tar.add(folder, arcname=folder.name)
    env = stub_env(stubs, **{k: str(v) for k, v in merge["envs"].items()})
    env.update(HOME=str(tmp_path / "home"), BUCKET_DIR=str(tmp_path / "bucket"))
    result = subprocess.run(["bash", "-c", merge["run"]], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    local = tmp_path / "home" / "hallurun-merge" / run_name
    assert lines(stubs / "hallurun.args") == [f"merge {local}", f"eval {local}"]
    assert sorted(p.name for p in local.iterdir()) == [f"shard-{i}-of-{shards}" for i in range(shards)]


# --- docs/scaling.md ----------------------------------------------------------------------------------------

def scaling_table() -> list[list[str]]:
    text = SCALING.read_text()
    section = text.split("\n## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    assert rows, "no table rows under '## Exit codes'"
    return rows


def test_scaling_doc_table_is_exit_table() -> None:
    rows = scaling_table()
    assert [int(r[0]) for r in rows] == [c.code for c in EXIT_TABLE]
    for row in rows:
        entry = TABLE[int(row[0])]
        assert row[1] == f"`{entry.name}`"
        assert row[2] == ("yes" if entry.retry else "no"), row
