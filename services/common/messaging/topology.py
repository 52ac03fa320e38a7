"""The broker objects every side agrees on, declared idempotently by whoever starts first.

Both the relay (publisher) and the consumers declare the exchange with the same arguments, so
neither depends on the other having started: RabbitMQ accepts a re-declaration that matches.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from services.common.settings import MessagingSettings


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
