"""A run's timeline, `timeline.png`: throughput over time above one lane per server replica.

What is drawn is computed by pure functions from the run's records (`sessions`, `lanes`, `marks`, `throughput`,
gathered by `build`), so that tests check the data, not pixels; `write` reads the run folder and draws it.

A lane follows its replica's events (each may carry `replica`; an older run's have none: replica 0):

- `server_started`: serving. Its `startup_s` before it, when the lane had no state in the session yet, was starting.
- `hang_detected`: the `quiet_s` seconds before it (`window_s` when `quiet_s` is missing) were wedged; restarting
  from then on.
- `server_exited` (a crash): restarting.
- `server_unreachable`: unreachable, until `server_back` (serving) or a restart.
- `server_restarted`: serving.
- `replica_retired`: retired until the session ends; later events of that replica in the session change nothing.
- `server_stopping` / `server_stopped` while serving or unreachable: the lane ends there, unless the replica starts
  again in the same session (then that was a restart). While wedged or restarting they are part of the restart.

A session begins at `run_started` / `run_resumed` and lasts to its last event (the last before the next one
begins). One that did not end with `run_finished`, `interrupted` or `run_aborted` (killed, or still running) lasts
at least until the last item it settled (`done_at` of results and failures), the last session until `end` too.
Between sessions hallurun was not running: no lane is drawn there, and every lane's state is forgotten (the next
session starts its servers again).

Lines that are not JSON objects, unknown events and fields of the wrong type are skipped; nothing here raises on a
run's records.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from hallurun.store.checkpoint import FAILURES, RESULTS, read_records
from hallurun.store.events import EVENTS

TIMELINE = "timeline.png"

SESSION_STARTS = frozenset({"run_started", "run_resumed"})
SESSION_ENDS = {"run_finished": "finished", "interrupted": "interrupted", "run_aborted": "aborted"}

# Lane states, in legend order, with their colours.
STATES = {
    "serving": "#2e8b57",
    "starting": "#a6cee3",
    "wedged": "#d62728",
    "restarting": "#ff9f1c",
    "unreachable": "#9467bd",
    "retired": "#7f7f7f",
}
_STOPPED = "_stopped"  # internal: the server was stopped; a start in the same session makes that a restart

# Marks drawn on a lane: (matplotlib marker, colour, legend label).
MARK_STYLES = {
    "wedge": ("v", "#8b0000", "wedge detected"),
    "crash": ("X", "#000000", "crash (server exited)"),
    "quarantine": ("D", "#6a0dad", "item quarantined"),
}


@dataclass(frozen=True)
class Span:
    """One stretch of a lane in one state, [start, end] in epoch seconds."""

    start: float
    end: float
    state: str


@dataclass(frozen=True)
class Mark:
    """A point event on a lane: a wedge, a crash or a quarantined item (`detail`: the item's id)."""

    t: float
    kind: str
    replica: int
    detail: str | None = None


@dataclass(frozen=True)
class Session:
    """One hallurun process's time on the run; `how` it ended: finished, interrupted, aborted, or open."""

    start: float
    end: float
    how: str


@dataclass(frozen=True)
class Throughput:
    """Items settled (results and failures) per bin of `bin_s` seconds; bin i covers [starts[i], starts[i] + bin_s),
    the last one only up to `end`."""

    bin_s: float
    starts: list[float]
    done: list[int]
    failed: list[int]
    end: float

    @property
    def widths(self) -> list[float]:
        """Each bin's seconds: `bin_s`, the last one cut at `end`."""
        return [max(1e-9, min(self.bin_s, self.end - start)) for start in self.starts]

    @property
    def per_minute(self) -> list[float]:
        """Items settled per minute in each bin, done and failed together (a cut last bin by its own width)."""
        return [(d + f) * 60.0 / w for d, f, w in zip(self.done, self.failed, self.widths, strict=True)]


@dataclass(frozen=True)
class Timeline:
    """Everything the figure shows. `throughput` is None when no settled item carries `done_at` (an older run);
    `undated` counts those without it."""

    start: float
    end: float
    sessions: list[Session]
    lanes: dict[int, list[Span]]
    marks: list[Mark]
    throughput: Throughput | None
    undated: int = 0
    counts: dict[str, int] = field(default_factory=dict)


# --- reading the records ------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float from a JSON number, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _time(event: Mapping[str, Any]) -> float | None:
    """An event's epoch seconds: `t`, else its ISO `time`."""
    t = _number(event.get("t"))
    if t is not None:
        return t
    text = event.get("time")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            stamp = datetime.fromisoformat(text)
            return stamp.timestamp() if stamp.tzinfo else None
    return None


def _replica(event: Mapping[str, Any]) -> int:
    value = event.get("replica")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _clean(events: Iterable[Any]) -> list[tuple[float, dict[str, Any]]]:
    """The events that are JSON objects with a name and a time, in file order, each with its time made
    non-decreasing (a wall clock stepped back must not make a span end before it begins)."""
    out: list[tuple[float, dict[str, Any]]] = []
    last = -math.inf
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            continue
        t = _time(event)
        if t is None:
            continue
        last = max(last, t)
        out.append((last, event))
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; torn lines and lines that are not objects are skipped."""
    try:
        return [r for r in read_records(path) if isinstance(r, dict)]
    except OSError:
        return []


# --- the pure computation -----------------------------------------------------------------------------------------


def _split(events: Iterable[Any], end: float | None,
           settled: Iterable[float] = ()) -> list[tuple[Session, list[tuple[float, dict[str, Any]]]]]:
    """The sessions with their events. Events before the first start open a session of their own."""
    groups: list[list[tuple[float, dict[str, Any]]]] = []
    for t, event in _clean(events):
        if event["event"] in SESSION_STARTS or not groups:
            groups.append([])
        groups[-1].append((t, event))
    settled = sorted(settled)
    out = []
    for k, group in enumerate(groups):
        how = "open"
        for _, event in group:
            how = SESSION_ENDS.get(event["event"], how)
        start, stop = group[0][0], group[-1][0]
        if how == "open":
            # Killed without a word (or still running): it lasted at least until the last item it settled, and
            # the last session until `end`.
            last = k == len(groups) - 1
            upto = math.inf if last else groups[k + 1][0][0]
            stop = max([stop, *(t for t in settled if stop < t < upto)])
            if last and end is not None:
                stop = max(stop, end)
        out.append((Session(start, stop, how), group))
    return out


def sessions(events: Iterable[Any], end: float | None = None, *, settled: Iterable[float] = ()) -> list[Session]:
    """The run's sessions, in order; between two of them hallurun was not running. A session that did not end
    with an ending event lasts until the last of `settled` (items' `done_at`) before the next session, the last
    one until `end` if that is later."""
    return [s for s, _ in _split(events, end, settled)]


class _Lane:
    """One replica's state within a session, closing spans as it changes."""

    def __init__(self, spans: list[Span], session_start: float) -> None:
        self.spans = spans
        self.floor = session_start
        self.state: str | None = None
        self.since = session_start
        self.seen = False  # whether the lane had any state in this session

    def close(self, t: float) -> None:
        if self.state is not None and self.state != _STOPPED and t > self.since:
            last = self.spans[-1] if self.spans else None
            if last is not None and last.state == self.state and last.end == self.since:
                self.spans[-1] = Span(last.start, t, self.state)  # the same state again: one span
            else:
                self.spans.append(Span(self.since, t, self.state))

    def to(self, state: str | None, t: float) -> None:
        t = max(t, self.since)
        if state == self.state:
            return
        self.close(t)
        self.state, self.since = state, t
        self.seen = self.seen or state is not None


def _step(lane: _Lane, name: str, t: float, event: Mapping[str, Any]) -> None:
    """Apply one server event to its replica's lane."""
    if lane.state == "retired":
        return
    if name == "server_started":
        if lane.state == _STOPPED:
            lane.state = "restarting"  # stopped, then started again: the stop was a restart's
        elif not lane.seen:
            startup = _number(event.get("startup_s")) or 0.0
            lane.to("starting", max(lane.floor, t - max(0.0, startup)))
        lane.to("serving", t)
    elif name in ("server_restarted", "server_back"):
        if lane.state == _STOPPED:
            lane.state = "restarting"
        lane.to("serving", t)
    elif name == "hang_detected":
        quiet = _number(event.get("quiet_s"))
        if quiet is None:
            quiet = _number(event.get("window_s")) or 0.0
        lane.to("wedged", max(lane.floor, t - max(0.0, quiet)))
        lane.to("restarting", t)
    elif name == "server_exited":
        lane.to("restarting", t)
    elif name == "server_unreachable":
        lane.to("unreachable", t)
    elif name == "replica_retired":
        lane.to("retired", t)
    elif name in ("server_stopping", "server_stopped") and lane.state in ("serving", "unreachable", "starting"):
        lane.to(_STOPPED, t)


_LANE_EVENTS = frozenset({"server_started", "server_restarted", "server_back", "hang_detected", "server_exited",
                          "server_unreachable", "replica_retired", "server_stopping", "server_stopped"})


def lanes(events: Iterable[Any], end: float | None = None, *,
          settled: Iterable[float] = ()) -> dict[int, list[Span]]:
    """Each replica's spans (see the module's docstring for the rules), in time order, by replica; a lane's last
    state in a session lasts until the session ends (`end` and `settled` as for `sessions`). A replica named only
    by events that draw nothing still gets a lane (empty)."""
    out: dict[int, list[Span]] = {}
    for session, group in _split(events, end, settled):
        state: dict[int, _Lane] = {}
        for t, event in group:
            name = event["event"]
            if name not in _LANE_EVENTS:
                continue
            replica = _replica(event)
            spans = out.setdefault(replica, [])
            lane = state.get(replica) or state.setdefault(replica, _Lane(spans, session.start))
            _step(lane, name, t, event)
        for lane in state.values():
            lane.to(None, session.end)
    return dict(sorted(out.items()))


def marks(events: Iterable[Any]) -> list[Mark]:
    """Wedges, crashes and quarantined items. A quarantine without `replica` belongs to the replica whose wedge
    convicted it: the last `hang_detected` before it (else replica 0)."""
    out = []
    last_wedged = 0
    for t, event in _clean(events):
        name = event["event"]
        if name == "hang_detected":
            last_wedged = _replica(event)
            out.append(Mark(t, "wedge", last_wedged))
        elif name == "server_exited":
            out.append(Mark(t, "crash", _replica(event)))
        elif name == "item_quarantined":
            replica = _replica(event) if "replica" in event else last_wedged
            item = event.get("id")
            out.append(Mark(t, "quarantine", replica, None if item is None else str(item)))
    return out


def bin_seconds(duration: float) -> float:
    """The throughput bin for a run this long: 1 s up to 2 minutes (a trial run), 10 s up to half an hour, a minute
    up to 12 hours, then 5 minutes."""
    if duration <= 120:
        return 1.0
    if duration <= 1800:
        return 10.0
    if duration <= 12 * 3600:
        return 60.0
    return 300.0


def done_times(records: Iterable[Any]) -> tuple[list[float], int]:
    """The `done_at` of each record that has one, and how many do not."""
    times, undated = [], 0
    for record in records:
        if not isinstance(record, dict):
            continue
        t = _number(record.get("done_at"))
        if t is None:
            undated += 1
        else:
            times.append(t)
    return times, undated


def throughput(done_at: Iterable[float], start: float, end: float, failed_at: Iterable[float] = (),
               bin_s: float | None = None) -> Throughput:
    """Settled items counted in bins from `start` (default width: `bin_seconds` of the span). A time outside
    [start, end] counts in the first or last bin."""
    width = bin_s or bin_seconds(max(0.0, end - start))
    count = max(1, math.ceil((end - start) / width))
    starts = [start + i * width for i in range(count)]

    def histogram(times: Iterable[float]) -> list[int]:
        bins = [0] * count
        for t in times:
            bins[min(count - 1, max(0, int((t - start) // width)))] += 1
        return bins

    return Throughput(width, starts, histogram(done_at), histogram(failed_at), max(end, start + width * (count - 1)))


def build(events: Iterable[Any], results: Iterable[Any] = (), failures: Iterable[Any] = (),
          end: float | None = None) -> Timeline | None:
    """What the figure shows, from the run's records; None when there is no event to place it in time."""
    events, results, failures = list(events), list(results), list(failures)
    clean = _clean(events)
    if not clean:
        return None
    done_ids = {str(r["id"]) for r in results if isinstance(r, dict) and "id" in r}
    failed_ids = {str(r["id"]) for r in failures if isinstance(r, dict) and "id" in r} - done_ids
    done, undated_done = done_times(results)
    failed, undated_failed = done_times(failures)
    # A done_at before the run's first event is not this run's (a clock gone wrong): left out, not stretched to.
    first = clean[0][0]
    done = [t for t in done if t >= first]
    failed = [t for t in failed if t >= first]
    settled = [*done, *failed]
    parts = sessions(events, end, settled=settled)
    start = parts[0].start
    stop = max([parts[-1].end, *settled])
    if stop <= start:
        stop = start + 1.0
    flow = throughput(done, start, stop, failed) if settled else None
    names = [e["event"] for _, e in clean]
    counts = {"sessions": len(parts), "wedges": names.count("hang_detected"), "crashes": names.count("server_exited"),
              "restarts": names.count("server_restarted"), "quarantined": names.count("item_quarantined"),
              "done": len(done_ids), "failed": len(failed_ids)}
    return Timeline(start, stop, parts, lanes(events, end, settled=settled), marks(events), flow,
                    undated_done + undated_failed, counts)


# --- the time axis ------------------------------------------------------------------------------------------------

_TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def ticks(start: float, end: float, most: int = 9) -> list[tuple[float, str]]:
    """Tick positions (epoch seconds) at round local clock times, at most `most` of them, labelled HH:MM (HH:MM:SS
    when they are less than a minute apart)."""
    span = max(1.0, end - start)
    step = next((s for s in _TICK_STEPS if span / s <= most - 1), _TICK_STEPS[-1])
    offset = datetime.fromtimestamp(start).astimezone().utcoffset()
    shift = offset.total_seconds() if offset is not None else 0.0
    first = math.ceil((start + shift) / step) * step - shift
    fmt = "%H:%M:%S" if step < 60 else "%H:%M"
    out = []
    t = first
    while t <= end + 1e-6:
        out.append((t, datetime.fromtimestamp(t).strftime(fmt)))
        t += step
    return out


def _clock_note(start: float, end: float) -> str:
    first, last = datetime.fromtimestamp(start).astimezone(), datetime.fromtimestamp(end).astimezone()
    days = first.strftime("%Y-%m-%d") + ("" if first.date() == last.date() else " → " + last.strftime("%Y-%m-%d"))
    return f"local time ({days}, {first.tzname() or first.strftime('UTC%z')})"


# --- drawing ------------------------------------------------------------------------------------------------------


def _title(run_dir: Path, timeline: Timeline) -> str:
    what = ""
    with contextlib.suppress(OSError, orjson.JSONDecodeError, AttributeError, TypeError):
        config = orjson.loads((run_dir / "manifest.json").read_bytes()).get("config", {})
        what = f"{config.get('task', '?')} on {config.get('model', '?')} · "
    c = timeline.counts
    plural = "" if c["sessions"] == 1 else "s"
    return (f"{run_dir.name} — timeline\n{what}{c['sessions']} session{plural} · {c['done']} done, "
            f"{c['failed']} failed · {c['wedges']} wedges, {c['crashes']} crashes, {c['restarts']} restarts, "
            f"{c['quarantined']} quarantined")


def write(run_dir: Path) -> Path | None:
    """Draw `run_dir/timeline.png` from the run's records and return its path; None (and no file) when the run has
    no event yet or matplotlib is not installed. The file is replaced whole: a reader never sees half of it."""
    run_dir = Path(run_dir)
    timeline = build(read_jsonl(run_dir / EVENTS), read_jsonl(run_dir / RESULTS), read_jsonl(run_dir / FAILURES))
    if timeline is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        return None

    replicas = list(timeline.lanes) or [0]
    n = len(replicas)
    lane_h = 0.42 * max(n, 2)
    flow_h = 2.3 if timeline.throughput is not None else 0.7  # without throughput, only a line saying why
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(12, flow_h + lane_h + 1.4), dpi=100,
                                      gridspec_kw={"height_ratios": [flow_h, lane_h]})
    pad = (timeline.end - timeline.start) * 0.01
    bottom.set_xlim(timeline.start - pad, timeline.end + pad)

    # Throughput.
    flow = timeline.throughput
    if flow is None:
        top.text(0.5, 0.5, "no throughput panel: these results carry no done_at "
                 "(written before hallurun recorded when each item settled)",
                 transform=top.transAxes, ha="center", va="center", fontsize=9, color="#555555")
        top.set_yticks([])
    else:
        widths = flow.widths
        done = [d * 60.0 / w for d, w in zip(flow.done, widths, strict=True)]
        failed = [f * 60.0 / w for f, w in zip(flow.failed, widths, strict=True)]
        top.bar(flow.starts, done, width=widths, align="edge", color="#4c72b0", linewidth=0, label="done")
        if any(failed):
            top.bar(flow.starts, failed, width=widths, align="edge", bottom=done, color="#dd8452",
                    linewidth=0, label="failed")
            top.legend(loc="upper right", fontsize=8, frameon=False)
        bin_label = f"{int(flow.bin_s)} s" if flow.bin_s < 60 else f"{int(flow.bin_s // 60)} min"
        top.set_ylabel(f"items settled / min\n({bin_label} bins)", fontsize=8)
        if timeline.undated:
            top.text(0.01, 0.95, f"{timeline.undated} settled items without done_at are not counted",
                     transform=top.transAxes, ha="left", va="top", fontsize=7, color="#555555")
    top.grid(axis="y", alpha=0.3)

    # Lanes.
    row = {r: i for i, r in enumerate(replicas)}
    height = 0.6
    present = set()
    # A 30 s wedge in a night's run is narrower than a pixel: trouble is drawn at least this wide.
    least = (timeline.end - timeline.start) * 0.002
    for replica, spans in timeline.lanes.items():
        by_state: dict[str, list[tuple[float, float]]] = {}
        for span in spans:
            width = span.end - span.start if span.state in ("serving", "retired") else max(least, span.end - span.start)
            by_state.setdefault(span.state, []).append((span.start, width))
        for state, bars in by_state.items():
            present.add(state)
            bottom.broken_barh(bars, (row[replica] - height / 2, height), facecolors=STATES.get(state, "#cccccc"))
    marked = set()
    quarantines = [m for m in timeline.marks if m.kind == "quarantine"]
    for mark in timeline.marks:
        marker, colour, _ = MARK_STYLES[mark.kind]
        # Wedges and crashes just above their lane; a quarantine on it (it follows a wedge at the same moment).
        quarantine = mark.kind == "quarantine"
        y = row.get(mark.replica, 0) - (0 if quarantine else height / 2 + 0.08)
        bottom.plot([mark.t], [y], marker=marker, color=colour, markersize=5 if quarantine else 7,
                    markeredgecolor="white" if quarantine else colour, linestyle="none", clip_on=False, zorder=5)
        marked.add(mark.kind)
        if mark.kind == "quarantine" and mark.detail and len(quarantines) <= 12:
            bottom.annotate(mark.detail, (mark.t, y), xytext=(3, -2), textcoords="offset points", fontsize=6,
                            color=colour, va="top")
    bottom.set_yticks(range(n), [f"replica {r}" for r in replicas] if n > 1 else ["server"], fontsize=8)
    bottom.set_ylim(n - 0.5, -0.5 - 0.35)  # replica 0 on top; room for the marks above it
    if not timeline.lanes:
        bottom.text(0.5, 0.5, "no server event in this run", transform=bottom.transAxes, ha="center", va="center",
                    fontsize=9, color="#555555")

    # Gaps between sessions: hallurun was not running.
    gap_drawn = False
    for before, after in zip(timeline.sessions, timeline.sessions[1:], strict=False):
        if after.start > before.end:
            for ax in (top, bottom):
                ax.axvspan(before.end, after.start, facecolor="#eeeeee", edgecolor="#bbbbbb", hatch="//",
                           linewidth=0, zorder=0)
            gap_drawn = True

    positions = ticks(timeline.start - pad, timeline.end + pad)
    bottom.set_xticks([p for p, _ in positions], [label for _, label in positions], fontsize=8)
    bottom.set_xlabel(_clock_note(timeline.start, timeline.end), fontsize=8)
    bottom.grid(axis="x", alpha=0.3)
    top.grid(axis="x", alpha=0.3)

    handles = [Patch(facecolor=c, label=s) for s, c in STATES.items() if s in present or s == "serving"]
    handles += [Line2D([], [], marker=m, color=c, linestyle="none", label=label)
                for kind, (m, c, label) in MARK_STYLES.items() if kind in marked]
    if gap_drawn:
        handles.append(Patch(facecolor="#eeeeee", edgecolor="#bbbbbb", hatch="//", label="hallurun not running"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(_title(run_dir, timeline), fontsize=10)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))

    path = run_dir / TIMELINE
    tmp = run_dir / f".{TIMELINE}.{os.getpid()}.tmp"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
