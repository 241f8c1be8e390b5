"""What `hallurun eval` prints: rich tables of an evaluation's metrics, its bins, and judge agreement.

The tables read eval_results.json's fields; which metrics head them is the scoring's `headline`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from hallurun.eval.metrics import BIN_COUNTS
from hallurun.eval.scoring import Column, Results, Scoring

UNDEFINED = "n/a"  # a rate whose denominator is empty: undefined, never shown as 0 %


def percent(value: Any) -> str:
    """A rate as a percentage; `n/a` for an undefined rate (None: nothing to divide by)."""
    return UNDEFINED if value is None else f"{100 * float(value):.1f}%"


def judge_label(results: dict[str, Any]) -> str:
    """The judge's name, marked approximate for the heuristic, as every report shows it."""
    return f"{results['judge']} (approximate)" if results.get("approximate") else str(results["judge"])


def metrics_table(results: Results, headline: Sequence[Column]) -> Table:
    """The headline metrics, then every count."""
    table = Table(title=f"{results['evaluator']} · {results['model']} · judge: {judge_label(results)}",
                  title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for column in headline:
        table.add_row(column.label, percent(results.get(column.key)), column.key)
    table.add_section()
    for key, value in results["counts"].items():
        style = "yellow" if key in {"unparseable", "judge_failed", "inference_failed"} and value else None
        table.add_row(key.replace("_", " "), str(value), "", style=style)
    return table


def bins_table(results: Results, headline: Sequence[Column], key: str | None) -> Table | None:
    """The headline metrics per bin (`key`: the results' "by_<bin>" field), None without bins."""
    bins = results.get(key) if key else None
    if not bins or key is None:
        return None
    names = [column.key for column in headline]
    # The rates' denominators beside them, so an `n/a` shows why (e.g. 0 answered); older results lack them.
    counts = [c for c in BIN_COUNTS if any(c in values for values in bins.values())]
    table = Table(title=f"by {key[3:]}", title_justify="left")
    table.add_column(key[3:])
    for name in counts:
        table.add_column(name, justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for b, values in bins.items():
        table.add_row(b, *(str(values.get(c, "")) for c in counts), *(percent(values.get(n)) for n in names))
    return table


def show(results: Results, scoring: Scoring, console: Console) -> None:
    """The evaluation's tables and notes."""
    console.print(metrics_table(results, scoring.headline))
    bins = bins_table(results, scoring.headline, scoring.bins_key)
    if bins is not None:
        console.print(bins)
    counts = results["counts"]
    if counts.get("unparseable") or counts.get("judge_failed"):
        console.print(f"[yellow]{counts.get('unparseable', 0)} item(s) with an unreadable verdict and "
                      f"{counts.get('judge_failed', 0)} with a failed judge request are not scored: "
                      "see `problem` in judgments.jsonl[/]")
    if results.get("approximate"):
        console.print(f"[yellow]judge {results['judge']}: {results.get('note', 'approximate')}[/]", highlight=False)
    for note in scoring.notes:
        if results.get(note.key):
            console.print(f"note: {results[note.key]}", highlight=False)
    for name, path in results.get("files", {}).items():
        console.print(f"{name}: {path or 'not drawn (matplotlib is not installed)'}", highlight=False)


def agreement_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"agreement: {report['judge_a']} vs {report['judge_b']}", title_justify="left")
    for name, justify in (("decision", "left"), ("items", "right"), ("agree", "right"), ("agreement", "right"),
                          ("Cohen's kappa", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d in report["decisions"]:
        kappa = UNDEFINED if d["kappa"] is None else f"{d['kappa']:.3f}"
        table.add_row(d["decision"], str(d["items"]), str(d["agree"]), percent(d["agreement"]), kappa)
    return table
