"""What a circuit breaker is told: thresholds, codes, and the two forms (window, consecutive).

Separate from the state machine so configuration (the policy file, tests) can build and
validate breaker settings without the machinery; defaults are resilience4j's, and the
code sets follow gRPC semantics: a server that is down, overloaded or broken fails the
call; a client that sent a bad request does not make the server unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.resilience.codes import code_names
from mesh.resilience.validate import FieldError, require_int, require_percent, require_positive

# What says the upstream is broken. DEADLINE_EXCEEDED counts only as the attempt engine
# reports it: an attempt's own timeout or the server's own, never the caller's deadline
# (docs/channel.md). RESOURCE_EXHAUSTED is not here: a throttle refusing one caller (the user
# service's login throttle, a quota) says nothing about the server, and counting it would let
# one customer open the circuit for everyone; a server that is overloaded answers UNAVAILABLE.
DEFAULT_FAILURE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN"})
DEFAULT_IGNORED_CODES = frozenset(
    {
        "RESOURCE_EXHAUSTED",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds of one breaker; defaults are resilience4j's (100 / 100 / 50 % / 60 s / 10)."""

    window_size: int = 100
    minimum_calls: int = 100
    failure_rate_threshold: float = 50.0
    slow_call_duration: float = 60.0
    slow_call_rate_threshold: float = 100.0
    open_wait: float = 60.0
    half_open_permits: int = 10
    failure_codes: frozenset[str] = DEFAULT_FAILURE_CODES
    ignored_codes: frozenset[str] = DEFAULT_IGNORED_CODES

    def __post_init__(self) -> None:
        require_int("window_size", self.window_size, 1)
        require_int("minimum_calls", self.minimum_calls, 1)
        require_percent("failure_rate_threshold", self.failure_rate_threshold)
        require_positive("slow_call_duration", self.slow_call_duration, allow_inf=True)
        require_percent("slow_call_rate_threshold", self.slow_call_rate_threshold)
        require_positive("open_wait", self.open_wait)
        require_int("half_open_permits", self.half_open_permits, 1)
        failures = code_names("failure_codes", self.failure_codes)
        ignored = code_names("ignored_codes", self.ignored_codes)
        if failures & ignored:
            both = ", ".join(sorted(failures & ignored))
            raise FieldError("ignored_codes", f"must not overlap failure_codes (both: {both})")
        object.__setattr__(self, "failure_codes", failures)
        object.__setattr__(self, "ignored_codes", ignored)

    @classmethod
    def consecutive(
        cls,
        failures: int = 5,
        open_wait: float = 60.0,
        *,
        failure_codes: frozenset[str] = DEFAULT_FAILURE_CODES,
        ignored_codes: frozenset[str] = DEFAULT_IGNORED_CODES,
    ) -> BreakerConfig:
        """The simple form: ``failures`` failures in a row open it for ``open_wait`` seconds.

        Exactly a window of ``failures`` calls at a 100 % threshold (the last N calls all
        failed is N consecutive failures), with one half-open probe and slow calls ignored,
        so both forms share one state machine and one set of tests.
        """
        require_int("consecutive_failures", failures, 1)
        return cls(
            window_size=failures,
            minimum_calls=failures,
            failure_rate_threshold=100.0,
            slow_call_duration=float("inf"),
            slow_call_rate_threshold=100.0,
            open_wait=open_wait,
            half_open_permits=1,
            failure_codes=failure_codes,
            ignored_codes=ignored_codes,
        )
