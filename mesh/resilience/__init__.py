"""Pure resilience policy: breaker, backoff, retry, budget and their configuration.

Nothing here does I/O or imports grpc: status codes are their names
(``grpc.StatusCode.X.name``) and time comes from an injectable clock, so every decision
is a plain function call a test can pin exactly. The mesh channel's attempt engine (:mod:`mesh.channel.attempts`) applies them to calls.
"""

from mesh.resilience.backoff import Backoff
from mesh.resilience.breaker import (
    BreakerConfig,
    BreakerSnapshot,
    CallOutcome,
    CircuitBreaker,
    Permit,
    State,
)
from mesh.resilience.budget import BudgetConfig, RetryBudget
from mesh.resilience.clock import Clock, ManualClock
from mesh.resilience.codes import STATUS_CODE_NAMES
from mesh.resilience.policy_config import (
    CallPolicy,
    PolicySettings,
    ServicePolicy,
    load_policy,
    parse_policy,
    policy_from_env,
)
from mesh.resilience.retry import (
    PUSHBACK_METADATA_KEY,
    RetryPolicy,
    idempotent_level,
    pushback_seconds,
    stream_retryable,
)
from mesh.resilience.validate import FieldError

__all__ = [
    "PUSHBACK_METADATA_KEY",
    "STATUS_CODE_NAMES",
    "Backoff",
    "BreakerConfig",
    "BreakerSnapshot",
    "BudgetConfig",
    "CallOutcome",
    "CallPolicy",
    "CircuitBreaker",
    "Clock",
    "FieldError",
    "ManualClock",
    "Permit",
    "PolicySettings",
    "RetryBudget",
    "RetryPolicy",
    "ServicePolicy",
    "State",
    "idempotent_level",
    "load_policy",
    "parse_policy",
    "policy_from_env",
    "pushback_seconds",
    "stream_retryable",
]
