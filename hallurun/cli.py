"""Command-line interface: parses options and calls into the library. No logic lives here."""

from __future__ import annotations

import click

from hallurun import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hallurun")
def main() -> None:
    """Run LLM prompt batches against a supervised inference server, exactly once."""


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
                   "stream-error-rate:P, poison:TEXT, startup-delay:S, fail-start.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the random faults.")
def mock_server_command(host: str, port: int, model_name: str | None, latency: float, token_rate: float,
                        max_model_len: int | None, faults: tuple[str, ...], seed: int) -> None:
    """A fault-injecting server that behaves like vLLM's OpenAI server."""
    from hallurun import mock_server

    try:
        parsed = tuple(mock_server.parse_fault(spec) for spec in faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    mock_server.serve(mock_server.MockConfig(
        host=host, port=port, model_name=model_name, latency=latency, token_rate=token_rate,
        max_model_len=max_model_len, faults=parsed, seed=seed,
    ))
