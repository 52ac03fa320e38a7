"""When to retry a call, and after how long: pure decisions, no I/O, after gRFC A6.

Why each rule exists:

* At most 5 attempts (gRFC A6's cap): every retry multiplies load on a struggling service;
  the per-service :mod:`~mesh.resilience.budget` bounds the total on top of that.
* Only listed codes are retried (UNAVAILABLE by default: the request did not get a real
  answer). DEADLINE_EXCEEDED is deliberately not a default — the caller's time is gone.
* No attempt may start at or after the call's deadline: a retry that cannot finish in time
  only adds load and delays the error the caller will get anyway.
* Server pushback (``grpc-retry-pushback-ms``) wins over backoff: a value >= 0 is exactly
  the wait the server asks for; a negative or malformed value means "do not retry".
  (A6 also restarts backoff from ``initial`` after a pushback; a pure function of the
  attempt number cannot, and the difference only ever shortens the next wait.)
* Retrying a mutation is only safe when the method says so (``idempotency_level`` of
  IDEMPOTENT or NO_SIDE_EFFECTS) or the request carries an idempotency key the server
  deduplicates on; a method without the option is treated as a mutation.
* A response stream is retried only before its first message: after that the caller has
  acted on part of the answer, and a second attempt would repeat it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mesh.resilience.backoff import Backoff
from mesh.resilience.codes import code_names
from mesh.resilience.validate import require_int, require_positive

PUSHBACK_METADATA_KEY = "grpc-retry-pushback-ms"

MAX_ATTEMPTS_LIMIT = 5
IDEMPOTENT_LEVELS = frozenset({"IDEMPOTENT", "NO_SIDE_EFFECTS"})

_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class RetryPolicy:
    """How one call is retried; ``max_attempts`` counts the first attempt (1 = no retries)."""

    max_attempts: int = 3
    retryable_codes: frozenset[str] = frozenset({"UNAVAILABLE"})
    backoff: Backoff = field(default_factory=Backoff)
    per_attempt_timeout: float | None = None

    def __post_init__(self) -> None:
        require_int("max_attempts", self.max_attempts, 1, MAX_ATTEMPTS_LIMIT)
        object.__setattr__(self, "retryable_codes", code_names("retryable_codes", self.retryable_codes))
        if self.per_attempt_timeout is not None:
            require_positive("per_attempt_timeout", self.per_attempt_timeout)

    def retryable(self, code: str) -> bool:
        """Whether a call that ended with ``code`` may be retried at all."""
        return code in self.retryable_codes

    def next_delay(
        self,
        attempt: int,
        code: str,
        now: float,
        deadline: float | None = None,
        pushback: str | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when the call must not be retried.

        ``attempt`` is the 1-based number of the attempt that just ended with ``code``;
        ``now`` and ``deadline`` are monotonic seconds (deadline None: unbounded);
        ``pushback`` is the raw ``grpc-retry-pushback-ms`` trailer value, if the server sent one.
        None when the code is not retryable, the attempts are used up, the server pushed
        back with a negative or malformed value, or the next attempt would start at or
        after the deadline.
        """
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        if code not in self.retryable_codes or attempt >= self.max_attempts:
            return None
        if pushback is None:
            delay = self.backoff.delay(attempt - 1)
        else:
            pushed = pushback_seconds(pushback)
            if pushed is None:
                return None
            delay = pushed
        if deadline is not None and now + delay >= deadline:
            return None
        return delay

    def attempt_timeout(self, now: float, deadline: float | None) -> float | None:
        """The timeout for an attempt starting at ``now``: the per-attempt cap or what is left."""
        remaining = None if deadline is None else max(0.0, deadline - now)
        if self.per_attempt_timeout is None:
            return remaining
        if remaining is None:
            return self.per_attempt_timeout
        return min(self.per_attempt_timeout, remaining)


def pushback_seconds(value: str) -> float | None:
    """A ``grpc-retry-pushback-ms`` value in seconds; None means the server said "stop".

    Only a plain decimal integer is accepted (surrounding whitespace aside): gRFC A6 treats
    a negative or unparseable value as the server asking the client not to retry at all.
    """
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        return None
    milliseconds = int(text)
    return None if milliseconds < 0 else milliseconds / 1000.0


def idempotent_level(level_name: str) -> bool:
    """Whether a ``MethodOptions.IdempotencyLevel`` name marks the method safe to repeat."""
    return level_name in IDEMPOTENT_LEVELS


def stream_retryable(received_any: bool) -> bool:
    """Whether a streaming call may still be retried: only before any response message."""
    return not received_any
