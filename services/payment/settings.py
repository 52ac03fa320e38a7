"""The payment service's own settings, typed and validated once in its ``__main__``.

``PAYMENT_DECLINE_ABOVE_MINOR`` (the demo decline rule, :class:`PaymentPolicy`) and the
billing consumer's ``PAYMENT_CONSUMER_*`` limits; an invalid value stops the process at start
with a ConfigError naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.messaging.consumer_settings import ConsumerSettings, consumer_settings_from_env
from services.common.settings import service_variables
from services.payment import billing
from services.payment.domain import PaymentPolicy, policy_from_settings

SERVICE = "payment"


@dataclass(frozen=True)
class PaymentSettings:
    """What only the payment service reads."""

    policy: PaymentPolicy
    billing: ConsumerSettings


def payment_settings_from_env(environ: Mapping[str, str]) -> PaymentSettings:
    return PaymentSettings(
        policy=policy_from_settings(service_variables(SERVICE, environ)),
        billing=consumer_settings_from_env(environ, SERVICE, billing.CONSUMER, billing.ROUTING_KEYS),
    )
