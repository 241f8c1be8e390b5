"""What to do when a request goes wrong: the classification of failures and the retry policy.

Plain values and functions, no sockets, so the decisions can be tested on their own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from aiohttp import (
    ClientConnectionResetError,
    ClientConnectorError,
    ClientOSError,
    ConnectionTimeoutError,
    ServerDisconnectedError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)


class RequestError(Exception):
    """A request attempt failed. `retryable` says whether another attempt can help. It fails its item and never
    leaves the run, so it is no HallurunError: one that escaped would be a bug, and must say so (exit 70).
    """

    def __init__(self, reason: str, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class ServerDown(Exception):
    """The request could not reach the server (it refused the connection, or its process is gone): not the
    item's doing. The item waits for the server without spending an attempt; the monitor decides what to do."""


def classify_status(status: int, body: str, retry_after: str | None = None) -> RequestError:
    """Turn a non-200 HTTP answer into a RequestError.

    400/422 and other client errors are permanent (a prompt longer than the context will never fit);
    408, 429 and 5xx are worth another attempt, and 429 carries the server's own wait.
    """
    message = f"HTTP {status}: {body[:500]}"
    if status == 429:
        return RequestError("rate_limited", message, retryable=True, retry_after=parse_retry_after(retry_after))
    if status == 408 or status >= 500:
        return RequestError(f"http_{status}", message, retryable=True)
    return RequestError(f"http_{status}", message, retryable=False)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds; None if absent or an HTTP date we do not trust."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def is_stale_connection(exc: BaseException) -> bool:
    """Whether a failed send is a kept-alive connection the server closed as the request went out on it, which
    any HTTP client sends again at once on a new connection (RFC 9112 §9.3.1; aiohttp does it itself, but only for
    idempotent methods, and a completion is a POST).

    vLLM closes a connection left idle for 5 s, and under load its event loop can fire that timer after the next
    request has already arrived: up to 200 connections dropped at once, none of them the item's fault. Failing
    to connect at all is not this: that is a server down or not listening."""
    if isinstance(exc, ClientConnectorError):
        return False
    return isinstance(exc, ServerDisconnectedError | ClientOSError | ClientConnectionResetError)


def is_connect_failure(exc: BaseException) -> bool:
    """Whether a request failed before reaching any server: the connection was refused or not accepted in time.
    That is a server down or not listening (crashed, restarting, between two processes), never the request's
    fault, unlike a connection that breaks once the request is on it."""
    return isinstance(exc, ClientConnectorError | ConnectionTimeoutError)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RequestError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts, honouring a server's Retry-After."""

    max_attempts: int = 4
    initial_wait: float = 0.5
    max_wait: float = 30.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RequestError) and exc.retry_after is not None:
            # A little jitter so that many clients told the same Retry-After do not return in lockstep.
            return min(self.max_wait, exc.retry_after) + random.uniform(0, 0.1)
        return self._backoff(state)

    @cached_property
    def _backoff(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(multiplier=self.initial_wait, max=self.max_wait)

    def retrying(self, attempts_used: int, on_retry: Callable[[RetryCallState], None] | None = None) -> AsyncRetrying:
        """A tenacity loop for an item that has already spent `attempts_used` attempts."""
        return AsyncRetrying(
            stop=stop_after_attempt(max(1, self.max_attempts - attempts_used)),
            wait=self.wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=on_retry,
            reraise=True,
        )
