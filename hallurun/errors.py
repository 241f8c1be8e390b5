"""The one exception family: every error hallurun raises on purpose is a `HallurunError`, and carries the exit
code the command line ends with. The CLI catches only this family; anything else is a bug and says so.

    HallurunError                 exit_code
      UsageError                  2    bad usage or bad input, found before any work starts
        ConfigError, TaskError, DatasetError (DatasetChanged), ManifestError, LockError, StageError, EvalError, ...
      ServerError                 3    the server could not be started, kept up or restarted
        ServerStartError (PortInUse, ServerRefusesRun), RestartBudgetExhausted
      RunDirWriteError            74   the run directory cannot be written (disk full, quota, I/O error)
      RunDirBusy                  75   the run directory is in use by another live hallurun (try again later)
      RunStopped                  its own: a run (or a judge stage) ended before it finished

`EXIT_TABLE` is the table a scheduler acts on (`hallurun exit-codes`; docs/scaling.md): which codes mean "retry
this shard, elsewhere or later" and which mean "do not retry". The examples under examples/ are tested against it.

The subclasses live beside the code that raises them; this module holds the bases and the codes. The wire's
`RequestError` and `ServerDown` are not in the family: they are how one request tells the scheduler what went
wrong, recorded with the item or handled by the monitor, and one that escaped a run would be a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1  # done, but some items failed (each recorded with its reason)
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_BUG = 70  # an unexpected exception: a bug in hallurun (BSD's EX_SOFTWARE)
EXIT_IO = 74  # the run directory cannot be written (BSD's EX_IOERR)
EXIT_BUSY = 75  # the run directory is held by another live hallurun (BSD's EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the run resumes where it stopped
EXIT_KILLED = 137  # not hallurun's own: what a shell or a scheduler reports for a SIGKILL (the OOM killer)


@dataclass(frozen=True)
class ExitCode:
    """One exit code, as a scheduler should read it: `retry` says whether running the same command again
    (elsewhere, or later) can succeed; `ours` is False for a code hallurun never sets itself."""

    code: int
    name: str
    retry: bool
    meaning: str
    ours: bool = True


EXIT_TABLE: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "done", False, "every item has an answer"),
    ExitCode(EXIT_FAILED_ITEMS, "done-with-failures", False,
             "every item settled, some failed for good (each recorded with its reason); a finished shard, which "
             "`hallurun merge` takes; `hallurun resume --retry-failed` asks them again"),
    ExitCode(EXIT_USAGE, "bad-input", False,
             "bad usage or bad input (an option, a dataset line, a manifest, a shard of another run): found before "
             "any work started; the same command fails the same way anywhere"),
    ExitCode(EXIT_SERVER, "server-trouble", True,
             "the server could not be started, kept up or restarted (the GPU, the driver, the node): retry on "
             "another node; the shard resumes where it stopped"),
    ExitCode(EXIT_BUG, "bug", False, "an unexpected exception, a bug in hallurun: report it with its traceback"),
    ExitCode(EXIT_IO, "io-error", True,
             "the run directory cannot be written (disk full, quota, a mount gone): retry once the storage is "
             "back, or elsewhere; nothing already written is lost"),
    ExitCode(EXIT_BUSY, "busy", True,
             "the run directory is held by another live hallurun (an earlier attempt still running, or its lock "
             "not yet released by the filesystem): retry later"),
    ExitCode(EXIT_INTERRUPTED, "interrupted", True,
             "SIGINT or SIGTERM (a pre-emption, a cancelled job): the shard resumes where it stopped"),
    ExitCode(EXIT_KILLED, "killed", True,
             "SIGKILL (the OOM killer, a scheduler's hard kill): reported by the shell or the scheduler, not set "
             "by hallurun; nothing written is lost and the shard resumes", ours=False),
)


def retry_codes() -> tuple[int, ...]:
    """The exit codes after which the same command, run again, can succeed."""
    return tuple(c.code for c in EXIT_TABLE if c.retry)


def final_codes() -> tuple[int, ...]:
    """The exit codes after which running the same command again cannot help."""
    return tuple(c.code for c in EXIT_TABLE if not c.retry)


class HallurunError(Exception):
    """An error hallurun raises on purpose: a one-line message, and the exit code a command ends with."""

    exit_code: int = EXIT_USAGE


class UsageError(HallurunError):
    """Bad usage or bad input: a one-line message naming the file, line and field (or the option); exit code 2."""

    exit_code = EXIT_USAGE


class ServerError(HallurunError):
    """The inference server could not be started, kept answering, or restarted; exit code 3."""

    exit_code = EXIT_SERVER


class RunStopped(HallurunError):
    """A run ended before every item settled (server trouble, an interrupt, a run folder that cannot be written,
    a dataset changed under it). Its `exit_code` says which; the run continues with `hallurun resume`."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
