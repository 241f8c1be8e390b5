"""How a run ended: one frozen value, and the exit code the command line ends with for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hallurun.errors import EXIT_FAILED_ITEMS, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, EXIT_SERVER, EXIT_USAGE

Status = Literal["complete", "failed_items", "interrupted", "server_failed", "server_refused", "run_dir_unwritable",
                 "dataset_changed"]

EXIT_CODES: dict[Status, int] = {
    "complete": EXIT_OK,  # every item done
    "failed_items": EXIT_FAILED_ITEMS,  # every item settled, some failed (failures.jsonl)
    "interrupted": EXIT_INTERRUPTED,  # cancelled (Ctrl-C, SIGTERM); resumable
    "server_failed": EXIT_SERVER,  # the server could not be started or restarted, or the restart budget ran out
    "server_refused": EXIT_USAGE,  # at its first start the server refused the user's --port or --max-tokens
    "run_dir_unwritable": EXIT_IO,  # disk full, quota, file size limit: every line already written is whole
    "dataset_changed": EXIT_USAGE,  # the dataset file changed under the run; the items read before are kept
}


@dataclass(frozen=True)
class RunResult:
    """How one session of a run ended. Every status but `complete` and `failed_items` resumes where it stopped
    (`hallurun resume RUN_DIR`, or `hallurun.resume(run_dir)`).

    `done` and `failed` count the whole run's settled items (earlier sessions included); `restarts` counts this
    session's server restarts; `message` says why a run stopped (empty when it did not)."""

    run_dir: Path
    status: Status
    total: int
    done: int
    failed: int
    restarts: int = 0
    message: str = ""

    @property
    def exit_code(self) -> int:
        """The command line's exit code for this ending (0, 1, 2, 3, 74 or 130)."""
        return EXIT_CODES[self.status]

    @property
    def ok(self) -> bool:
        """Whether every item is settled (some may have failed: see `failed`)."""
        return self.status in ("complete", "failed_items")
