"""Forged tokens never reach a service: 401 every time, and zero upstream calls."""

from __future__ import annotations

import json

import pytest

from gateway.upstream import StaticChannelFactory
from tests.integration.gateway.conftest import Shop
from tests.integration.gateway.inprocess import CountingFactory, serve, settings_for
from tests.unit.gateway.forge import BAD_HEADERS, FORGED

# A protected route and a public one: a bad token is refused on both.
ROUTES = [("GET", "/v1/orders"), ("POST", "/v1/orders/o-1:cancel"), ("GET", "/v1/products")]


async def test_forged_token_matrix(shop: Shop) -> None:
    assert len(FORGED) >= 14
    factory = CountingFactory(StaticChannelFactory({n: shop.address(n) for n in shop.processes}))
    async with serve(settings_for(shop.gateway_env()), factory) as gateway:
        # The counter works: a real token reaches the order service.
        status, _, _ = await gateway.request("GET", "/v1/orders", token=shop.keys.token("usr_real"))
        assert status == 200 and factory.calls == 1
        factory.calls = 0
        outcomes = {}
        for case, make in sorted(FORGED.items()):
            token = make(shop.keys)
            for method, path in ROUTES:
                status, headers, body = await gateway.request(
                    method, path, token=token, body={} if method == "POST" else None
                )
                outcomes[(case, path)] = status
                assert status == 401, (case, path, body)
                assert headers["www-authenticate"].startswith('Bearer realm="tsunagu", error="invalid_token"')
                assert json.loads(body)["code"] == 16
        for case, value in BAD_HEADERS.items():
            status, _, _ = await gateway.request("GET", "/v1/orders", headers={"Authorization": value})
            assert status == 401, case
        assert factory.calls == 0
        assert len(outcomes) == len(FORGED) * len(ROUTES)


@pytest.mark.parametrize("path", ["/v1/orders", "/v1/payments/p-1", "/v1/invoices"])
async def test_no_token_on_a_protected_route_makes_no_call(shop: Shop, path: str) -> None:
    factory = CountingFactory(StaticChannelFactory({n: shop.address(n) for n in shop.processes}))
    async with serve(settings_for(shop.gateway_env()), factory) as gateway:
        status, headers, _ = await gateway.request("GET", path)
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="tsunagu"'
        assert factory.calls == 0
