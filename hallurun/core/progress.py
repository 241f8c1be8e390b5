"""What the user sees while a run goes: a live rich display on a terminal, plain log lines otherwise,
and a summary table at the end."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hallurun.core.counters import ReplicaStats, RunStats

LOG_INTERVAL = 10.0  # seconds between plain progress lines when stdout is not a terminal


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _window(replica: ReplicaStats) -> str:
    return "--" if replica.window is None else f"{replica.window:.1f}s"


def replica_line(replica: ReplicaStats) -> str:
    """One replica of a pool: its state, its load, its engine's speed, its restarts, its wedge window."""
    speed = replica.metrics.tokens_per_s
    return (f"replica {replica.index}: {replica.state} · in flight {replica.in_flight} · "
            + (f"{speed:.0f} tok/s · " if speed is not None else "")
            + f"restarts {replica.restarts} · window {_window(replica)}")


def progress_line(stats: RunStats) -> str:
    """One plain line with every counter, for logs (and a part per replica for a pool)."""
    line = (f"progress {stats.settled}/{stats.total} done={stats.done} failed={stats.failed} "
            f"in_flight={stats.in_flight} rate={stats.rate():.1f}/s eta={_duration(stats.eta())} "
            f"retries={stats.retries} resent={stats.resent} restarts={stats.restarts} server={stats.server_state}"
            + (f" engine: {stats.metrics.describe()}" if stats.metrics.sampled_at is not None else ""))
    if len(stats.replicas) > 1:
        line += "".join(f" | {replica_line(r)}" for r in stats.replicas)
    return line


def _render(stats: RunStats) -> Group:
    top = Table.grid(padding=(0, 2))
    top.add_row(ProgressBar(total=max(stats.total, 1), completed=stats.settled, width=40),
                Text(f"{stats.settled}/{stats.total}", style="bold"), f"{stats.rate():.1f} items/s",
                f"ETA {_duration(stats.eta())}")
    counters = Table.grid(padding=(0, 2))
    counters.add_row(f"in flight {stats.in_flight}", f"[green]done {stats.done}", f"[red]failed {stats.failed}",
                     f"retries {stats.retries}", f"resent {stats.resent}", f"[yellow]restarts {stats.restarts}",
                     f"quarantined {stats.quarantined}", f"server {stats.server_state}",
                     f"window {_window(stats.replicas[0])}" if len(stats.replicas) == 1 else "")
    if len(stats.replicas) > 1:
        return Group(top, counters, *(Text(replica_line(r), style="dim") for r in stats.replicas))
    engine = stats.metrics.describe()
    return Group(top, counters, Text(f"engine: {engine}", style="dim")) if engine else Group(top, counters)


async def live(stats: RunStats, console: Console) -> None:
    """Render progress until cancelled."""
    if console.is_terminal:
        from rich.live import Live

        # Refreshed from the event loop, not by rich's refresh thread: a second thread waking four times a second
        # to take the GIL competes with the loop that feeds the server, on a machine the server keeps busy.
        with Live(_render(stats), console=console, auto_refresh=False, transient=True) as live:
            while True:
                await asyncio.sleep(0.25)  # the display's own refresh clock
                live.update(_render(stats), refresh=True)
    else:
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            if time.monotonic() - last >= LOG_INTERVAL:
                last = time.monotonic()
                console.print(progress_line(stats), highlight=False)


def summary_table(stats: RunStats, title: str) -> Table:
    """The final table: what happened in this session of the run."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    elapsed = time.monotonic() - stats.started
    rows = [
        ("items", stats.total), ("done", stats.done), ("failed", stats.failed),
        ("done before this session", stats.done_at_start), ("retries", stats.retries),
        ("resent on a new connection", stats.resent),
        ("wedges", stats.wedges), ("crashes", stats.crashes), ("restarts", stats.restarts),
        ("quarantined", stats.quarantined), ("elapsed", _duration(elapsed)), ("rate", f"{stats.rate():.1f}/s"),
    ]
    if len(stats.replicas) > 1:
        rows += [(f"replica {r.index}", f"{r.state}, {r.restarts} restart(s), {r.wedges} wedge(s)")
                 for r in stats.replicas]
    for name, value in rows:
        table.add_row(name, str(value))
    return table
