"""Command-line interface: parses options and calls into the library. No logic lives here."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from hallurun import __version__
from hallurun.config import Api, RunOptions, ServerKind, ServerOptions, ServerSpec
from hallurun.errors import EXIT_BUG, EXIT_INTERRUPTED, HallurunError

if TYPE_CHECKING:
    from hallurun.core.result import RunResult

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


class _Registered(click.Choice):
    """A choice among what the task registry offers, read when the option is used or shown (`--help`, shell
    completion), not when the CLI loads: the registry imports every task's code, which most commands never need."""

    def __init__(self, offered: Callable[[], list[str]]) -> None:
        self._offered = offered
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        return self._offered()

    @choices.setter
    def choices(self, value: object) -> None:
        pass  # click.Choice sets its list in __init__; the registry is the list here


def _evaluators() -> list[str]:
    from hallurun.tasks import registry

    return registry.evaluators()


def _generators() -> list[str]:
    from hallurun.tasks import registry

    return list(registry.generators())


def _operational_options(fn: F) -> F:
    """Options that may change between a run and its resumption."""
    decorators = [
        option("--concurrency", type=click.IntRange(min=1),
               help="Requests in flight at once on each replica. [default: 64]"),
        option("--replicas", help="Servers to launch, each supervised alone (its own port, log, restarts), or "
                                  "`auto`: one per visible GPU (CUDA_VISIBLE_DEVICES, else the driver), 1 without "
                                  "one. [default: 1]"),
        option("--gpus-per-replica", type=click.IntRange(min=1),
               help="GPUs of each replica (its own CUDA_VISIBLE_DEVICES; vLLM's --tensor-parallel-size). "
                    "[default: 1]"),
        option("--stall-timeout", type=float,
               help="The most seconds without a byte from a server, while requests are in flight, before it is "
                    "wedged; the window shrinks below it to what healthy streams on that server look like. "
                    "[default: 30]"),
        option("--adaptive-window/--fixed-window", "adaptive_window", default=None,
               help="Learn each server's pace and find a wedge in seconds (the window in force is shown and in "
                    "hang_detected events), or wait the whole --stall-timeout every time. [default: adaptive]"),
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


def _shard_options(fn: F) -> F:
    """The shard of a sharded run this command runs (`hallurun merge` joins them)."""
    fn = option("--shards", type=click.IntRange(min=1),
                help="With --shard auto under a Kubernetes Indexed Job: the Job's completions (not exported to "
                     "the pod).")(fn)
    return option("--shard", metavar="I/N|auto",
                  help="Run shard I (0-based) of N: the items at positions p with p mod N = I, in "
                       "RUN_DIR/shard-I-of-N. `auto`: the scheduler's index (a Slurm array task, a Kubernetes "
                       "Indexed Job's JOB_COMPLETION_INDEX, SkyPilot's SKYPILOT_JOB_RANK).")(fn)


def _split_operational(opts: dict[str, Any]) -> tuple[RunOptions, ServerOptions]:
    """The `_operational_options` as typed values: the run-level ones, and the server's launch settings (port,
    python, startup); None: not given."""
    from hallurun.server import gpus

    replicas = opts.pop("replicas")
    server = ServerOptions(port=opts.pop("port"), python=opts.pop("server_python"),
                           startup_timeout=opts.pop("startup_timeout"),
                           replicas=None if replicas is None else gpus.parse_replicas(replicas),
                           gpus_per_replica=opts.pop("gpus_per_replica"))
    return RunOptions(**opts), server


def _server(kind: ServerKind, urls: tuple[str, ...], host: str, args: tuple[str, ...]) -> ServerSpec:
    """The server of a new run from the command line: each `--server-url` is one replica of an external pool."""
    return ServerSpec(kind=kind, url=urls[0] if urls else None, extra_urls=urls[1:], host=host, args=args)


def _exit_with(result: RunResult | None) -> None:
    """End a command that drove a run (`hallurun.process.run`) with the run's exit code; a run interrupted
    before it began has no result, and says so."""
    if result is None:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(result.exit_code)




class _Hallurun(click.Group):
    """The command group, with one ending for everything that escapes a command: click's own errors keep their
    codes; hallurun's own errors (`HallurunError`) are one line and their exit code; Ctrl-C outside a run is exit
    130 (click's default says "Aborted!" with exit 1, which means "done, some items failed"); and anything else
    is a bug that says so, with the run folder and the traceback, and exit 70."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except HallurunError as exc:
            # An interrupted stage says how to continue; that is no error.
            click.echo(str(exc) if exc.exit_code == EXIT_INTERRUPTED else f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            where = next((note for note in getattr(exc, "__notes__", ()) if note.startswith(_RUN_FOLDER)), None)
            click.echo(f"hallurun: internal error, a bug in hallurun {__version__}; nothing already written is lost"
                       f"{f' ({where})' if where else ''}. Please report it with the traceback below.", err=True)
            click.echo(traceback.format_exc(), err=True)
            sys.exit(EXIT_BUG)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            run_dir = ctx.meta.get(_RUN_FOLDER)
            if run_dir is not None and not isinstance(exc, HallurunError | click.ClickException):
                exc.add_note(f"{_RUN_FOLDER}: {run_dir}")
            raise


_RUN_FOLDER = "run folder"  # the key under which a command notes the run it works on, for a bug's report


def _working_on(run_dir: Path) -> Path:
    """Note the run folder this command works on (a bug's report names it), and return it."""
    click.get_current_context().meta[_RUN_FOLDER] = run_dir
    return run_dir


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
@option("--api", "api_name", type=click.Choice(["chat", "completions"]),
        help="Chat (one user message) or raw completions.")
@option("--max-tokens", type=click.IntRange(min=1), help="Default from the task.")
@option("--temperature", type=float, help="Default from the task.")
@option("--top-p", type=float, help="Default from the task.")
@option("--seed", type=int, help="Sampling seed sent with each request.")
@option("--server", "server_kind", type=click.Choice(["vllm", "mock", "external"]), default="vllm",
        help="Launch vLLM, launch the mock server, or use a running server.")
@option("--server-url", multiple=True,
        help="URL of a running server (implies --server external); give it again for each server of a pool.")
@option("--host", default="127.0.0.1", help="Address the launched server binds.")
@option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
        help="Run directory (with --shard: the folder all shards share). [default: runs/<task>-<model>-<timestamp>]")
@_shard_options
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def inference(task: str, dataset: Path | None, limit: int | None, model: str, api_name: Api | None,
              max_tokens: int | None, temperature: float | None, top_p: float | None, seed: int | None,
              server_kind: ServerKind, server_url: tuple[str, ...], host: str, run_dir: Path | None,
              shard: str | None, shards: int | None, server_args: tuple[str, ...], **ops: Any) -> None:
    """Run a task's prompts against a supervised server. Arguments after `--` go to the server command."""
    from rich.console import Console

    from hallurun import api, config, process

    options, server = _split_operational(ops)
    console = Console(soft_wrap=True)
    cfg = api.configure(
        task, model=model, dataset=dataset, limit=limit, run_dir=run_dir, options=options,
        shard=config.shard_option(shard, shards, os.environ),
        sampling=config.SamplingOverrides(api=api_name, max_tokens=max_tokens, temperature=temperature,
                                          top_p=top_p, seed=seed),
        server=server.over(_server(server_kind, server_url, host, tuple(server_args))),
    )
    _working_on(cfg.run_dir)
    _exit_with(process.run(lambda handle: api.start_async(cfg, console=console, handle=handle), console))


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--retry-failed", is_flag=True, help="Run the items recorded in failures.jsonl again.")
@click.option("--force", is_flag=True, help="Continue even though the dataset file changed.")
@_shard_options
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def resume(run_dir: Path | None, retry_failed: bool, force: bool, shard: str | None, shards: int | None,
           server_args: tuple[str, ...], **ops: Any) -> None:
    """Continue an interrupted run (default: the most recent under runs/), or with --shard, that shard of the
    sharded run RUN_DIR. Model, task and sampling come from its manifest; operational options and server
    arguments after `--` may be changed."""
    import dataclasses

    from rich.console import Console

    from hallurun import api, config, process

    options, server = _split_operational(ops)
    if server_args:
        server = dataclasses.replace(server, args=tuple(server_args))
    console = Console(soft_wrap=True)
    if run_dir is not None and api.is_sweep(run_dir):
        import functools

        if (retry_failed or force or shard or shards or options.given()
                or any(v is not None for v in dataclasses.asdict(server).values())):
            _fail(f"{run_dir} is a sweep: it continues with its spec's settings; change them in the spec "
                  "([options]), and run `hallurun sweep SPEC.toml`")
        sys.exit(api.resume_sweep(run_dir, console=console,
                                  drive=functools.partial(process.run, console=console)).exit_code)
    part = config.shard_option(shard, shards, os.environ)
    if part is not None and run_dir is None:
        _fail("--shard: give the sharded run's folder too (hallurun resume RUN --shard ...)")
    chosen = run_dir or api.latest_run()
    chosen = _working_on(chosen / part.folder if part is not None else chosen)
    _exit_with(process.run(lambda handle: api.resume_async(
        chosen, options=options, server=server, retry_failed=retry_failed, force=force, console=console,
        handle=handle), console))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
def sweep(spec: Path) -> None:
    """Run every task of SPEC.toml for each of its models (each model's server launched once for all its tasks),
    then its judge once for every run, then SWEEP/report.md, .csv, .json and the figures. Run it again, or
    `hallurun resume SWEEP`, to continue after a stop; only models or tasks may be added to a spec meanwhile."""
    import functools

    from rich.console import Console

    from hallurun import api, process

    console = Console(soft_wrap=True)
    done = api.sweep(spec, console=console, drive=functools.partial(process.run, console=console))
    sys.exit(done.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def merge(run_dir: Path) -> None:
    """Join the finished shards of a sharded run (RUN_DIR/shard-I-of-N) into RUN_DIR: results.jsonl,
    failures.jsonl, generation.jsonl in dataset order and a manifest, each id exactly once; then `hallurun eval
    RUN_DIR` scores it. A missing, unfinished or foreign shard is refused, one line each, exit 2."""
    from hallurun import api

    done = api.merge(_working_on(run_dir))
    click.echo(f"merged {done.shards} shards into {run_dir}: {done.results} results, {done.failures} failed "
               f"(in {done.seconds:.1f} s); evaluate with `hallurun eval {run_dir}`")


@main.command("exit-codes")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def exit_codes(as_json: bool) -> None:
    """The exit codes, and which of them a scheduler should retry (docs/scaling.md)."""
    import dataclasses

    from hallurun.errors import EXIT_TABLE

    if as_json:
        click.echo(orjson.dumps([dataclasses.asdict(c) for c in EXIT_TABLE]).decode())
        return
    for c in EXIT_TABLE:
        click.echo(f"{c.code:>4}  {c.name:20} {'retry' if c.retry else 'final':6} {c.meaning}")


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option("--chart", is_flag=True, help="Also draw RUN_DIR/timeline.png: throughput, and each replica's "
                                            "serving, wedged, restarting and retired spans.")
def status(run_dir: Path | None, as_json: bool, chart: bool) -> None:
    """Show a run's progress, failures, restarts and replicas (default: the most recent run)."""
    from hallurun import api
    from hallurun.store import summary as run_status

    chosen = _working_on(run_dir or api.latest_run())
    if api.is_sweep(chosen):
        from hallurun.sweep import layout

        grid = layout.grid(chosen)
        click.echo(orjson.dumps(grid).decode() if as_json else "\n".join(layout.describe(grid)))
        return
    summary = run_status.summarize(chosen)
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        for line in run_status.describe(summary):
            click.echo(line)
    if chart:
        from hallurun.core import timeline

        drawn = timeline.write(chosen)
        click.echo(f"timeline: {drawn}" if drawn else "timeline: nothing to draw yet (no events)",
                   err=as_json)


@main.command("tasks")
def list_tasks() -> None:
    """List the built-in tasks."""
    from hallurun.tasks import registry as tasks

    for task in tasks.builtin_tasks():
        click.echo(f"{task.name:16} {task.description}  [{task.dataset}]")


@main.command()
@option("--model", default="tiny", show_default=True, help="The model a run would use.")
@option("--server-python", type=click.Path(dir_okay=False), help="Python of the environment that has vLLM.")
@option("--replicas", default="1", show_default=True, help="The pool to plan: a number, or `auto`.")
@option("--gpus-per-replica", default=1, show_default=True, type=click.IntRange(min=1), help="GPUs per replica.")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def doctor(model: str, server_python: str | None, replicas: str, gpus_per_replica: int,
           server_args: tuple[str, ...]) -> None:
    """Check this machine: vLLM, the GPUs and the replica plan, disk, the model, and the exact server command
    hallurun would run."""
    from rich.console import Console

    from hallurun import config
    from hallurun.server import doctor, gpus

    cfg = doctor.config_for(model, config.ServerSpec(kind="vllm", python=server_python, args=tuple(server_args)))
    sys.exit(doctor.report(cfg, Console(), gpus.parse_replicas(replicas), gpus_per_replica))


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


@main.command("trained-model")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
def trained_model_command(path: Path | None) -> None:
    """Train the demonstration model (no download, seconds on a CPU) at PATH, or in the cache where `--model
    trained` finds it. It memorized seeded right, wrong and "I don't know" answers to the built-in
    PreciseWikiQA and MixedEntities prompts (plan.jsonl beside it): a demonstration, not a model."""
    from hallurun.server import trained_model

    try:
        built = trained_model.build(path) if path else Path(trained_model.resolve("trained"))
    except ImportError as exc:
        _fail(f"building the trained model needs torch, transformers and tokenizers ({exc}); run `make install`")
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
                   "are answered but not done), burst:MAX_S[:EVERY_S] (the whole engine pauses now and then), "
                   "prefill:S_PER_1000_CHARS (a long prompt's first token comes late), fail-restart:PATH (starts "
                   "once; a start that finds PATH fails).")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=None,
              help="Generations that progress at once, like an engine's batch; the others wait their turn "
                   "without a byte. [default: unlimited]")
@click.option("--replica-fault", "replica_faults", multiple=True, metavar="I:SPEC",
              help="A --fault only for the server launched as replica I of a pool (HALLURUN_REPLICA), repeatable: "
                   "one replica wedges while the others serve.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the random faults.")
@click.option("--script", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSONL of {"match": TEXT, "response": ANSWER}: a prompt containing TEXT gets ANSWER verbatim.')
@click.option("--api-key", envvar="VLLM_API_KEY", default=None, show_envvar=True,
              help="Require this key on /v1 routes, as vLLM's --api-key does.")
@click.option("--term-delay", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds from a SIGTERM to the exit, serving meanwhile (a slow graceful shutdown).")
def mock_server_command(host: str, port: int, model_name: str | None, latency: float, token_rate: float,
                        max_model_len: int | None, faults: tuple[str, ...], max_concurrency: int | None,
                        replica_faults: tuple[str, ...], seed: int, script: str | None, api_key: str | None,
                        term_delay: float) -> None:
    """A fault-injecting server that behaves like vLLM's OpenAI server."""
    from hallurun.server import mock as mock_server

    try:
        parsed = tuple(mock_server.parse_fault(text) for text in faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    from hallurun.server.supervisor import REPLICA_ENV

    me = os.environ.get(REPLICA_ENV, "0")  # set by the supervisor that launched this mock
    for text in replica_faults:
        index, _, spec = text.partition(":")
        if not index.isdigit() or not spec:
            raise click.BadParameter(f"{text!r}: give I:SPEC, as in 1:hang-after:5", param_hint="--replica-fault")
        try:
            fault = mock_server.parse_fault(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--replica-fault") from None
        if int(index) == int(me or 0):
            parsed += (fault,)
    try:
        scripted = mock_server.load_script(script) if script else ()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--script") from None
    mock_server.serve(mock_server.MockConfig(
        host=host, port=port, model_name=model_name, latency=latency, token_rate=token_rate,
        max_model_len=max_model_len, faults=parsed, seed=seed, script=scripted, api_key=api_key,
        term_delay=term_delay, max_concurrency=max_concurrency,
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
@option("--evaluator", type=_Registered(_evaluators),
        help="Score a run of a prompt file as this built-in task (see `hallurun tasks`). [default: the run's "
             "task's own]")
@option("--passages", type=click.Path(dir_okay=False, path_type=Path),
        help="For a task whose evaluation verifies claims (see `hallurun tasks`): JSONL of {title, text} passages "
             "to verify them against, besides each reference section.")
@option("--host", default="127.0.0.1", help="Address a launched judge server binds.")
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(run_dir: Path | None, judge: str | None, judge_url: str | None, judge_server: ServerKind,
                 compare_judge: str | None, evaluator: str | None, passages: Path | None, host: str,
                 server_args: tuple[str, ...], **ops: Any) -> None:
    """Judge a finished run's answers (default: the most recent run under runs/) and compute HalluLens' metrics:
    eval_results.json, judgments.jsonl, a table and a chart. Judge stages run like inference, resumably, under
    RUN_DIR/eval/<judge>/. Arguments after `--` go to the judge server's command."""
    import functools

    from rich.console import Console

    from hallurun import api, config, process

    options, server = _split_operational(ops)
    console = Console(soft_wrap=True)
    try:
        done = api.evaluate(
            _working_on(run_dir or api.latest_run()), judge=judge, judge_url=judge_url, compare_judge=compare_judge,
            judge_server=server.over(config.ServerSpec(kind=judge_server, host=host, args=tuple(server_args))),
            evaluator=evaluator, passages=passages, options=options, console=console,
            drive=functools.partial(process.run, console=console))
    except KeyboardInterrupt:
        click.echo("interrupted; run the same `hallurun eval` command again to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    # Like inference: done, but some judge requests failed (their items are reported, not scored).
    sys.exit(1 if done.judge_failed else 0)


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--judge", help="Show this judge's results (its folder under RUN_DIR/eval/, e.g. heuristic) instead "
                              "of each run's latest evaluation.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as a JSON list.")
def compare_command(run_dirs: tuple[Path, ...], judge: str | None, as_json: bool) -> None:
    """Print the evaluation metrics of several runs side by side (a sweep's folder: each of its runs)."""
    from rich.console import Console

    from hallurun import api
    from hallurun.eval import compare
    from hallurun.tasks import registry as tasks

    expanded = [found for run_dir in run_dirs for found in api.runs_of(run_dir)]
    runs = [(run_dir, compare.load(run_dir, judge)) for run_dir in expanded]
    if as_json:
        click.echo(orjson.dumps([r for _, r in runs]).decode())
        return
    Console(soft_wrap=True).print(compare.table(runs, [tasks.headline_of_run(d, r) for d, r in runs]))


@main.command(context_settings={"show_default": True})
@click.option("--task", "task_name", type=_Registered(_generators),
              help="Which task's question set to build (a task that can generate; see `hallurun tasks`). "
                   "[default: the one task that can]")
@click.option("--docs", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="GoodWiki-style JSONL: title, document (markdown), h_score_cat (0–9), optional pageid, revid, "
                   "description, categories. A sample: hallurun/tasks/precisewikiqa/goodwiki_sample.jsonl.")
@click.option("--model", required=True, help="The generator model, as the server knows it.")
@click.option("--n", "n", required=True, type=click.IntRange(min=1),
              help="Questions to draft, spread evenly over the popularity bins (fewer survive the check).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Question file to write. [default: <task>-<model>-n<N>-seed<S>.jsonl]")
@click.option("--seed", default=0, type=int, help="Seed for choosing documents and passages.")
@option("--server", "server_kind", type=click.Choice(["vllm", "mock", "external"]), default="vllm",
        help="Launch vLLM, launch the mock server, or use a running server.")
@option("--server-url", multiple=True,
        help="URL of a running server (implies --server external; no relaunch between stages); give it again for "
             "each server of a pool.")
@option("--host", default="127.0.0.1", help="Address the launched server binds.")
@click.option("--retry-failed", is_flag=True, help="Ask again for requests that failed in an earlier try.")
@_operational_options
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def generate(task_name: str | None, docs: Path, model: str, n: int, out: Path | None, seed: int, server_kind: str,
             server_url: tuple[str, ...], host: str, retry_failed: bool, server_args: tuple[str, ...],
             **ops: Any) -> None:
    """Build a PreciseWikiQA question file with a generator model: a question per passage, then an
    answerability check. Both stages run supervised and resumable; run the same command again to continue.
    Arguments after `--` go to the server command."""
    import dataclasses

    from rich.console import Console

    from hallurun import process
    from hallurun.core import command, stage
    from hallurun.tasks import registry as tasks
    from hallurun.tasks.plugin import Generated

    can = tasks.generators()
    if task_name is None and len(can) == 1:
        task_name = next(iter(can))
    if task_name is None:  # a given --task is one of them (click's choice)
        _fail(f"--task: give the task to generate for, one of {', '.join(can)}")
    operational, server = _split_operational(ops)
    settings = stage.Settings(model=model, retry_failed=retry_failed, operational=operational,
                              server=server.over(_server(server_kind, server_url, host, tuple(server_args))))
    generator = can[str(task_name)]

    def job(host: command.Host) -> Generated:
        # Both stages on one loop, with one server launch for the two (`core.command`).
        return generator.run(docs, n, seed, out, dataclasses.replace(settings, execute=host))

    made = process.run(lambda handle: command.in_one_loop(job, handle), Console(soft_wrap=True))
    if not isinstance(made, Generated):
        _exit_with(None)  # interrupted before the first stage began
    # Like inference: done, but some requests failed or nothing was kept: 1.
    sys.exit(0 if made.complete else 1)


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
