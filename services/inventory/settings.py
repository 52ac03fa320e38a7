"""The inventory service's own settings, typed and validated once in its ``__main__``.

``INVENTORY_SEED_DEMO`` (off): load the demo catalogue at start, for demos and tests; a value
that is not a yes/no word stops the process with a ConfigError naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import env_bool


@dataclass(frozen=True)
class InventorySettings:
    """What only the inventory service reads."""

    seed_demo: bool = False


def inventory_settings_from_env(environ: Mapping[str, str]) -> InventorySettings:
    return InventorySettings(seed_demo=env_bool(environ, "INVENTORY_SEED_DEMO", False))
