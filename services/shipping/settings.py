"""The shipping service's own settings, typed and validated once in its ``__main__``.

``SHIPPING_SUPPORTED_COUNTRIES`` and ``SHIPPING_TRANSIT_DAYS`` (:class:`ShippingPolicy`); an
invalid value stops the process at start with a ConfigError naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import service_variables
from services.shipping.domain import ShippingPolicy, policy_from_settings

SERVICE = "shipping"


@dataclass(frozen=True)
class ShippingSettings:
    """What only the shipping service reads."""

    policy: ShippingPolicy


def shipping_settings_from_env(environ: Mapping[str, str]) -> ShippingSettings:
    return ShippingSettings(policy=policy_from_settings(service_variables(SERVICE, environ)))
