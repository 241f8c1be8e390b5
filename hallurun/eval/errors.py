"""The errors of `hallurun eval` and `hallurun compare`."""

from __future__ import annotations

from hallurun.errors import RunStopped, UsageError


class EvalError(UsageError):
    """Bad or mismatched input: a one-line message, exit code 2."""


class EvalStopped(RunStopped):
    """A judge stage stopped before finishing (server failure: 3, interrupted: 130)."""

    @property
    def code(self) -> int:
        return self.exit_code
