"""A consumer's settings: its queue, its limits and its delays, validated when built.

Apart from :mod:`services.common.messaging.consumer` so a service's settings module can build
them from the environment (:func:`consumer_settings_from_env`) without the consumer's runtime.
Every delay is a :class:`mesh.resilience.Backoff`, the one backoff of the project.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.config import env_float, env_int
from mesh.errors import ConfigError
from mesh.resilience import Backoff


@dataclass(frozen=True)
class ConsumerSettings:
    """One consumer's queue and its limits."""

    name: str  # "billing", "notifications": the queue is MessagingSettings.queue(name)
    routing_keys: tuple[str, ...]
    prefetch: int = 32
    max_attempts: int = 5
    reconnect_base_seconds: float = 0.2
    reconnect_max_seconds: float = 5.0
    # Holding a message while the database is down: retry the same transaction this often.
    unavailable_base_seconds: float = 0.1
    unavailable_max_seconds: float = 2.0
    # Before nacking a failed attempt: up to base * 2**(deliveries-1), capped.
    failure_base_seconds: float = 0.05
    failure_max_seconds: float = 1.0
    # Fault injection for tests: each handler transaction takes this much longer (a slow
    # handler), so a test can kill the process while messages are still in flight.
    fault_delay_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= 1000:
            raise ConfigError(f"consumer {self.name}: prefetch must be within 1..1000, got {self.prefetch}")
        if self.max_attempts < 1:
            raise ConfigError(f"consumer {self.name}: max_attempts must be at least 1")

    @property
    def reconnect_backoff(self) -> Backoff:
        """Between connection attempts while the broker is away."""
        return Backoff(initial=self.reconnect_base_seconds, maximum=self.reconnect_max_seconds)

    @property
    def unavailable_backoff(self) -> Backoff:
        """Between retries of one message's transaction while the database is away."""
        return Backoff(initial=self.unavailable_base_seconds, maximum=self.unavailable_max_seconds)

    @property
    def failure_backoff(self) -> Backoff:
        """Before nacking a failed attempt, by the message's delivery count."""
        return Backoff(initial=self.failure_base_seconds, maximum=self.failure_max_seconds)


def consumer_settings_from_env(
    environ: Mapping[str, str], service: str, name: str, routing_keys: Sequence[str]
) -> ConsumerSettings:
    """Consumer ``name`` of ``service``: ``<SERVICE>_CONSUMER_PREFETCH`` (32),
    ``<SERVICE>_CONSUMER_MAX_ATTEMPTS`` (5) and ``<SERVICE>_CONSUMER_FAULT_DELAY_SECONDS`` (0,
    tests only); ConfigError naming the variable when one is invalid."""
    prefix = f"{service.upper()}_CONSUMER_"
    prefetch = env_int(environ, f"{prefix}PREFETCH", 32)
    if not 1 <= prefetch <= 1000:
        raise ConfigError(f"{prefix}PREFETCH must be within 1..1000, got {prefetch}")
    max_attempts = env_int(environ, f"{prefix}MAX_ATTEMPTS", 5)
    if max_attempts < 1:
        raise ConfigError(f"{prefix}MAX_ATTEMPTS must be at least 1, got {max_attempts}")
    fault_delay = env_float(environ, f"{prefix}FAULT_DELAY_SECONDS", 0.0)
    if fault_delay < 0:
        raise ConfigError(f"{prefix}FAULT_DELAY_SECONDS must be >= 0, got {fault_delay}")
    return ConsumerSettings(
        name, tuple(routing_keys), prefetch, max_attempts, fault_delay_seconds=fault_delay
    )
