"""Server launch commands and vLLM metrics parsing: plain functions, no server needed."""

from __future__ import annotations

from pathlib import Path

import orjson

from hallurun import config as cfg
from hallurun.server.launch import command as launch
from hallurun.wire.metrics import QUIET_INTERVAL, ServerMetrics, parse, poll_due

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 12.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 40.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:generation_tokens_total{engine="0",model_name="tiny"} 1000.0
vllm:generation_tokens_total{engine="1",model_name="tiny"} 500.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 7.0
"""


def _config(tmp_path: Path, model: str = "org/model", args: tuple[str, ...] = ()) -> cfg.RunConfig:
    return cfg.build(task="t", dataset=tmp_path / "d.jsonl", model=model, run_dir=tmp_path,
                     server=cfg.ServerSpec(kind="vllm", args=args, python="py"))


def test_vllm_on_cpu_gets_defaults_the_user_can_override(tmp_path: Path) -> None:
    spec = launch(_config(tmp_path), 8001, gpu=False, environ={})
    assert spec.cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert spec.cmd[spec.cmd.index("--host") + 1] == "127.0.0.1" and "--port" in spec.cmd
    assert spec.cmd[spec.cmd.index("--max-model-len") + 1] == "4096"
    assert spec.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60"}
    mine = launch(_config(tmp_path, args=("--max-model-len", "1024")), 8001, gpu=False,
                  environ={"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "5"})
    assert mine.cmd.count("--max-model-len") == 1 and mine.cmd[-2:] == ["--max-model-len", "1024"]
    assert mine.env == {}  # what the user set is inherited as it is


def test_vllm_on_gpu_gets_no_cpu_defaults(tmp_path: Path) -> None:
    spec = launch(_config(tmp_path), 8001, gpu=True, environ={})
    # Only the keep-alive, which outlasts the client's own 15 s so that idle connections close from our side.
    assert "--max-model-len" not in spec.cmd and spec.env == {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60"}


def test_a_local_model_with_a_short_context_keeps_it(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_bytes(orjson.dumps({"max_position_embeddings": 2048}))
    spec = launch(_config(tmp_path, model=str(model)), 8001, gpu=False, environ={})
    assert spec.cmd[spec.cmd.index("--max-model-len") + 1] == "2048"


def test_cpu_replicas_get_cores_of_their_own_and_gpu_replicas_their_tensor_parallel_size(tmp_path: Path) -> None:
    from hallurun.server.pool import cpu_shares

    assert cpu_shares(2, [0, 1]) == [(0,), (1,)]
    assert cpu_shares(2, [0, 1, 2, 3, 4]) == [(0, 1), (2, 3)]
    assert cpu_shares(3, [0, 1]) == [(0,), (1,), (0,)]  # fewer cores than replicas: in turn
    spec = launch(_config(tmp_path), 8001, gpu=False, environ={}, cpus=(2, 3))
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "2,3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in launch(_config(tmp_path), 8001, gpu=False,
                                                     environ={"VLLM_CPU_OMP_THREADS_BIND": "nobind"}, cpus=(2,)).env
    pool = cfg.build(task="t", dataset=tmp_path / "d.jsonl", model="org/model", run_dir=tmp_path,
                     server=cfg.ServerSpec(kind="vllm", python="py", replicas=2, gpus_per_replica=2))
    two_ranks = launch(pool, 8001, gpu=False, environ={}, cpus=(0, 1, 2, 3))
    assert two_ranks.env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"
    on_gpu = launch(pool, 8001, gpu=True, environ={})
    assert on_gpu.cmd[on_gpu.cmd.index("--tensor-parallel-size") + 1] == "2"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in on_gpu.env


def test_secrets_never_reach_the_command_line(tmp_path: Path) -> None:
    spec = launch(_config(tmp_path), 8001, gpu=False, environ={"HALLURUN_API_KEY": "sk-secret"})
    assert not any("sk-secret" in part for part in spec.cmd)


def test_metrics_are_summed_over_label_sets() -> None:
    values = parse(METRICS)
    assert values == {"vllm:num_requests_running": 12.0, "vllm:num_requests_waiting": 40.0,
                      "vllm:kv_cache_usage_perc": 0.25, "vllm:generation_tokens_total": 1500.0}


def test_a_flat_token_counter_is_measured() -> None:
    metrics = ServerMetrics()
    metrics.update(parse(METRICS), now=10.0)
    metrics.update(parse(METRICS.replace("1000.0", "1200.0")), now=12.0)
    assert metrics.tokens_per_s == 100.0
    metrics.update(parse(METRICS.replace("1000.0", "1200.0")), now=20.0)
    assert metrics.tokens_flat_for(25.0) == 13.0
    assert "running 12" in metrics.describe() and "kv 25%" in metrics.describe()


def test_metrics_are_read_seldom_while_the_server_streams_and_often_once_it_goes_quiet() -> None:
    # Each read stalls vLLM's API server for a moment: read every 10 s while bytes flow, every 2 s once quiet.
    assert poll_due(now=100.0, last_read=None, last_byte=99.9, interval=10.0)  # until one read succeeds
    assert not poll_due(now=105.0, last_read=100.0, last_byte=104.9, interval=10.0)
    assert poll_due(now=110.0, last_read=100.0, last_byte=109.9, interval=10.0)
    quiet_since = 101.0
    assert not poll_due(now=quiet_since + QUIET_INTERVAL - 0.1, last_read=100.0, last_byte=quiet_since,
                        interval=10.0)
    assert poll_due(now=quiet_since + QUIET_INTERVAL, last_read=100.0, last_byte=quiet_since, interval=10.0)
    assert not poll_due(now=104.0, last_read=103.0, last_byte=quiet_since, interval=10.0)
    assert poll_due(now=105.0, last_read=103.0, last_byte=quiet_since, interval=10.0)
