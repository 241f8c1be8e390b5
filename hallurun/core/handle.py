"""What the owner of a run's process may do to the run from outside its task.

A run is a coroutine, stopped gracefully by cancelling its task. Whoever owns the process (the command line)
also needs a last resort that does not wait for that stop, and to know what the run is doing when a signal comes:
this handle gives exactly that, and the run's result once it has ended, without reaching into the run.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from hallurun.store.durable import RunDirWriteError

if TYPE_CHECKING:
    from hallurun.core.command import Lender
    from hallurun.core.result import RunResult
    from hallurun.server.supervisor import Supervisor
    from hallurun.store.checkpoint import Checkpoint


class RunHandle:
    """Passed to `run_async` (or `resume_async`), which fills it in as the run goes: one handle per run. Use it
    from the run's own event loop thread (a signal handler installed with `loop.add_signal_handler` runs there)."""

    def __init__(self, *, servers: Lender | None = None) -> None:
        self.servers = servers  # servers the owner lends the run (a command's stages share one launch); None: its own
        self._inner: RunHandle | None = None  # the stage a command's handle follows now
        self._supervisors: list[Supervisor] = []
        self._checkpoint: Checkpoint | None = None
        self._stopping = False
        self._result: RunResult | None = None

    @property
    def stopping(self) -> bool:
        """Whether the run's work is over (its items settled, or the run has failed or been interrupted) and it is
        stopping the server and writing its last files: a cancellation now leaves the ending as it is."""
        return self._stopping if self._inner is None else self._inner.stopping

    @property
    def result(self) -> RunResult | None:
        """How the run ended, once it has, including when its task was cancelled (the cancellation is raised
        to the awaiting caller, so this is where an interrupted run's result is read). None until then, and
        when the run was cancelled before it began (nothing was done)."""
        return self._result

    def kill_servers_now(self) -> None:
        """Kill every server tree of the run at once (SIGKILL), without waiting: the last resort of a second
        Ctrl-C. The run's own stop, if it is under way, then finds them gone."""
        for supervisor in self._supervisors:
            supervisor.kill_now()
        if self._inner is not None:
            self._inner.kill_servers_now()

    def flush(self, wait: float) -> bool:
        """Write and fsync the results not yet on disk, waiting at most `wait` seconds for a batch already being
        written (False if it gave up, or the disk refused: those items run again after a resume)."""
        if self._inner is not None:
            return self._inner.flush(wait)
        if self._checkpoint is None:
            return True
        with contextlib.suppress(RunDirWriteError):
            return self._checkpoint.flush(wait=wait)
        return False

    # -- filled in by the run --------------------------------------------------------------------------------

    def attach(self, *, supervisors: list[Supervisor] | None = None, checkpoint: Checkpoint | None = None) -> None:
        """The run's server supervisors (one per replica) and checkpoint, while they are live."""
        if supervisors is not None:
            self._supervisors = supervisors
        if checkpoint is not None:
            self._checkpoint = checkpoint

    def follow(self, inner: RunHandle | None) -> None:
        """A command of several runs: until further notice, reach the run of `inner` (None: no run now)."""
        self._inner = inner

    def detach_checkpoint(self) -> None:
        """The checkpoint is being closed (from a worker thread): no last-moment flush may touch it now."""
        self._checkpoint = None

    def begin_stopping(self) -> None:
        self._stopping = True

    def ended(self, result: RunResult) -> None:
        self._result = result
