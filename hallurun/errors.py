"""The one exception family: every error hallurun raises on purpose is a `HallurunError`, and carries the exit
code the command line ends with. The CLI catches only this family; anything else is a bug and says so.

    HallurunError                 exit_code
      UsageError                  2    bad usage or bad input, found before any work starts
        ConfigError, TaskError, DatasetError (DatasetChanged), ManifestError, LockError, StageError, EvalError, ...
      ServerError                 3    the server could not be started, kept up or restarted
        ServerStartError (PortInUse, ServerRefusesRun), RestartBudgetExhausted
      RunDirWriteError            74   the run directory cannot be written (disk full, quota, I/O error)
      RunStopped                  its own: a run (or a judge stage) ended before it finished

The subclasses live beside the code that raises them; this module holds the bases and the codes. The wire's
`RequestError` and `ServerDown` are not in the family: they are how one request tells the scheduler what went
wrong, recorded with the item or handled by the monitor, and one that escaped a run would be a bug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1  # done, but some items failed (each recorded with its reason)
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_BUG = 70  # an unexpected exception: a bug in hallurun (BSD's EX_SOFTWARE)
EXIT_IO = 74  # the run directory cannot be written (BSD's EX_IOERR)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the run resumes where it stopped


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
