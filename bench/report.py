"""The tables: one per section, defined once as columns and drawn with rich in the terminal or as Markdown for
`docs/benchmarks.md` (`python -m bench.report bench/results.json` prints the Markdown)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.common import median_interval


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], Any]
    fmt: str = "{}"

    def cell(self, row: dict[str, Any]) -> str:
        value = self.value(row)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return self.fmt.format(value)


def _key(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def col(header: str, name: str, fmt: str = "{}") -> Column:
    return Column(header, _key(name), fmt)


def _ratio_interval(row: dict[str, Any]) -> tuple[float, float] | None:
    """Where the median ratio of another run of as many turns would likely fall (none for the bare loop, the
    reference, nor for offline and upstream, which run once)."""
    ratios = row.get("ratios") or []
    return median_interval(ratios) if len(ratios) > 1 and row["client"] != "bare" else None


SECTIONS: dict[str, tuple[str, list[Column]]] = {
    "overhead": ("1. Client overhead: the same requests against one mock server", [
        col("latency s", "latency_s", "{:g}"), col("concurrency", "concurrency"), col("client", "client"),
        col("requests", "items", "{:,}"), col("req/s (median)", "rps", "{:,.0f}"), col("× bare loop", "ratio_to_bare",
                                                                                "{:.2f}"),
        col("client CPU µs/req", "cpu_us_per_request", "{:,.0f}"), col("reps", "reps"),
    ]),
    "recovery": ("2. Recovery from wedges (hang-after:K, concurrency 64, every duration ÷ scale)", [
        col("client", "client"), col("items", "items"), col("wedge every", "wedge_every"),
        col("durations ÷", "scale", "{:g}"),
        col("fault-free s", "clean_s", "{:.1f}"), col("with wedges s", "faulty_s", "{:.1f}"),
        col("× fault-free", "slowdown", "{:.1f}"), col("wedges", "wedges"), col("s lost / wedge", "lost_per_wedge_s",
                                                                                "{:.1f}"),
        col("restarts", "restarts"), col("restarts / wedge", "restarts_per_wedge", "{:.2f}"), col("lost", "lost"),
        col("duplicated", "duplicated"), col("placeholders / failures", "placeholders_or_failures"),
        col("intact", "intact"),
    ]),
    "poison": ("3. Poison input (one prompt wedges the server whenever it is in flight; every duration ÷ scale)", [
        col("client", "client"), col("items", "items"), col("durations ÷", "scale", "{:g}"),
        col("finished", "finished"), col("wall s", "wall_s", "{:.1f}"),
        col("wedges", "wedges"), col("restarts", "restarts"), col("isolated", "isolated"),
        col("isolated after wedges", "wedges_until_isolated"),
        Column("poison item ends as", lambda r: _poison_outcome(r)),
        col("other placeholders / failures", "others_placeholders_or_failures"), col("lost", "lost"),
        col("duplicated", "duplicated"),
    ]),
    "scale_run": ("4a. Scale: one long run against the mock (latency 0, concurrency 64)", [
        col("items", "items"), col("req/s first 10%", "rps_first_10pct", "{:,.0f}"),
        col("req/s last 10%", "rps_last_10pct", "{:,.0f}"), col("CPU µs/req first 10%", "cpu_us_first_10pct", "{:.0f}"),
        col("CPU µs/req last 10%", "cpu_us_last_10pct", "{:.0f}"), col("RSS at 10% MB", "rss_at_10pct_mb", "{:.0f}"),
        col("RSS at 90% MB", "rss_at_90pct_mb", "{:.0f}"), col("growth B/item", "growth_bytes_per_item", "{:.0f}"),
        col("id index MB", "id_index_mb", "{:.1f}"), col("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        col("generation.jsonl s", "generation_jsonl_s", "{:.1f}"),
    ]),
    "scale_resume": ("4b. Scale: `resume` of a run with a million results", [
        col("results on disk", "lines", "{:,}"), col("results MB", "results_mb", "{:.0f}"),
        col("to first new result s", "to_first_new_result_s", "{:.1f}"),
        col("start + dataset + checkpoint s", "launch_to_resumed_s", "{:.1f}"),
        col("server ready s", "resumed_to_server_ready_s", "{:.2f}"),
        col("skip settled + first batch s", "server_ready_to_first_new_result_s", "{:.1f}"),
        col("whole resume s", "total_s", "{:.1f}"), col("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ]),
    "engine": ("5. Real engine: vLLM (CPU) serving the tiny random Llama, the same prompts from every client", [
        col("client", "client"), col("concurrency", "concurrency"), col("requests", "items", "{:,}"),
        col("max tokens", "max_tokens"), col("tokens generated", "completion_tokens", "{:,}"),
        col("s (median)", "elapsed_s", "{:.1f}"), col("req/s (median)", "rps", "{:,.1f}"),
        col("tokens/s", "tokens_per_s", "{:,.0f}"), col("× bare loop", "ratio_to_bare", "{:.2f}"),
        Column("90% interval", _ratio_interval, "{0[0]:.2f}–{0[1]:.2f}"),
        col("× bare, same pace", "ratio_same_pace", "{:.2f}"), col("same-pace pairs", "same_pace_pairs"),
        col("mean latency ms", "mean_latency_ms", "{:,.0f}"), col("mean in flight", "mean_in_flight", "{:.1f}"),
        col("engine tokens/step", "tokens_per_step", "{:.0f}"), col("slow-pace runs", "slow_runs"),
        col("resent", "resent"), col("retries", "retries"), col("reps", "reps"),
    ]),
}


def _poison_outcome(row: dict[str, Any]) -> str:
    text = row.get("poison_generation")
    if row.get("isolated"):
        return "quarantined (failures.jsonl)"
    if text is None:
        return "–"
    return text.split("]")[0] + "] placeholder" if text.startswith("[") else "a generation"


TRANSPOSED = frozenset({"recovery", "poison"})  # a few clients and many figures: one column per client


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows of cells) for each section present in `results`."""
    sections = results["sections"]
    found = []
    for name, (title, columns) in SECTIONS.items():
        if name.startswith("scale_"):
            part = "long run" if name == "scale_run" else "resume"
            rows = [r for r in sections.get("scale", []) if r["part"] == part]
        else:
            rows = sections.get(name, [])
        if not rows:
            continue
        if name in TRANSPOSED:
            header = ["", *(columns[0].cell(row) for row in rows)]
            cells = [[c.header, *(c.cell(row) for row in rows)] for c in columns[1:]]
        else:
            header = [c.header for c in columns]
            cells = [[c.cell(row) for c in columns] for row in rows]
        found.append((title, header, cells))
    return found


def print_tables(results: dict[str, Any], console: Console) -> None:
    for title, header, cells in tables(results):
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 or name == "client" else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)


def markdown(results: dict[str, Any]) -> str:
    out = []
    for title, header, cells in tables(results):
        out.append(f"**{title}**\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("| --- " + "| ---: " * (len(header) - 1) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in cells)
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(orjson.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json").read_bytes())))
