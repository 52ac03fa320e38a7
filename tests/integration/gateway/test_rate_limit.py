"""The per-principal token bucket: over the limit is 429 with Retry-After; others are unaffected."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from gateway.upstream import StaticChannelFactory
from tests.integration.gateway.conftest import Shop, http_request
from tests.integration.gateway.inprocess import CountingFactory, serve, settings_for

BURST = 5


async def test_over_the_limit_is_429_and_a_second_principal_is_unaffected(shop: Shop) -> None:
    settings = settings_for(shop.gateway_env())
    settings = replace(settings, limits=replace(settings.limits, rate_per_second=0.01, rate_burst=BURST))
    factory = CountingFactory(StaticChannelFactory({n: shop.address(n) for n in shop.processes}))
    alice, bob = shop.keys.token("usr_alice"), shop.keys.token("usr_bob")
    async with serve(settings, factory) as gateway:
        statuses = [(await gateway.request("GET", "/v1/orders", token=alice))[0] for _ in range(BURST)]
        assert statuses == [200] * BURST
        status, headers, body = await gateway.request("GET", "/v1/orders", token=alice)
        assert status == 429 and int(headers["retry-after"]) >= 1
        error = json.loads(body)
        assert error["code"] == 8 and error["details"][0]["@type"].endswith("RetryInfo")
        calls = factory.calls
        assert (await gateway.request("GET", "/v1/orders", token=bob))[0] == 200  # bob has his own bucket
        assert factory.calls == calls + 1
        assert (await gateway.request("GET", "/v1/orders", token=alice))[0] == 429
        metrics = (await asyncio.to_thread(http_request, gateway.metrics_port, "GET", "/metrics"))[2]
        assert b"gateway_rate_limited_total 2.0" in metrics
