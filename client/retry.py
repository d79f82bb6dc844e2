"""Retries of the registry's requests: exponential backoff with full jitter (tenacity drives the
attempts), Retry-After honoured, and one clear error once the budget is spent.

What is retried:

- idempotent requests (GET, HEAD, PUT, DELETE, and the POSTs the registry makes idempotent:
  create a task, create or register a trajectory, commit a row) after a transport error (refused
  or dropped connection, a body cut short, a timeout) or a 429, 502, 503 or 504 answer;
- any other request (ordering a basis, creating a token) only when it never left this machine:
  the connection could not be opened. Sending it again could do the work twice.

The wait before retry n (1, 2, ...) is uniform in [0, min(max_backoff, backoff * 2^(n-1))]:
"full jitter" (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015), which
spreads the clients that failed together. A Retry-After answer is waited in full, with the
jittered wait on top: the clients one busy registry turned away do not all come back at once.
A request gives up after `attempts` tries, or when the next wait would end past `deadline`
seconds from its first try. A download that received new verified bytes since its last failure
starts a fresh budget: a long transfer over a link that drops now and then keeps going.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import httpx
import tenacity

from storage.errors import TinysubError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Failures after which the request may have been received: retried only when idempotent.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Failures before any byte of the request left: safe to retry for every method.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RetriesExhausted(TinysubError, httpx.TransportError):
    """A request failed on every try its RetryPolicy allowed.

    An ``httpx.TransportError`` (as the network error it replaces was) and a ``TinysubError``.
    ``last`` is the final failure (also ``__cause__``), ``attempts`` the tries made and
    ``elapsed`` the seconds from the first try to giving up.
    """

    code = "retries_exhausted"

    def __init__(self, message: str, *, attempts: int, elapsed: float, last: BaseException):
        super().__init__(message)
        self.attempts = attempts
        self.elapsed = elapsed
        self.last = last

    def add_hint(self, hint: str) -> RetriesExhausted:
        """Append how to resume (the caller knows what was already done)."""
        self.message = f"{self.message}; {hint}"
        self.args = (self.message,)
        return self


def retryable(exc: BaseException, *, idempotent: bool, statuses: frozenset[int]) -> bool:
    """Whether a failed request may be sent again."""
    if isinstance(exc, _NEVER_SENT):
        return True
    if not idempotent:
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, TinysubError) and getattr(exc, "status_code", None) in statuses


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a failed request.

    Parameters
    ----------
    attempts:
        Tries per request, the first included (1: no retries). A download counts the tries
        since it last received new bytes.
    backoff:
        Seconds: the first retry waits uniformly up to this, each next one up to twice as long.
    max_backoff:
        Seconds: the cap of one backoff window (Retry-After may ask for longer).
    deadline:
        Seconds from a request's first try (a download's last progress) after which no retry
        starts.
    statuses:
        HTTP statuses that are retried (their Retry-After is honoured).
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    deadline: float = 120.0
    statuses: frozenset[int] = RETRY_STATUSES
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 (1 means no retries), not {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0 or self.deadline < 0:
            raise ValueError("backoff, max_backoff and deadline are seconds >= 0")

    @classmethod
    def of(cls, retries: int | RetryPolicy | None) -> RetryPolicy:
        """A policy from `Client(retries=...)`: a policy, a number of retries, or None (none)."""
        if isinstance(retries, RetryPolicy):
            return retries
        if retries is None:
            return cls(attempts=1)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries is a RetryPolicy or a count >= 0, not {retries!r}")
        return cls(attempts=retries + 1)

    def with_attempts(self, attempts: int) -> RetryPolicy:
        return replace(self, attempts=attempts)

    def window(self, failures: int) -> float:
        """The upper bound of the jittered wait after `failures` failures in a row (>= 1)."""
        return min(self.max_backoff, self.backoff * 2.0 ** (failures - 1))

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        idempotent: bool = True,
        progress: Callable[[], int] | None = None,
        hint: Callable[[], str] | str | None = None,
    ) -> T:
        """fn() until it returns, retrying what `retryable` allows; RetriesExhausted at the end.

        `what` names the request in logs and errors ("GET /v1/..."). `progress()`, when given,
        counts the units done (bytes received): a failure after progress resets the budget.
        `hint` says how to resume once the budget is spent.
        """
        run = _Run(self, what, progress)
        retrying = tenacity.Retrying(
            sleep=self.sleep,
            retry=tenacity.retry_if_exception(
                lambda exc: retryable(exc, idempotent=idempotent, statuses=self.statuses)
            ),
            after=run.failed,
            wait=run.wait,
            stop=run.stop,
            before_sleep=run.log,
            retry_error_callback=lambda state: run.give_up(state, hint),
        )
        try:
            return retrying(fn)
        except Exception as exc:
            if not idempotent and retryable(exc, idempotent=True, statuses=self.statuses):
                exc.add_note(
                    f"{what} was not sent again: it may have reached the registry, and sending "
                    "it twice could do its work twice; check before repeating it"
                )
            raise


class _Run:
    """The budget of one `RetryPolicy.call`. tenacity calls, after each retryable failure:
    failed, then wait, then stop; then give_up or log and sleep."""

    def __init__(self, policy: RetryPolicy, what: str, progress: Callable[[], int] | None):
        self.policy, self.what, self.progress = policy, what, progress
        self.first = self.since = time.monotonic()
        self.mark = progress() if progress else 0
        self.failures = 0  # in a row, since the start or the last progress
        self.tries = 0
        self.asked: float | None = None  # the last Retry-After

    def failed(self, state: tenacity.RetryCallState) -> None:
        self.tries += 1
        if self.progress is not None and (done := self.progress()) > self.mark:
            self.mark, self.failures, self.since = done, 0, time.monotonic()
        self.failures += 1

    def wait(self, state: tenacity.RetryCallState) -> float:
        jittered = random.uniform(0.0, self.policy.window(self.failures))
        self.asked = getattr(_exception(state), "retry_after", None)
        return jittered if self.asked is None else self.asked + jittered

    def stop(self, state: tenacity.RetryCallState) -> bool:
        if self.failures >= self.policy.attempts:
            return True
        ends = time.monotonic() - self.since + (state.upcoming_sleep or 0.0)
        return ends > self.policy.deadline

    def log(self, state: tenacity.RetryCallState) -> None:
        log.warning(
            "%s failed (%s); retry %d of %d in %.2f s",
            self.what,
            _describe(_exception(state)),
            self.failures,
            self.policy.attempts - 1,
            state.upcoming_sleep,
        )

    def give_up(self, state: tenacity.RetryCallState, hint: Callable[[], str] | str | None):
        exc = _exception(state)
        if self.policy.attempts == 1:
            raise exc  # retries are off: the error as it came
        elapsed = time.monotonic() - self.first
        why = f"{self.what} failed {self.tries} times in {elapsed:.1f} s"
        if self.failures < self.policy.attempts:
            why += f" (the next try would start past the {self.policy.deadline:g} s deadline"
            if self.asked is not None:
                why += f": the registry asked to wait {self.asked:g} s"
            why += ")"
        error = RetriesExhausted(
            f"{why}; last error: {_describe(exc)}",
            attempts=self.tries,
            elapsed=elapsed,
            last=exc,
        )
        text = hint() if callable(hint) else hint
        error.add_hint(text or "the registry may be down or overloaded: try again later")
        raise error from exc


def _exception(state: tenacity.RetryCallState) -> BaseException:
    assert state.outcome is not None and state.outcome.failed
    return state.outcome.exception()


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc) or type(exc).__name__
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"
