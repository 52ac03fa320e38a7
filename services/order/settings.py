"""The order service's own settings, typed and validated once in its ``__main__``.

``ORDER_SAGA_LEASE_SECONDS`` (10), ``ORDER_SAGA_RETRY_BASE_SECONDS`` (0.2) and
``ORDER_SAGA_RETRY_MAX_SECONDS`` (30): the saga runner's lease and retry backoff, and
``ORDER_SAGA_UNAVAILABLE_WAIT_SECONDS`` (60): how long a forward step waits for a participant
it cannot reach before the order is cancelled
(:class:`~services.order.saga.runner.SagaSettings`); ``ORDER_OUTBOX_CLAIM_SECONDS`` (10): how
long the outbox relay's claim on a batch lasts, so how soon another instance publishes the
events a dead one had claimed (:class:`~services.common.messaging.relay.RelaySettings`);
``ORDER_FAULT_CRASH_AT``, for the crash tests only (:mod:`services.order.saga.faults`). An
invalid value stops the process at start with a ConfigError naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.messaging.relay import RelaySettings, relay_settings_from_env
from services.order.saga.definition import ORDER_STEPS
from services.order.saga.faults import CrashAt, crash_at_from_env
from services.order.saga.runner import SagaSettings, saga_settings_from_env


@dataclass(frozen=True)
class OrderSettings:
    """What only the order service reads."""

    saga: SagaSettings
    crash_at: CrashAt | None = None  # where the process kills itself; None outside crash tests
    relay: RelaySettings = field(default_factory=RelaySettings)


def order_settings_from_env(environ: Mapping[str, str]) -> OrderSettings:
    return OrderSettings(
        saga=saga_settings_from_env(environ),
        relay=relay_settings_from_env(environ),
        crash_at=crash_at_from_env(environ, ORDER_STEPS),
    )
