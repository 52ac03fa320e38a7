"""The ADS servicer over a real grpc.aio server, driven by a raw ADS stream written here.

No Consul and no resource builder: the cache is fed hand-made resources, so each test shows
one rule of the state-of-the-world protocol (mesh/xds/server.py) on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from mesh.xds.clients import ClientRegistry
from mesh.xds.model import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER
from mesh.xds.server import (
    MAX_ERROR_CHARS,
    AggregatedDiscoveryService,
    ResourceCache,
    add_to_server,
    content_version,
)
from tests.support.waiting import wait_until

READ_WITHIN = 5.0


def listener(name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(name=name)


def cluster(name: str, timeout: int = 1) -> cluster_pb2.Cluster:
    message = cluster_pb2.Cluster(name=name)
    message.connect_timeout.seconds = timeout
    return message


def assignment(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = message.endpoints.add()
    for port in ports:
        address = group.lb_endpoints.add().endpoint.address.socket_address
        address.address, address.port_value = "127.0.0.1", port
    return message


def resources(services: Mapping[str, tuple[int, ...]], *, timeout: int = 1) -> dict[str, dict[str, Message]]:
    """Listener, cluster and endpoints per service name, as a resource set maps them."""
    return {
        LISTENER: {name: listener(name) for name in services},
        CLUSTER: {name: cluster(name, timeout) for name in services},
        CLUSTER_LOAD_ASSIGNMENT: {name: assignment(name, *ports) for name, ports in services.items()},
    }


class AdsStream:
    """One raw ADS stream: write requests, read responses (each read bounded)."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str = "test-node") -> None:
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.node_id = node_id
        self.sent_node = False

    async def request(
        self,
        type_url: str,
        names: tuple[str, ...] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str = "",
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if not self.sent_node:  # as grpc does: the node on the first request only
            request.node.id, request.node.cluster = self.node_id, "test-cluster"
            request.node.locality.region = "dc1"
            self.sent_node = True
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def read(self) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), READ_WITHIN)
        assert response is not grpc.aio.EOF, "the server ended the stream"
        return response

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> None:
        await self.request(response.type_url, names, version=response.version_info, nonce=response.nonce)


def names_in(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The resource names a response carries (each unpacked as its type)."""
    kinds = {
        LISTENER: listener_pb2.Listener,
        CLUSTER: cluster_pb2.Cluster,
        CLUSTER_LOAD_ASSIGNMENT: endpoint_pb2.ClusterLoadAssignment,
    }
    out = []
    for packed in response.resources:
        assert packed.type_url == response.type_url
        message = kinds[response.type_url]()
        assert packed.Unpack(message)
        out.append(message.cluster_name if response.type_url == CLUSTER_LOAD_ASSIGNMENT else message.name)
    return out


class Harness:
    def __init__(self, cache: ResourceCache, ads: AggregatedDiscoveryService, port: int) -> None:
        self.cache, self.ads, self.port = cache, ads, port
        self.channels: list[grpc.aio.Channel] = []

    @property
    def clients(self) -> ClientRegistry:
        return self.ads.clients

    def stream(self, node_id: str = "test-node") -> AdsStream:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.channels.append(channel)
        return AdsStream(channel, node_id)


@pytest.fixture
async def ads() -> AsyncIterator[Harness]:
    cache = ResourceCache()
    cache.update(resources({"inventory": (1001, 1002), "payment": (2001,)}))
    service = AggregatedDiscoveryService(cache)
    server = grpc.aio.server()
    add_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    harness = Harness(cache, service, port)
    try:
        yield harness
    finally:
        for channel in harness.channels:
            await channel.close()
        await server.stop(None)


async def test_the_first_request_of_each_type_is_answered_with_what_it_names(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(LISTENER)
    lds = await stream.read()
    assert lds.type_url == LISTENER and names_in(lds) == ["inventory", "payment"]  # wildcard: all
    assert lds.version_info and lds.nonce
    await stream.ack(lds)
    await stream.request(CLUSTER_LOAD_ASSIGNMENT, ("inventory",))
    eds = await stream.read()
    assert eds.type_url == CLUSTER_LOAD_ASSIGNMENT and names_in(eds) == ["inventory"]
    assert eds.nonce != lds.nonce
    loaded = endpoint_pb2.ClusterLoadAssignment()
    eds.resources[0].Unpack(loaded)
    assert [e.endpoint.address.socket_address.port_value for e in loaded.endpoints[0].lb_endpoints] == [
        1001,
        1002,
    ]


async def test_an_ack_is_recorded_and_nothing_is_resent_until_the_subscribed_content_changes(
    ads: Harness,
) -> None:
    stream = ads.stream()
    await stream.request(CLUSTER_LOAD_ASSIGNMENT, ("inventory",))
    first = await stream.read()
    await stream.ack(first, ("inventory",))
    await wait_until(
        lambda: ads.clients.all()[0].types[CLUSTER_LOAD_ASSIGNMENT].acked_version == first.version_info,
        READ_WITHIN,
        "the ACK recorded",
    )
    # A change to a resource the stream does not subscribe to sends it nothing: the next
    # response it reads is the one for the later change to "inventory".
    ads.cache.update(resources({"inventory": (1001, 1002), "payment": (2001, 2002)}))
    ads.cache.update(resources({"inventory": (1001,), "payment": (2001, 2002)}))
    second = await stream.read()
    assert names_in(second) == ["inventory"]
    assert second.version_info != first.version_info and second.nonce != first.nonce
    state = ads.clients.all()[0].types[CLUSTER_LOAD_ASSIGNMENT]
    assert state.responses == 2 and state.sent_version == second.version_info


async def test_a_change_is_resent_with_a_new_version_and_nonce_and_acked_again(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(CLUSTER)
    first = await stream.read()
    await stream.ack(first)
    ads.cache.update(resources({"inventory": (1001, 1002), "payment": (2001,)}, timeout=3))
    second = await stream.read()
    assert names_in(second) == ["inventory", "payment"]
    assert (second.version_info, second.nonce) != (first.version_info, first.nonce)
    assert second.version_info == content_version(ads.cache.select(CLUSTER, None))
    await stream.ack(second)
    state = ads.clients.all()[0].types[CLUSTER]
    await wait_until(lambda: state.acked_version == second.version_info, READ_WITHIN, "the second ACK")


async def test_a_nack_is_recorded_with_its_error_and_the_previous_version_stays_acked(
    ads: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    stream = ads.stream("nacking-node")
    await stream.request(CLUSTER)
    first = await stream.read()
    await stream.ack(first)
    # (An ACK still on its way when the next response goes out would carry a stale nonce.)
    await wait_until(
        lambda: ads.clients.all()[0].types[CLUSTER].acked_version == first.version_info,
        READ_WITHIN,
        "the first ACK recorded",
    )
    ads.cache.update(resources({"inventory": (1001, 1002), "payment": (2001,)}, timeout=9))
    rejected = await stream.read()
    # A NACK carries the nonce of the rejected response and the version the client still runs.
    await stream.request(
        CLUSTER, version=first.version_info, nonce=rejected.nonce, error="bad cluster: timeout"
    )
    state = ads.clients.all()[0].types[CLUSTER]
    await wait_until(lambda: state.nack is not None, READ_WITHIN, "the NACK recorded")
    assert state.nack is not None and state.nack.message == "bad cluster: timeout"
    assert state.nack.version == rejected.version_info
    assert state.acked_version == first.version_info
    warning = next(r for r in caplog.records if getattr(r, "event", "") == "xds_nack")
    assert warning.levelname == "WARNING" and "nacking-node" in warning.getMessage()
    assert "bad cluster: timeout" in warning.getMessage() and CLUSTER in warning.getMessage()
    # The server keeps serving: the next change goes out and can be ACKed.
    ads.cache.update(resources({"inventory": (1001, 1002), "payment": (2001,)}, timeout=2))
    fixed = await stream.read()
    await stream.ack(fixed)
    await wait_until(lambda: state.acked_version == fixed.version_info, READ_WITHIN, "the fix ACKed")
    shown = ads.clients.as_list()[0]["types"][CLUSTER]
    assert shown["nack"]["message"] == "bad cluster: timeout" and shown["acked_version"] == fixed.version_info


async def test_a_hostile_client_cannot_grow_the_state_or_the_log(
    ads: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    stream = ads.stream("hostile-node")
    for number in range(50):  # made-up type URLs: no state kept, one warning per stream
        await stream.request(f"type.googleapis.com/made.up.Type{number}")
    await stream.request(CLUSTER)
    first = await stream.read()  # still served
    assert first.type_url == CLUSTER
    client = ads.clients.all()[0]
    await wait_until(lambda: client.unknown_requests == 50, READ_WITHIN, "every made-up request counted")
    assert set(client.types) == {CLUSTER}
    assert sum(getattr(r, "event", "") == "xds_unknown_type" for r in caplog.records) == 1
    ads.cache.update(resources({"inventory": (1001,)}))
    rejected = await stream.read()
    await stream.request(CLUSTER, nonce=rejected.nonce, error="x" * 100_000)  # a huge NACK text
    state = client.types[CLUSTER]
    await wait_until(lambda: state.nack is not None, READ_WITHIN, "the NACK recorded")
    assert state.nack is not None and state.nack.message == "x" * MAX_ERROR_CHARS


async def test_a_request_with_a_stale_nonce_is_ignored(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(CLUSTER_LOAD_ASSIGNMENT, ("inventory",))
    first = await stream.read()
    ads.cache.update(resources({"inventory": (1003,), "payment": (2001,)}))
    second = await stream.read()
    # The client's answer to the first response arrives late, asking for another name:
    # neither an ACK nor a subscription change.
    await stream.request(CLUSTER_LOAD_ASSIGNMENT, ("payment",), version=first.version_info, nonce=first.nonce)
    state = ads.clients.all()[0].types[CLUSTER_LOAD_ASSIGNMENT]
    await wait_until(lambda: state.ignored == 1, READ_WITHIN, "the stale request counted")
    assert state.acked_version == "" and state.names == frozenset({"inventory"})
    await stream.ack(second, ("inventory",))
    await wait_until(lambda: state.acked_version == second.version_info, READ_WITHIN, "the current ACK")
    assert state.responses == 2


async def test_names_consul_does_not_know_are_absent_from_the_response(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(LISTENER, ("inventory", "nowhere"))
    lds = await stream.read()
    assert names_in(lds) == ["inventory"]
    await stream.ack(lds, ("inventory", "nowhere"))
    await stream.request(CLUSTER_LOAD_ASSIGNMENT, ("nowhere",))
    eds = await stream.read()
    assert names_in(eds) == [] and eds.version_info
    # When the name appears, the subscribed stream gets it.
    ads.cache.update(resources({"inventory": (1001, 1002), "payment": (2001,), "nowhere": (3001,)}))
    got = {(await stream.read()).type_url: None for _ in range(2)}
    assert set(got) == {LISTENER, CLUSTER_LOAD_ASSIGNMENT}


async def test_wildcard_cds_follows_services_coming_and_going(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(CLUSTER)
    first = await stream.read()
    assert names_in(first) == ["inventory", "payment"]
    await stream.ack(first)
    ads.cache.update(resources({"inventory": (1001, 1002)}))
    second = await stream.read()
    assert names_in(second) == ["inventory"]  # payment is gone: absent means it does not exist


async def test_a_changed_subscription_is_answered_even_when_its_content_is_the_same(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(CLUSTER_LOAD_ASSIGNMENT, ("inventory",))
    first = await stream.read()
    await stream.ack(first, ("inventory", "payment"))  # ACK and subscribe to one more
    second = await stream.read()
    assert names_in(second) == ["inventory", "payment"] and second.nonce != first.nonce


async def test_two_clients_have_their_own_subscriptions_and_states(ads: Harness) -> None:
    one, two = ads.stream("one"), ads.stream("two")
    await one.request(CLUSTER_LOAD_ASSIGNMENT, ("inventory",))
    await two.request(CLUSTER_LOAD_ASSIGNMENT, ("payment",))
    first_one, first_two = await one.read(), await two.read()
    assert names_in(first_one) == ["inventory"] and names_in(first_two) == ["payment"]
    await one.ack(first_one, ("inventory",))
    ads.cache.update(resources({"inventory": (1001, 1002), "payment": (2009,)}))
    changed = await two.read()
    assert names_in(changed) == ["payment"]
    by_node = {c.node_id: c for c in ads.clients.all()}
    await wait_until(
        lambda: by_node["one"].types[CLUSTER_LOAD_ASSIGNMENT].acked_version != "", READ_WITHIN, "one's ACK"
    )
    assert by_node["one"].types[CLUSTER_LOAD_ASSIGNMENT].acked_version == first_one.version_info
    assert by_node["two"].types[CLUSTER_LOAD_ASSIGNMENT].acked_version == ""
    assert by_node["one"].types[CLUSTER_LOAD_ASSIGNMENT].responses == 1  # payment's change was not its


async def test_a_reconnecting_client_starts_fresh(ads: Harness) -> None:
    stream = ads.stream("again")
    await stream.request(CLUSTER)
    first = await stream.read()
    await stream.ack(first)
    await wait_until(lambda: ads.clients.all()[0].types[CLUSTER].acked_version != "", READ_WITHIN, "ACK")
    await stream.call.done_writing()
    assert await asyncio.wait_for(stream.call.read(), READ_WITHIN) is grpc.aio.EOF
    await wait_until(lambda: len(ads.clients) == 0, READ_WITHIN, "the ended stream dropped")
    (ended,) = ads.clients.as_list()  # still listed, for what it ACKed or rejected
    assert ended["connected"] is False and ended["disconnected_at"]
    assert ended["types"][CLUSTER]["acked_version"] == first.version_info
    again = ads.stream("again")
    # A new stream starts with the version the client had, and no nonce: it is answered in full.
    await again.request(CLUSTER, version=first.version_info)
    answer = await again.read()
    assert names_in(answer) == ["inventory", "payment"] and answer.version_info == first.version_info
    (client,) = ads.clients.all()
    assert client.types[CLUSTER].acked_version == "" and client.types[CLUSTER].responses == 1
    assert [c["connected"] for c in ads.clients.as_list()] == [True, False]


async def test_nothing_is_sent_before_the_cache_has_its_first_resources() -> None:
    cache = ResourceCache()
    service = AggregatedDiscoveryService(cache)
    server = grpc.aio.server()
    add_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = AdsStream(channel)
            await stream.request(LISTENER)
            await wait_until(lambda: len(service.clients) == 1, READ_WITHIN, "the stream open")
            (client,) = service.clients.all()
            await wait_until(lambda: client.types.get(LISTENER) is not None, READ_WITHIN, "request seen")
            assert client.types[LISTENER].responses == 0  # the stream waits for the catalog
            cache.update(resources({"inventory": (1001,)}))
            assert names_in(await stream.read()) == ["inventory"]
    finally:
        await server.stop(None)


async def test_status_lists_each_client_with_its_node_peer_and_types(ads: Harness) -> None:
    stream = ads.stream("status-node")
    await stream.request(LISTENER)
    lds = await stream.read()
    await stream.ack(lds)
    await wait_until(
        lambda: ads.clients.all()[0].types[LISTENER].acked_version != "", READ_WITHIN, "the ACK recorded"
    )
    (shown,) = ads.clients.as_list()
    assert shown["node"]["id"] == "status-node" and shown["node"]["cluster"] == "test-cluster"
    assert shown["node"]["locality"] == {"region": "dc1"}
    assert shown["peer"].startswith("ipv4:127.0.0.1:") and shown["connected_since"]
    assert shown["connected"] is True and shown["disconnected_at"] is None
    lds_state = shown["types"][LISTENER]
    assert lds_state["subscribed"] == "*" and lds_state["sent_resources"] == ["inventory", "payment"]
    assert lds_state["acked_version"] == lds_state["sent_version"] == lds.version_info
    assert lds_state["nack"] is None and lds_state["pending"] is False


async def test_closing_the_streams_ends_them_and_delta_is_unimplemented(ads: Harness) -> None:
    stream = ads.stream()
    await stream.request(CLUSTER)
    await stream.read()
    ads.ads.close_streams()
    assert await asyncio.wait_for(stream.call.read(), READ_WITHIN) is grpc.aio.EOF
    assert (await stream.call.code()) == grpc.StatusCode.OK
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ads.port}")
    ads.channels.append(channel)
    # No request is written: the server may refuse the stream before a write could land.
    delta = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
    assert (await delta.code()) == grpc.StatusCode.UNIMPLEMENTED


def test_unchanged_resources_do_not_make_a_new_cache_version() -> None:
    cache = ResourceCache()
    assert cache.update(resources({"inventory": (1001,)})) and cache.version == 1
    assert not cache.update(resources({"inventory": (1001,)})) and cache.version == 1
    assert cache.update(resources({"inventory": (1002,)})) and cache.version == 2
    assert cache.summary()[LISTENER].keys() == {"inventory"}
