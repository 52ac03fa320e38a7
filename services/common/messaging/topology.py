"""The broker objects every side agrees on, declared idempotently by whoever starts first.

Both the relay (publisher) and the consumers declare the exchange with the same arguments, so
neither depends on the other having started: RabbitMQ accepts a re-declaration that matches.

:data:`BROKER_ERRORS` is the one definition of "the broker is unavailable" both sides use to
tell an outage (reconnect with backoff) from a bug in their own code (log it with its
traceback). aio-pika's own ``CONNECTION_EXCEPTIONS`` is not used: it includes every
``RuntimeError``, so a bug would pass for an outage.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
import pamqp.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange

from services.common.settings import MessagingSettings

BROKER_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,  # connection and channel closed by the broker, refused publish...
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: using a channel that just closed
    pamqp.exceptions.PAMQPException,  # a frame that does not decode
    OSError,  # refused, reset, unreachable; TimeoutError (a broker that does not answer) too
)
"""Exceptions that mean the broker or the way to it failed, not this process's code."""


async def declare_exchange(channel: AbstractChannel, settings: MessagingSettings) -> AbstractExchange:
    """The durable topic exchange ``settings.exchange`` (created if missing)."""
    return await channel.declare_exchange(settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)


def broker_address(amqp_url: str) -> str:
    """``host:port`` of an AMQP URL: what logs and messages may show (never the credentials)."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:  # a malformed port: still say where, without the credentials
        port = 5672
    return f"{host}:{port}"
