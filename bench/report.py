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
    finished_only: bool = False  # a figure that means nothing for a client that aborted: shown as "–" then

    def cell(self, row: dict[str, Any]) -> str:
        value = None if self.finished_only and aborted(row) else self.value(row)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return self.fmt.format(value)


def _key(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def col(header: str, name: str, fmt: str = "{}", *, finished_only: bool = False) -> Column:
    return Column(header, _key(name), fmt, finished_only)


# -- how a client's run ended (sections 2 and 3) --------------------------------------------------------------

REASON_CHARS = 90  # the whole reason stays in the results file; a table cell gets its start


def ended(row: dict[str, Any], key: str = "ended") -> dict[str, Any] | None:
    """How the row's client run ended: {finished, exit_code, reason, not_done}. Files written before the bench
    recorded it give only `finished` and hallurun's exit code, which are read instead."""
    found = row.get(key)
    if found is None and key == "ended" and "finished" in row:
        found = {"finished": row["finished"], "exit_code": (row.get("detail") or {}).get("exit_code")}
    return found


def aborted(row: dict[str, Any]) -> bool:
    """Whether the row's client stopped before it claimed to have settled every item."""
    found = ended(row)
    return found is not None and not found["finished"]


def ended_text(found: dict[str, Any] | None) -> str | None:
    """`finished (exit 0)`, or `aborted: exit 3 (the reason it gave)`: an abort is never shown as lost items."""
    if found is None:
        return None
    code, reason = found.get("exit_code"), found.get("reason")
    if found["finished"]:
        return "finished" if code is None else f"finished (exit {code})"
    if reason and len(reason) > REASON_CHARS:
        reason = reason[:REASON_CHARS - 1] + "…"
    if code is None:  # killed by the bench: the reason says so
        return f"aborted: {reason or 'killed'}"
    return f"aborted: exit {code}" + (f" ({reason})" if reason else "")


def _run_ended(row: dict[str, Any]) -> str | None:
    return ended_text(ended(row))


def _clean_run_ended(row: dict[str, Any]) -> str | None:
    return ended_text(ended(row, "clean_ended"))


def _lost(row: dict[str, Any]) -> Any:
    """Items a finished client did not return; for an aborted one, not a loss: how many it had not done."""
    if not aborted(row):
        return row.get("lost")
    not_done = (ended(row) or {}).get("not_done")
    return "– (aborted)" if not_done is None else f"– (aborted with {not_done} not done)"


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
        col("durations ÷", "scale", "{:g}"), col("mock start s (measured)", "mock_start_s", "{:.2f}"),
        col("restart wait s", "restart_wait_s", "{:g}"),
        Column("fault-free run", _clean_run_ended), Column("run with wedges", _run_ended),
        col("fault-free s", "clean_s", "{:.1f}"), col("with wedges s", "faulty_s", "{:.1f}", finished_only=True),
        col("× fault-free", "slowdown", "{:.1f}", finished_only=True), col("wedges", "wedges"),
        col("s lost / wedge", "lost_per_wedge_s", "{:.1f}", finished_only=True),
        col("restarts", "restarts"), col("restarts / wedge", "restarts_per_wedge", "{:.2f}"), Column("lost", _lost),
        col("duplicated", "duplicated"), col("placeholders / failures", "placeholders_or_failures"),
        col("intact", "intact", finished_only=True),
    ]),
    "poison": ("3. Poison input (one prompt wedges the server whenever it is in flight; every duration ÷ scale)", [
        col("client", "client"), col("items", "items"), col("durations ÷", "scale", "{:g}"),
        col("mock start s (measured)", "mock_start_s", "{:.2f}"), col("restart wait s", "restart_wait_s", "{:g}"),
        Column("run", _run_ended), col("wall s", "wall_s", "{:.1f}", finished_only=True),
        col("wedges", "wedges"), col("restarts", "restarts"), col("isolated", "isolated"),
        col("isolated after wedges", "wedges_until_isolated"),
        Column("poison item ends as", lambda r: _poison_outcome(r)),
        col("other placeholders / failures", "others_placeholders_or_failures"), Column("lost", _lost),
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
    "replicas_scaling": ("6a. Replicas: throughput with N mock replicas (each a fixed batch K at a token rate)", [
        col("replicas", "replicas"), col("batch K", "batch"), col("tokens/s", "token_rate", "{:g}"),
        col("concurrency / replica", "concurrency"), col("requests", "items", "{:,}"),
        col("req/s (steady)", "steady_rps", "{:,.1f}"), col("× one replica", "speedup", "{:.2f}"),
        col("target ×", "speedup_target", "{:.1f}"), col("× one, whole run", "speedup_whole_run", "{:.2f}"),
        col("client CPU µs/req", "cpu_us_per_request", "{:,.0f}"), col("CPU × one", "cpu_ratio", "{:.2f}"),
        col("client cores", "client_cores", "{:.2f}"), col("restarts", "restarts"), col("lost", "lost"),
        col("duplicated", "duplicated"), col("met", "met"),
    ]),
    "replicas_wedge": ("6b. Replicas: one replica wedged mid-run (hang-after), against a clean run of the same pool", [
        col("replicas", "replicas"), col("window", "window"), col("cold start s", "cold_start_s", "{:g}"),
        col("requests", "items", "{:,}"), col("wedge after", "hang_after"),
        col("clean s (request phase)", "clean_s", "{:.1f}"), col("wedged s", "wedged_s", "{:.1f}"),
        col("s lost", "lost_s", "{:.1f}"), col("s lost, process wall", "lost_wall_s", "{:.1f}"),
        col("window s", "window_s", "{:g}"),
        col("quiet s", "quiet_s", "{:.1f}"), col("relaunch s", "relaunch_s", "{:.1f}"),
        col("target s", "bound_s", "{:.1f}"), col("met", "met"),
        col("target s with window s", "bound_window_s", "{:.1f}"), col("gain s", "gain_s", "{:.1f}"),
        col("wedges", "wedges"), col("restarts", "restarts"), col("lost", "lost"), col("duplicated", "duplicated"),
    ]),
    "replicas_bursts": ("6c. Replicas: healthy but bursty engines (pauses, slow prefill of long prompts)", [
        col("case", "case"), col("replicas", "replicas"), col("requests", "items", "{:,}"),
        col("long prompts", "long_prompts", "{:,}"), Column("faults", lambda r: " ".join(r.get("faults") or [])),
        col("concurrency / replica", "concurrency"), col("req/s", "rps", "{:,.0f}"),
        col("engine pauses", "pauses"), col("longest pause s", "longest_pause_s", "{:.1f}"),
        col("restarts", "restarts"), col("wedges found", "hangs_detected"),
        col("first false wedge", "first_false_wedge"), col("requeued", "requeued"),
        col("window min s", "window_min_s", "{:g}"), col("window max s", "window_max_s", "{:g}"),
        col("lost", "lost"), col("duplicated", "duplicated"), col("met", "met"),
    ]),
    "replicas_engine": ("6d. Replicas: 2 vLLM (CPU) replicas, one engine core SIGSTOPped mid-run", [
        col("replicas", "replicas"), col("requests", "items", "{:,}"), col("concurrency / replica", "concurrency"),
        col("clean s (request phase)", "clean_s", "{:.1f}"), col("stopped s", "stopped_s", "{:.1f}"),
        col("s lost", "lost_s", "{:.1f}"), col("s lost, process wall", "lost_wall_s", "{:.1f}"),
        col("window s", "window_s", "{:g}"),
        col("stopped after s", "stopped_at_s", "{:g}"), col("both serving then", "both_serving_at_stop"),
        col("other replica serving after s", "other_serving_after_stop_s", "{:.1f}"),
        col("quiet s", "quiet_s", "{:.1f}"), col("stopping it took s", "stop_took_s", "{:.1f}"),
        col("relaunch s", "relaunch_s", "{:.1f}"), col("restarts", "restarts"), col("exactly once", "exactly_once"),
        col("clean req/s", "clean_rps", "{:,.1f}"),
        Column("one server req/s (engine section)", lambda r: (r.get("single_server") or {}).get("rps"), "{:,.1f}"),
    ]),
    "replicas_judge": ("6e. Replicas: the judge loaded once per `hallurun eval` (stages' launches)", [
        col("answers", "items"), col("judge stages", "stages"), col("launches", "launches"),
        col("cold start s", "cold_start_s", "{:.1f}"), col("eval wall s", "wall_s", "{:.1f}"),
        col("a launch per stage would add s", "launches_per_stage_would_add_s", "{:.1f}"), col("met", "met"),
    ]),
    "merge": ("7. Merge: `hallurun merge` of a run over 16 shards (its own process; peak RSS from wait4)", [
        col("results", "merged_results", "{:,}"), col("failures", "merged_failures", "{:,}"),
        col("shards' results MB", "results_on_disk_mb", "{:,.0f}"), col("B/result", "answer_bytes_per_item", "{:.0f}"),
        col("merge s", "wall_s", "{:.1f}"), col("results/s", "results_per_s", "{:,.0f}"),
        Column("time × for items ×", lambda r: (r["time_ratio"], r["items_ratio"]) if "time_ratio" in r else None,
               "{0[0]:.1f} for {0[1]:.0f}"),
        col("peak RSS MB", "peak_rss_mb", "{:.0f}"), col("bare --version MB", "bare_rss_mb", "{:.0f}"),
        col("over bare B/item", "over_bare_bytes_per_item", "{:.0f}"),
        col("growth B/item", "growth_bytes_per_item", "{:.0f}"), col("verified", "verified"),
    ]),
    "sweep": ("8. Sweep: k models × 2 tasks, a model judge; one `hallurun sweep`, or inference + eval per run", [
        col("way", "way"), col("runs", "runs"), col("items / run", "limit"), col("processes", "processes"),
        col("wall s", "wall_s", "{:.1f}"), col("× sweep", "x_sweep", "{:.2f}"),
        col("model launches", "model_launches"), col("judge launches", "judge_launches"),
        col("judge stages", "judge_stages"), col("server starts s", "start_total_s", "{:.1f}"),
        col("answering s", "answering_s", "{:.1f}"), col("judging s", "judging_s", "{:.1f}"),
        col("report s", "report_s", "{:.1f}"), col("same metrics", "same_metrics"),
        col("as scripted", "as_scripted"), col("met", "met"),
    ]),
}
# Tables drawn from one section's rows, by their `part`: table name -> (section, part).
PARTS = {"scale_run": ("scale", "long run"), "scale_resume": ("scale", "resume"),
         "replicas_scaling": ("replicas", "scaling"), "replicas_wedge": ("replicas", "wedge"),
         "replicas_bursts": ("replicas", "bursts"), "replicas_engine": ("replicas", "engine"),
         "replicas_judge": ("replicas", "judge")}


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
        if name in PARTS:
            section, part = PARTS[name]
            rows = [r for r in sections.get(section, []) if r["part"] == part]
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
