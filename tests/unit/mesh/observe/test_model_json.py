"""The view as JSON: what the dashboard sends and ``mesh top --json`` prints."""

from __future__ import annotations

import json
from types import MappingProxyType

from mesh.observe.model import EdgeView, Golden, MeshView, SagaView, ServiceView, as_json


def test_a_view_with_read_only_mappings_becomes_plain_json() -> None:
    view = MeshView(
        at=1.0,
        window_seconds=10.0,
        services=(ServiceView("inventory", (), Golden(12.5, 1.0, 3.0, 9.0)),),
        edges=(EdgeView("gateway", "inventory", Golden(12.5)),),
        sagas=SagaView(MappingProxyType({"forward": 2}), 4.5, 0.1),
    )
    data = as_json(view)
    assert json.loads(json.dumps(data)) == data
    assert data["services"][0]["inbound"] == {
        "requests_per_second": 12.5,
        "success_rate": 1.0,
        "p50_ms": 3.0,
        "p99_ms": 9.0,
    }
    assert data["edges"][0]["source"] == "gateway" and data["sagas"]["in_flight_by_state"] == {"forward": 2}
    assert as_json(MeshView(0.0, 0.0, sagas=SagaView()))["sagas"]["in_flight_by_state"] == {}
