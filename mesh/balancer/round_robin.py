"""Round robin: each endpoint in turn, the baseline every other policy is measured against."""

from __future__ import annotations

import random

from mesh.balancer.base import Picked, ignore_outcome
from mesh.registry.base import Endpoints


class RoundRobin:
    """Cycles through the endpoint list; learns nothing from outcomes.

    The start offset is random so that many clients starting together do not all send
    their first call to the same endpoint.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._next = (rng or random.Random()).randrange(1 << 16)

    def pick(self, endpoints: Endpoints) -> Picked:
        """The next endpoint in turn."""
        index = self._next % len(endpoints)
        self._next = index + 1
        return Picked(endpoints[index], ignore_outcome)

    def update(self, endpoints: Endpoints) -> None:
        """Round robin keeps no per-endpoint state."""
