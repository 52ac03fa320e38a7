"""No Python or grpc-core text in the gateway's answers, for bad bytes or a dead upstream.

A query string or JSON body that is not UTF-8 was answered with Python's codec message
(``'utf-8' codec can't decode byte 0xff in position 0: invalid start byte``); a dead
upstream must read as the gateway's own words, for unary calls and for streams alike.
"""

from __future__ import annotations

import json

import grpc

from gateway.upstream import StaticChannelFactory
from tests.integration.gateway.inprocess import serve, settings_for
from tests.support.processes import free_port
from tests.support.tokens import KeyPair

INTERNAL = (
    "codec",
    "byte 0x",
    "position",
    "failed to connect",
    "ipv4",
    "127.0.0.1",
    "Stream removed",
    "Socket closed",
)
UPSTREAMS = ("inventory", "order", "user", "payment", "shipping")


def _env(keys: KeyPair) -> dict[str, str]:
    return {"MESH_JWT_PUBLIC_KEY_FILE": str(keys.public), "MESH_JWT_KID": "user-1"}


def _dead() -> StaticChannelFactory:
    target = f"127.0.0.1:{free_port()}"
    return StaticChannelFactory({name: target for name in UPSTREAMS})


async def test_bytes_that_are_not_utf8_are_400_in_the_gateways_words(jwt_keys: KeyPair) -> None:
    json_type = {"Content-Type": "application/json"}
    async with serve(settings_for(_env(jwt_keys)), _dead()) as gateway:
        answers = [
            await gateway.request("GET", "/v1/products?pageToken=%ff%fe"),
            await gateway.request("GET", "/v1/products?pageSize=%ed%a0%80"),
            await gateway.request(
                "POST", "/v1/users", headers=json_type, raw=b'{"email": "\xff@example.com"}'
            ),
            await gateway.request("POST", "/v1/users:login", headers=json_type, raw=b'{"email": "a\xc3"}'),
        ]
    for status, _, raw in answers:
        text = raw.decode()
        assert status == 400, text
        assert not any(t in text for t in INTERNAL), text
        assert json.loads(raw)["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_dead_upstream_reads_the_same_for_calls_and_streams(jwt_keys: KeyPair) -> None:
    token = jwt_keys.token("usr_1")
    async with serve(settings_for(_env(jwt_keys)), _dead()) as gateway:
        unary = await gateway.request("GET", "/v1/orders/ord_1", token=token)
        stream = await gateway.request("GET", "/v1/orders/ord_1:watch", token=token)
        login = await gateway.request(
            "POST", "/v1/users:login", body={"email": "a@example.com", "password": "x"}
        )
    for status, _, raw in (unary, stream, login):
        text = raw.decode()
        assert status == 503, text
        assert not any(t in text for t in INTERNAL), text
        body = json.loads(text.splitlines()[-1])
        body = body.get("error", body)
        assert body["message"].endswith("service is unavailable; try again later"), body
