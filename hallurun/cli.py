"""Command-line interface: parses options and calls into the library. No logic lives here."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from hallurun import __version__
from hallurun.errors import EXIT_BUG

F = Callable[..., Any]


def option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option that can also be set as HALLURUN_<OPTION> in the environment."""
    long = next(d for d in decls if d.startswith("--"))
    kwargs.setdefault("envvar", "HALLURUN_" + long[2:].upper().replace("-", "_"))
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, **kwargs)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _operational_options(fn: F) -> F:
    """Options that may change between a run and its resumption."""
    decorators = [
        option("--concurrency", type=click.IntRange(min=1), help="Requests in flight at once. [default: 64]"),
        option("--stall-timeout", type=float,
               help="Seconds without a byte from the server, while requests are in flight, that mean a wedge. "
                    "[default: 30]"),
        option("--metrics-interval", type=float,
               help="Seconds between reads of the server's /metrics while it streams (every 2 s once it goes "
                    "quiet); 0 never reads it. Each read stalls vLLM's API server briefly. [default: 10]"),
        option("--request-timeout", type=float, help="Optional hard cap on one request, in seconds."),
        option("--max-attempts", type=click.IntRange(min=1), help="Attempts per item. [default: 4]"),
        option("--max-restarts", type=click.IntRange(min=0), help="Server restarts allowed per session. [default: 10]"),
        option("--restart-wait", type=float,
               help="Seconds a restart may take (else SERVER_RESTART_WAIT_TIME, else twice the first startup)."),
        option("--startup-timeout", type=float, help="Seconds the first server start may take. [default: 900]"),
        option("--port", type=int, help="Port for the launched server. [default: a free port]"),
        option("--server-python", type=click.Path(dir_okay=False),
               help="Python of the environment that has vLLM. [default: this one]"),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def _split_operational(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate server-level options (port, python, startup) from the run-level ones."""
    server = {"port": opts.pop("port"), "python": opts.pop("server_python"),
              "startup_timeout": opts.pop("startup_timeout")}
    return opts, server




class _Hallurun(click.Group):
    """The command group, with one ending for everything that escapes a command: click's own errors keep their
    codes, Ctrl-C outside a run is exit 130 (click's default says "Aborted!" with exit 1, which means "done, some
    items failed"), and an unexpected exception says it is a bug, with exit 70."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except Exception:
            click.echo(f"hallurun: internal error, a bug in hallurun {__version__} (please report it with the "
                       f"traceback below); nothing already written is lost", err=True)
            click.echo(traceback.format_exc(), err=True)
            sys.exit(EXIT_BUG)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.group(cls=_Hallurun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hallurun")
def main() -> None:
    """Run LLM prompt batches against a supervised inference server, exactly once."""
    if os.getpid() == 1:
        # As PID 1 (a container's entry point) the kernel drops a SIGTERM that has no handler: until a run
        # installs its own, SIGTERM must still stop hallurun, as it does anywhere else.
        signal.signal(signal.SIGTERM, _terminate)


@main.command(context_settings={"show_default": True})
@option("--task", required=True, help="A built-in task name (see `hallurun tasks`) or a JSONL file of prompts.")
@option("--dataset", type=click.Path(dir_okay=False, path_type=Path),
        help="Replace a built-in task's data with this file of the same format.")
@option("--limit", type=click.IntRange(min=0), help="Run only the first N items.")
@option("--model", required=True, help="Model name or path, as the server knows it.")
@option("--api", type=click.Choice(["chat", "completions"]), help="Chat (one user message) or raw completions.")
@option("--max-tokens", type=click.IntRange(min=1), help="Default from the task.")
@option("--temperature", type=float, help="Default from the task.")
@option("--top-p", type=float, help="Default from the task.")
@option("--seed", type=int, help="Sampling seed sent with each request.")
@option("--server", "server_kind", type=click.Choice(["vllm", "mock", "external"]), default="vllm",
        help="Launch vLLM, launch the mock server, or use a running server.")
@option("--server-url", help="URL of a running server (implies --server external).")
@option("--host", default="127.0.0.1", help="Address the launched server binds.")
@option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
        help="Run directory. [default: runs/<task>-<model>-<timestamp>]")
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def inference(task: str, dataset: Path | None, limit: int | None, model: str, api: str | None,
              max_tokens: int | None, temperature: float | None, top_p: float | None, seed: int | None,
              server_kind: str, server_url: str | None, host: str, run_dir: Path | None, server_args: tuple[str, ...],
              **ops: Any) -> None:
    """Run a task's prompts against a supervised server. Arguments after `--` go to the server command."""
    from hallurun import config
    from hallurun.core import runner
    from hallurun.tasks import registry as tasks

    operational, server = _split_operational(ops)
    try:
        spec = tasks.resolve(task)
        cfg = config.build(
            spec, model=model, dataset=dataset, limit=limit,
            run_dir=run_dir or runner.default_run_dir(spec.name, model),
            sampling={"api": api, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                      "seed": seed},
            server={"kind": server_kind, "url": server_url, "host": host, "args": tuple(server_args), **server},
            operational=operational,
        )
        code = runner.start(cfg)
    except (config.ConfigError, tasks.TaskError, runner.UsageError) as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--retry-failed", is_flag=True, help="Run the items recorded in failures.jsonl again.")
@click.option("--force", is_flag=True, help="Continue even though the dataset file changed.")
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def resume(run_dir: Path | None, retry_failed: bool, force: bool, server_args: tuple[str, ...], **ops: Any) -> None:
    """Continue an interrupted run (default: the most recent under runs/). Model, task and sampling come from
    its manifest; operational options and server arguments after `--` may be changed."""
    import dataclasses

    from hallurun import config
    from hallurun.core import runner
    from hallurun.store import manifest

    operational, server = _split_operational(ops)
    overrides = {k: v for k, v in operational.items() if v is not None}
    try:
        run_dir = run_dir or runner.latest_run()
        saved = runner.saved_server(run_dir)
        server_changes = {k: v for k, v in server.items() if v is not None}
        if server_args:
            server_changes["args"] = tuple(server_args)
        if server_changes:
            overrides["server"] = dataclasses.replace(saved, **server_changes)
        code = runner.resume(run_dir, overrides, retry_failed=retry_failed, force=force)
    except (config.ConfigError, manifest.ManifestError, runner.UsageError) as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def status(run_dir: Path | None, as_json: bool) -> None:
    """Show a run's progress, failures and restarts (default: the most recent run)."""
    from hallurun.core import runner
    from hallurun.store import manifest
    from hallurun.store import summary as run_status

    try:
        summary = run_status.summarize(run_dir or runner.latest_run())
    except (manifest.ManifestError, runner.UsageError) as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps(summary).decode())
        return
    state = ("finished" if summary["finished"] else
             f"running (pid {summary['running_pid']})" if summary["running_pid"] else "stopped")
    click.echo(f"{summary['run_dir']}: {summary['task']} on {summary['model']} — {state}")
    click.echo(f"  {summary['done']}/{summary['total']} done, {summary['failed']} failed, "
               f"{summary['pending']} pending")
    click.echo(f"  restarts {summary['restarts']} (wedges {summary['wedges']}, crashes {summary['crashes']}), "
               f"quarantined {summary['quarantined']}")
    for reason, count in sorted(summary["failures_by_reason"].items()):
        click.echo(f"  failed: {reason}: {count}")


@main.command("tasks")
def list_tasks() -> None:
    """List the built-in tasks."""
    from hallurun.tasks import registry as tasks

    for task in tasks.builtin_tasks():
        click.echo(f"{task.name:16} {task.description}  [{task.dataset}]")


@main.command()
@option("--model", default="tiny", show_default=True, help="The model a run would use.")
@option("--server-python", type=click.Path(dir_okay=False), help="Python of the environment that has vLLM.")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def doctor(model: str, server_python: str | None, server_args: tuple[str, ...]) -> None:
    """Check this machine: vLLM, GPU, disk, the model, and the exact server command hallurun would run."""
    from rich.console import Console

    from hallurun import config
    from hallurun.server import doctor
    from hallurun.tasks import registry as tasks

    spec = tasks.Task(name="doctor", description="", dataset=Path("-"))
    cfg = config.build(spec, model=model, run_dir=Path("runs"),
                       server={"kind": "vllm", "python": server_python, "args": tuple(server_args)})
    sys.exit(doctor.report(cfg, Console()))


@main.command("tiny-model")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
def tiny_model_command(path: Path | None) -> None:
    """Build the tiny random Llama model (no download) at PATH, or in the cache where `--model tiny` finds it.

    It is a smoke-test model: it exercises the real engine, and its answers are noise."""
    from hallurun.server import tiny_model

    try:
        built = tiny_model.build(path) if path else Path(tiny_model.resolve("tiny"))
    except ImportError as exc:
        _fail(f"building the tiny model needs torch, transformers and tokenizers ({exc}); run `make install`")
    click.echo(str(built))


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8100, show_default=True, type=int, help="Port to bind.")
@click.option("--model", "model_name", default=None, help="Served model name (default: accept any).")
@click.option("--latency", default=0.0, show_default=True, type=float, help="Seconds before each response starts.")
@click.option("--token-rate", default=0.0, show_default=True, type=float,
              help="Tokens per second when streaming (0: as fast as possible).")
@click.option("--max-model-len", default=None, type=int,
              help="Reject prompts longer than this many tokens with HTTP 400, like vLLM.")
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="Inject a fault (repeatable): hang-after:N, crash-after:N, error-rate:P, rate-limit:P, "
                   "stream-error-rate:P, drop-reused:P, poison:TEXT, stream-stall:TEXT, startup-delay:S, fail-start, "
                   "no-done (streams end without `data: [DONE]`), ignore-restarts:N (the first N POST /restart "
                   "are answered but not done).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the random faults.")
@click.option("--script", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSONL of {"match": TEXT, "response": ANSWER}: a prompt containing TEXT gets ANSWER verbatim.')
@click.option("--api-key", envvar="VLLM_API_KEY", default=None, show_envvar=True,
              help="Require this key on /v1 routes, as vLLM's --api-key does.")
@click.option("--term-delay", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds from a SIGTERM to the exit, serving meanwhile (a slow graceful shutdown).")
def mock_server_command(host: str, port: int, model_name: str | None, latency: float, token_rate: float,
                        max_model_len: int | None, faults: tuple[str, ...], seed: int, script: str | None,
                        api_key: str | None, term_delay: float) -> None:
    """A fault-injecting server that behaves like vLLM's OpenAI server."""
    from hallurun.server import mock as mock_server

    try:
        parsed = tuple(mock_server.parse_fault(spec) for spec in faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    try:
        scripted = mock_server.load_script(script) if script else ()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--script") from None
    mock_server.serve(mock_server.MockConfig(
        host=host, port=port, model_name=model_name, latency=latency, token_rate=token_rate,
        max_model_len=max_model_len, faults=parsed, seed=seed, script=scripted, api_key=api_key,
        term_delay=term_delay,
    ))


@main.command("eval", context_settings={"show_default": True})
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@option("--judge", help="Judge model, as its server knows it, or `heuristic`: the offline, approximate judge, used "
                        "when neither --judge nor --judge-url is given.")
@option("--judge-url", help="URL of a running OpenAI-compatible server with the judge model (implies "
                            "--judge-server external; without --judge, the first model it lists).")
@option("--judge-server", type=click.Choice(["vllm", "mock", "external"]), default="vllm",
        help="Launch vLLM for the judge, launch the mock server (tests), or use --judge-url.")
@option("--compare-judge", help="A second judge (a model, or `heuristic`) run on the same answers; prints how often "
                                "the two agree on each decision, and Cohen's kappa.")
@option("--evaluator", type=click.Choice(["precisewikiqa", "mixedentities", "longwiki"]),
        help="Score a run of a prompt file as this task. [default: the run's task's own]")
@option("--passages", type=click.Path(dir_okay=False, path_type=Path),
        help="longwiki: JSONL of {title, text} passages to verify claims against, besides each reference section.")
@option("--host", default="127.0.0.1", help="Address a launched judge server binds.")
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(run_dir: Path | None, judge: str | None, judge_url: str | None, judge_server: str,
                 compare_judge: str | None, evaluator: str | None, passages: Path | None, host: str,
                 server_args: tuple[str, ...], **ops: Any) -> None:
    """Judge a finished run's answers (default: the most recent run under runs/) and compute HalluLens' metrics:
    eval_results.json, judgments.jsonl, a table and a chart. Judge stages run like inference, resumably, under
    RUN_DIR/eval/<judge>/. Arguments after `--` go to the judge server's command."""
    from rich.console import Console

    from hallurun import config
    from hallurun.core import runner
    from hallurun.eval import evaluate, report

    operational, server = _split_operational(ops)
    if judge_server == "external" and not judge_url:
        _fail("--judge-server external needs --judge-url")
    spec = {"kind": judge_server, "host": host, "args": tuple(server_args), **server}
    console = Console(soft_wrap=True)
    try:
        first = evaluate.make_judge(judge, judge_url, spec, operational)
        second = evaluate.make_judge(compare_judge, judge_url, spec, operational) if compare_judge else None
        if second is not None and second.name == first.name:
            _fail(f"--compare-judge {compare_judge} is the judge already given; name a different one")
        run = evaluate.load_run(run_dir or runner.latest_run(), evaluator, passages=passages is not None)
        texts = evaluate.load_passages(passages) if passages is not None else None
        done = [evaluate.evaluate(run, first, console, passages_path=passages, passages=texts)]
        report.show(done[0].results, console)
        if second is not None:
            done.append(evaluate.evaluate(run, second, console, passages_path=passages, passages=texts,
                                          primary=False))
            report.show(done[1].results, console)
            agreement = evaluate.compare_judges(run, done[0], done[1])
            console.print(report.agreement_table(agreement))
            console.print(f"agreement: {agreement['file']}", highlight=False)
    except (config.ConfigError, evaluate.EvalError, runner.UsageError) as exc:
        _fail(str(exc))
    except evaluate.EvalStopped as exc:
        click.echo(str(exc) if exc.code == runner.EXIT_INTERRUPTED else f"error: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same `hallurun eval` command again to continue", err=True)
        sys.exit(130)
    # Like inference: done, but some judge requests failed (their items are reported, not scored).
    sys.exit(1 if any(e.results["counts"]["judge_failed"] for e in done) else 0)


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--judge", help="Show this judge's results (its folder under RUN_DIR/eval/, e.g. heuristic) instead "
                              "of each run's latest evaluation.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as a JSON list.")
def compare_command(run_dirs: tuple[Path, ...], judge: str | None, as_json: bool) -> None:
    """Print the evaluation metrics of several runs side by side."""
    from rich.console import Console

    from hallurun.eval import compare, evaluate

    try:
        runs = [(run_dir, compare.load(run_dir, judge)) for run_dir in run_dirs]
    except evaluate.EvalError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps([r for _, r in runs]).decode())
        return
    Console(soft_wrap=True).print(compare.table(runs))


@main.command(context_settings={"show_default": True})
@click.option("--task", "task_name", type=click.Choice(["precisewikiqa"]), default="precisewikiqa",
              help="Which question set to build.")
@click.option("--docs", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="GoodWiki-style JSONL: title, document (markdown), h_score_cat (0–9), optional pageid, revid, "
                   "description, categories. A sample: hallurun/tasks/precisewikiqa/goodwiki_sample.jsonl.")
@click.option("--model", required=True, help="The generator model, as the server knows it.")
@click.option("--n", "n", required=True, type=click.IntRange(min=1),
              help="Questions to draft, spread evenly over the popularity bins (fewer survive the check).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Question file to write. [default: precisewikiqa-<model>-n<N>-seed<S>.jsonl]")
@click.option("--seed", default=0, type=int, help="Seed for choosing documents and passages.")
@option("--server", "server_kind", type=click.Choice(["vllm", "mock", "external"]), default="vllm",
        help="Launch vLLM, launch the mock server, or use a running server.")
@option("--server-url", help="URL of a running server (implies --server external; no relaunch between stages).")
@option("--host", default="127.0.0.1", help="Address the launched server binds.")
@click.option("--retry-failed", is_flag=True, help="Ask again for requests that failed in an earlier try.")
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def generate(task_name: str, docs: Path, model: str, n: int, out: Path | None, seed: int, server_kind: str,
             server_url: str | None, host: str, retry_failed: bool, server_args: tuple[str, ...],
             **ops: Any) -> None:
    """Build a PreciseWikiQA question file with a generator model: a question per passage, then an
    answerability check. Both stages run supervised and resumable; run the same command again to continue.
    Arguments after `--` go to the server command."""
    from hallurun import config
    from hallurun.core import runner, stage
    from hallurun.tasks.precisewikiqa import generate as gen

    operational, server = _split_operational(ops)
    settings = stage.Settings(
        model=model, retry_failed=retry_failed, operational=operational,
        server={"kind": server_kind, "url": server_url, "host": host, "args": tuple(server_args), **server},
    )
    try:
        code = gen.generate(docs, n, seed, out or gen.default_out(model, n, seed), settings)
    except (gen.GenerateError, stage.StageError, config.ConfigError, runner.UsageError) as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command("build-entities", context_settings={"show_default": True})
@click.option("--n", "n", default=100, type=click.IntRange(min=1), help="Names to make, spread over the four kinds.")
@click.option("--seed", default=0, type=int, help="Seed for choosing and ordering the names.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSONL file to write.")
def build_entities(n: int, seed: int, out: Path) -> None:
    """Make a MixedEntities dataset: animals, plants, bacteria and medicines that do not exist, named from real
    genus, epithet and medicine parts (hallurun/tasks/mixedentities/*.json). The built-in set is `--n 100 --seed 0`."""
    from hallurun.tasks.mixedentities import names as mixedentities

    try:
        records = mixedentities.build(n, seed)
    except ValueError as exc:
        _fail(str(exc))
    mixedentities.write(records, out)
    click.echo(f"{len(records)} names → {out}")
