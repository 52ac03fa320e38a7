"""What a client sees when the upstream's answer is not the upstream's: never grpc-core's text.

A gateway served in the test's loop calls a real grpc.aio server that misbehaves on
purpose. A status the upstream sent (a google.rpc.Status in its trailers, or a code the
gRPC library never generates) passes through; one grpc-core made up (the trailers were too
large to receive, nothing listens, the handler crashed) is the gateway's own 502/503/504,
so an upstream's transport failure is never the client's 429 rate limit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.upstream import StaticChannelFactory
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as orders
from tests.integration.gateway.inprocess import serve, settings_for
from tests.support.processes import free_port
from tests.support.tokens import KeyPair

GET_PRODUCT = "/shop.inventory.v1.InventoryService/GetProduct"
WATCH_ORDER = "/shop.order.v1.OrderService/WatchOrder"
# Above grpc-core's hard limit on received metadata (16 KiB): the client drops the answer.
HUGE = "y" * 20_000
GRPC_CORE_TEXT = ("Stream removed", "metadata size", "failed to connect", "Unexpected", "secret")


async def _get_product(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    sku = inv.GetProductRequest.FromString(request).sku
    if sku == "huge":
        await context.abort(grpc.StatusCode.NOT_FOUND, f"product '{HUGE}' not found")
    if sku == "quota":
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.QuotaFailure(violations=[{"subject": "sku", "description": "quota"}]))
        status = rpc_status.to_status(
            status_pb2.Status(
                code=code_pb2.RESOURCE_EXHAUSTED, message="catalog quota used up", details=[detail]
            )
        )
        await context.abort(status.code, status.details, status.trailing_metadata)
    if sku == "plain":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no product 'plain'")
    raise RuntimeError("secret internals")


async def _watch_order(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    yield orders.WatchOrderResponse(order=orders.Order(order_id="ord_1")).SerializeToString()
    raise RuntimeError("secret internals")


class _Misbehaving(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == GET_PRODUCT:
            return grpc.unary_unary_rpc_method_handler(_get_product)
        if details.method == WATCH_ORDER:
            return grpc.unary_stream_rpc_method_handler(_watch_order)
        return None


@asynccontextmanager
async def _upstream() -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Misbehaving(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _env(keys: KeyPair) -> dict[str, str]:
    return {"MESH_JWT_PUBLIC_KEY_FILE": str(keys.public), "MESH_JWT_KID": "user-1"}


def _reason(body: dict[str, Any]) -> str:
    infos = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    return str(infos[0]["reason"]) if infos else ""


async def test_trailers_too_large_to_receive_are_502_not_the_clients_429(jwt_keys: KeyPair) -> None:
    async with _upstream() as target:
        settings = settings_for(_env(jwt_keys))
        factory = StaticChannelFactory({"inventory": target, "order": target})
        async with serve(settings, factory) as gateway:
            status, _, raw = await gateway.request("GET", "/v1/products/huge")
    text = raw.decode()
    assert not any(t in text for t in GRPC_CORE_TEXT), text
    assert status == 502, text
    body = json.loads(raw)
    assert body["code"] == grpc.StatusCode.UNAVAILABLE.value[0] and "inventory" in body["message"]
    assert _reason(body) == "UPSTREAM_FAILED"


async def test_a_crashed_handler_is_502_without_its_exception_text(jwt_keys: KeyPair) -> None:
    async with _upstream() as target:
        factory = StaticChannelFactory({"inventory": target, "order": target})
        async with serve(settings_for(_env(jwt_keys)), factory) as gateway:
            status, _, raw = await gateway.request("GET", "/v1/products/crash")
    assert status == 502 and not any(t in raw.decode() for t in GRPC_CORE_TEXT), raw


async def test_an_upstream_nobody_listens_on_is_503_in_the_gateways_words(jwt_keys: KeyPair) -> None:
    target = f"127.0.0.1:{free_port()}"
    factory = StaticChannelFactory({"inventory": target, "order": target})
    async with serve(settings_for(_env(jwt_keys)), factory) as gateway:
        status, _, raw = await gateway.request("GET", "/v1/products/any")
    body = json.loads(raw)
    assert status == 503 and body["code"] == grpc.StatusCode.UNAVAILABLE.value[0], body
    assert not any(t in body["message"] for t in GRPC_CORE_TEXT) and _reason(body) == "UPSTREAM_UNAVAILABLE"


async def test_the_upstreams_own_statuses_pass_through(jwt_keys: KeyPair) -> None:
    async with _upstream() as target:
        factory = StaticChannelFactory({"inventory": target, "order": target})
        async with serve(settings_for(_env(jwt_keys)), factory) as gateway:
            quota = await gateway.request("GET", "/v1/products/quota")
            plain = await gateway.request("GET", "/v1/products/plain")
    status, _, raw = quota
    body = json.loads(raw)
    assert status == 429 and body["message"] == "catalog quota used up"
    assert body["details"][0]["@type"].endswith("QuotaFailure")
    status, _, raw = plain
    assert status == 404 and json.loads(raw)["message"] == "no product 'plain'"


async def test_a_stream_that_fails_in_transport_ends_with_the_gateways_status(jwt_keys: KeyPair) -> None:
    token = jwt_keys.token("usr_1")
    async with _upstream() as target:
        factory = StaticChannelFactory({"inventory": target, "order": target})
        async with serve(settings_for(_env(jwt_keys)), factory) as gateway:
            status, _, raw = await gateway.request("GET", "/v1/orders/ord_1:watch", token=token)
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert status == 200 and lines[0]["result"]["order"]["orderId"] == "ord_1"
    error = lines[-1]["error"]
    assert not any(t in json.dumps(error) for t in GRPC_CORE_TEXT), error
    assert error["code"] == grpc.StatusCode.UNAVAILABLE.value[0] and _reason(error) == "UPSTREAM_FAILED"
