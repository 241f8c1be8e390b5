"""GPU discovery (CUDA_VISIBLE_DEVICES as CUDA reads it, or the driver), the replica plan, and doctor's section."""

from __future__ import annotations

import pytest
from rich.console import Console

from hallurun.config import ConfigError, ServerSpec
from hallurun.server import doctor, gpus
from hallurun.server.gpus import Placement, parse_replicas, plan, visible_gpus

UUID_A = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
UUID_B = "GPU-1f2e3d4c-0000-1111-2222-333344445555"


def driver(count: int | None):
    """A probe standing in for `nvidia-smi -L`: `count` GPUs, or None for no driver."""
    return lambda: count


def unreachable() -> int | None:
    raise AssertionError("the driver must not be asked")


def cvd(value: str) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": value}


# visible_gpus: CUDA_VISIBLE_DEVICES set


@pytest.mark.parametrize(("value", "expected"), [
    ("0", ("0",)),
    ("0,1,2,3", ("0", "1", "2", "3")),
    ("3,1", ("3", "1")),  # CUDA enumerates in the order given
    (" 2 , 0 ", ("2", "0")),  # whitespace stripped
    ("01,+2", ("1", "2")),  # read like strtoul
    ("1gpu,2ampere", ("1", "2")),  # strtoul stops at the first non-digit
])
def test_set_indices(value: str, expected: tuple[str, ...]) -> None:
    assert visible_gpus(cvd(value), driver(8)) == expected


@pytest.mark.parametrize("value", ["", "   ", "-1", "-1,0,1", "gpu0", ","])
def test_set_hiding_everything(value: str) -> None:
    # Nothing usable is named, so the driver is not asked either.
    assert visible_gpus(cvd(value), unreachable) == ()


@pytest.mark.parametrize(("value", "expected"), [
    ("0,2,-1,1", ("0", "2")),  # the CUDA Programming Guide's own example
    ("0,-1", ("0",)),
    ("1,,2", ("1",)),  # an empty entry is invalid
    ("0,x,1", ("0",)),
    ("0," + UUID_A, ("0",)),  # a list cannot mix indices and UUIDs
])
def test_set_invalid_entry_hides_itself_and_all_after(value: str, expected: tuple[str, ...]) -> None:
    assert visible_gpus(cvd(value), driver(8)) == expected


def test_set_index_past_the_driver_count_is_invalid() -> None:
    assert visible_gpus(cvd("1,5,0"), driver(2)) == ("1",)
    assert visible_gpus(cvd("2"), driver(2)) == ()


def test_set_repeated_entry_hides_every_gpu() -> None:
    assert visible_gpus(cvd("0,1,0"), driver(8)) == ()
    assert visible_gpus(cvd(f"{UUID_A},{UUID_A}"), driver(8)) == ()


def test_set_uuids() -> None:
    assert visible_gpus(cvd(f"{UUID_A}, {UUID_B}"), driver(2)) == (UUID_A, UUID_B)
    assert visible_gpus(cvd("GPU-8932f937"), driver(1)) == ("GPU-8932f937",)  # a unique prefix is enough for CUDA
    assert visible_gpus(cvd(f"{UUID_A},3"), driver(8)) == (UUID_A,)
    mig = "MIG-GPU-8932f937-d72c-4106-c12f-20bd9faed9f6/1/2"
    assert visible_gpus(cvd(mig), driver(1)) == (mig,)
    assert visible_gpus(cvd(f"{mig},{UUID_A}"), driver(1)) == (mig,)  # a UUID list keeps its first prefix


def test_set_without_a_driver_is_no_gpu() -> None:
    seen = gpus.discover(cvd("0,1"), driver(None))
    assert seen.gpus == ()
    assert seen.source == "CUDA_VISIBLE_DEVICES"
    assert "no NVIDIA driver" in seen.note


# visible_gpus: CUDA_VISIBLE_DEVICES unset


def test_unset_asks_the_driver() -> None:
    assert visible_gpus({}, driver(4)) == ("0", "1", "2", "3")
    assert gpus.discover({}, driver(4)).source == "driver"
    assert visible_gpus({"OTHER": "1"}, driver(1)) == ("0",)


def test_unset_without_a_driver() -> None:
    assert visible_gpus({}, driver(None)) == ()
    assert visible_gpus({}, driver(0)) == ()
    assert gpus.discover({}, driver(None)).source == "none"


def test_default_probe_reads_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
               "  MIG 3g.40gb     Device  0: (UUID: MIG-bbbb)\n"
               "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-cccc)\n")

    class Done:
        returncode = 0
        stdout = listing

    monkeypatch.setattr(gpus.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(gpus.subprocess, "run", lambda *args, **kwargs: Done())
    assert gpus.driver_gpu_count() == 2
    assert visible_gpus({}) == ("0", "1")
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    assert gpus.driver_gpu_count() is None
    assert visible_gpus({}) == ()


# Placement


def test_placement() -> None:
    assert Placement(0, ("2", "3")).cuda_visible_devices == "2,3"
    assert Placement(0, ("2", "3")).tensor_parallel_size == 2
    assert Placement(1).gpus == ()
    assert Placement(1).cuda_visible_devices is None
    assert Placement(1).tensor_parallel_size == 1


# plan


EIGHT = tuple(str(i) for i in range(8))


def test_plan_auto_without_gpus_is_one_cpu_replica() -> None:
    assert plan("auto", 1, ()) == (Placement(0, ()),)
    assert plan("auto", 4, ()) == (Placement(0, ()),)


def test_plan_auto_with_gpus() -> None:
    assert plan("auto", 1, ("0", "1")) == (Placement(0, ("0",)), Placement(1, ("1",)))
    assert plan("auto", 2, EIGHT) == tuple(Placement(i, (str(2 * i), str(2 * i + 1))) for i in range(4))
    assert plan("auto", 3, EIGHT) == (Placement(0, ("0", "1", "2")), Placement(1, ("3", "4", "5")))  # 6, 7 unused
    assert plan("auto", 1, (UUID_B, UUID_A)) == (Placement(0, (UUID_B,)), Placement(1, (UUID_A,)))


def test_plan_auto_too_few_gpus() -> None:
    with pytest.raises(ConfigError) as caught:
        plan("auto", 4, ("0", "1", "2"))
    assert str(caught.value) == "--replicas auto: 3 visible GPU(s) cannot hold one replica of --gpus-per-replica 4"


def test_plan_explicit_with_gpus() -> None:
    assert plan(1, 1, EIGHT) == (Placement(0, ("0",)),)
    assert plan(2, 2, ("4", "5", "6", "7")) == (Placement(0, ("4", "5")), Placement(1, ("6", "7")))
    assert plan(2, 3, EIGHT) == (Placement(0, ("0", "1", "2")), Placement(1, ("3", "4", "5")))


def test_plan_explicit_does_not_fit() -> None:
    with pytest.raises(ConfigError) as caught:
        plan(3, 2, ("0", "1", "2", "3"))
    message = str(caught.value)
    assert message == "--replicas 3 with --gpus-per-replica 2 needs 6 GPU(s), but 4 are visible (0,1,2,3)"
    assert "\n" not in message


def test_plan_explicit_without_gpus_is_cpu_servers() -> None:
    assert plan(3, 1, ()) == (Placement(0), Placement(1), Placement(2))
    assert plan(2, 4, ()) == (Placement(0), Placement(1))


@pytest.mark.parametrize(("replicas", "per", "option"), [
    (0, 1, "--replicas must be at least 1, got 0"),
    (-2, 1, "--replicas must be at least 1, got -2"),
    (1, 0, "--gpus-per-replica must be at least 1, got 0"),
    ("auto", -1, "--gpus-per-replica must be at least 1, got -1"),
])
def test_plan_bad_numbers(replicas: int | str, per: int, option: str) -> None:
    for visible in ((), ("0", "1")):
        with pytest.raises(ConfigError) as caught:
            plan(replicas, per, visible)  # type: ignore[arg-type]
        assert str(caught.value) == option


# parse_replicas


@pytest.mark.parametrize(("text", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("1", 1), ("12", 12)])
def test_parse_replicas(text: str, expected: int | str) -> None:
    assert parse_replicas(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "two", "1.5", "auto2"])
def test_parse_replicas_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_replicas(text)
    assert str(caught.value).startswith("--replicas ")
    assert repr(text) in str(caught.value)


# doctor's section


def rendered(checks: list[doctor.Check]) -> list[str]:
    console = Console(record=True, width=200)
    for check in checks:
        doctor.show(check, console)
    return console.export_text().splitlines()


def test_doctor_gpus_from_the_variable_and_the_plan() -> None:
    lines = rendered(doctor.replica_checks(2, 2, cvd("4,5,6,7"), driver(8)))
    assert lines == [
        "ok   GPUs            4 from CUDA_VISIBLE_DEVICES='4,5,6,7': 4, 5, 6, 7",
        "ok   replica plan    2 replica(s) for --replicas 2 --gpus-per-replica 2",
        "ok   replica 0       CUDA_VISIBLE_DEVICES=4,5, tensor parallel size 2",
        "ok   replica 1       CUDA_VISIBLE_DEVICES=6,7, tensor parallel size 2",
    ]


def test_doctor_gpus_from_the_driver_auto() -> None:
    lines = rendered(doctor.replica_checks("auto", 2, {}, driver(5)))
    assert lines == [
        "ok   GPUs            5 from the driver (nvidia-smi -L): 0, 1, 2, 3, 4",
        "ok   replica plan    2 replica(s) for --replicas auto --gpus-per-replica 2; unused: 4",
        "ok   replica 0       CUDA_VISIBLE_DEVICES=0,1, tensor parallel size 2",
        "ok   replica 1       CUDA_VISIBLE_DEVICES=2,3, tensor parallel size 2",
    ]


def test_doctor_no_gpu() -> None:
    lines = rendered(doctor.replica_checks("auto", 1, {}, driver(None)))
    assert lines == [
        "ok   GPUs            none: no NVIDIA driver answers, so replicas are CPU servers",
        "ok   replica plan    1 replica(s) for --replicas auto --gpus-per-replica 1 (CPU servers: no GPU visible)",
        "ok   replica 0       no GPU (CPU server), tensor parallel size 1",
    ]


def test_doctor_warns_on_what_the_variable_hides() -> None:
    lines = rendered(doctor.replica_checks(1, 1, cvd("0,2,-1,1"), driver(4)))
    assert lines[0] == ("warn GPUs            2 from CUDA_VISIBLE_DEVICES='0,2,-1,1': 0, 2; "
                        "CUDA stops at '-1', hiding '-1,1'")
    assert lines[1] == "ok   replica plan    1 replica(s) for --replicas 1 --gpus-per-replica 1; unused: 2"
    assert lines[2] == "ok   replica 0       CUDA_VISIBLE_DEVICES=0, tensor parallel size 1"
    lines = rendered(doctor.replica_checks(1, 1, cvd("1,7,0"), driver(2)))
    assert lines[0] == ("warn GPUs            1 from CUDA_VISIBLE_DEVICES='1,7,0': 1; "
                        "CUDA stops at '7': the driver has 2 GPU(s), so '7,0' is hidden")


@pytest.mark.parametrize(("value", "probe", "detail"), [
    ("", unreachable, "CUDA_VISIBLE_DEVICES='' hides every GPU (CUDA stops at '')"),
    ("-1", unreachable, "CUDA_VISIBLE_DEVICES='-1' hides every GPU (CUDA stops at '-1')"),
    ("1,1", driver(2), "CUDA_VISIBLE_DEVICES='1,1' repeats '1', so CUDA hides every GPU"),
    ("0,1", driver(None), "CUDA_VISIBLE_DEVICES='0,1' is set but no NVIDIA driver answers"),
    ("2,0", driver(2), "CUDA_VISIBLE_DEVICES='2,0' hides every GPU (CUDA stops at '2': the driver has 2 GPU(s))"),
])
def test_doctor_warns_when_the_variable_leaves_no_gpu(value: str, probe, detail: str) -> None:
    lines = rendered(doctor.replica_checks(2, 1, cvd(value), probe))
    assert lines == [
        f"warn GPUs            none: {detail}, so replicas are CPU servers",
        "ok   replica plan    2 replica(s) for --replicas 2 --gpus-per-replica 1 (CPU servers: no GPU visible)",
        "ok   replica 0       no GPU (CPU server), tensor parallel size 1",
        "ok   replica 1       no GPU (CPU server), tensor parallel size 1",
    ]


def test_doctor_plan_that_does_not_fit_is_a_failed_check() -> None:
    checks = doctor.replica_checks(4, 1, cvd("0,1"), driver(2))
    assert [c.status for c in checks] == ["ok", "fail"]
    assert rendered(checks)[1] == ("fail replica plan    --replicas 4 with --gpus-per-replica 1 needs 4 GPU(s), "
                                   "but 2 are visible (0,1)")
    checks = doctor.replica_checks("auto", 2, {}, driver(1))
    assert checks[1] == doctor.Check(
        "fail", "replica plan", "--replicas auto: 1 visible GPU(s) cannot hold one replica of --gpus-per-replica 2")


def test_doctor_report_includes_the_section(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the disk check creates ./runs
    monkeypatch.setattr(doctor.launch, "has_nvidia_gpu", lambda: True)
    monkeypatch.setattr(doctor, "_gpu", lambda: doctor.Check("ok", "GPU", "GPU 0: stand-in"))
    config = doctor.config_for("tiny", ServerSpec(kind="mock"))  # mock: no vLLM import, no server command
    console = Console(record=True, width=200)
    assert doctor.report(config, console, 3, 1, environ=cvd("0,1"), probe=driver(2)) == 1
    text = console.export_text()
    assert "ok   GPUs            2 from CUDA_VISIBLE_DEVICES='0,1': 0, 1" in text
    assert "fail replica plan    --replicas 3 with --gpus-per-replica 1 needs 3 GPU(s)" in text
    assert "Traceback" not in text

    console = Console(record=True, width=200)
    assert doctor.report(config, console, environ=cvd("0,1"), probe=driver(2)) == 0  # defaults: one replica, one GPU
    assert "ok   replica 0       CUDA_VISIBLE_DEVICES=0, tensor parallel size 1" in console.export_text()
