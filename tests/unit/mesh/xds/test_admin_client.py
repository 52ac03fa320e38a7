"""How ``mesh status`` renders the xDS clients a control plane reports, NACKs included."""

from __future__ import annotations

import asyncio

from mesh.registry.base import ServiceInstance
from mesh.xds.admin_client import ControlPlaneClients, control_plane_clients, render_control_planes
from mesh.xds.model import CLUSTER, CLUSTER_LOAD_ASSIGNMENT

CLIENT = {
    "peer": "ipv4:127.0.0.1:40000",
    "connected": True,
    "connected_since": "2026-12-06T02:00:00.000+00:00",
    "node": {"id": "local-client", "user_agent": "gRPC Python 1.85.1"},
    "types": {
        CLUSTER: {
            "subscribed": ["echo"],
            "acked_version": "a" * 20,
            "sent_version": "b" * 20,
            "pending": False,
            "nack": {"version": "b" * 20, "message": "LB policy LEAST_REQUEST is not supported"},
        },
        CLUSTER_LOAD_ASSIGNMENT: {
            "subscribed": ["echo"],
            "acked_version": "c" * 20,
            "sent_version": "d" * 20,
            "pending": True,
            "nack": None,
        },
    },
}
GONE = {"peer": "ipv4:127.0.0.1:40001", "connected": False, "types": {}}


def test_each_connected_client_shows_its_acked_versions_and_nacks() -> None:
    plane = ControlPlaneClients("127.0.0.1:18000", "http://127.0.0.1:9", (CLIENT, GONE))
    lines = render_control_planes([plane])
    assert lines[1] == "xds control plane 127.0.0.1:18000  (admin http://127.0.0.1:9)"
    assert lines[2] == "  1 client(s) connected"
    assert lines[3].startswith("  ipv4:127.0.0.1:40000  node local-client  gRPC Python 1.85.1")
    assert lines[4] == (
        f"    CDS  acked {'a' * 12}  [echo]  NACKED {'b' * 12}: LB policy LEAST_REQUEST is not supported"
    )
    assert lines[5] == f"    EDS  acked {'c' * 12}  (sent {'d' * 12}, not yet ACKed)  [echo]"
    assert len(lines) == 6  # the disconnected stream is not listed


def test_a_control_plane_that_does_not_answer_is_reported_not_raised() -> None:
    unreachable = ServiceInstance(
        id="xds-1", name="xds", address="127.0.0.1", port=1, meta={"admin_port": "1"}
    )
    no_admin = ServiceInstance(id="xds-2", name="xds", address="127.0.0.1", port=2, meta={})
    (plane,) = asyncio.run(control_plane_clients([unreachable, no_admin], wait_seconds=1))
    assert plane.target == "127.0.0.1:1" and plane.clients == ()
    assert plane.error.startswith("admin endpoint did not answer")
    assert render_control_planes([plane])[2].startswith("  admin endpoint did not answer")
