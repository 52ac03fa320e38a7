"""The real grpcurl binary against a running service: reflection only, no proto files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StartService

GRPCURL = Path(sys.executable).parent / "grpcurl"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def inventory_address(start_service: StartService) -> str:
    return start_service("inventory", INVENTORY_SEED_DEMO="1").address


def test_grpcurl_lists_every_hosted_service(inventory_address: str) -> None:
    result = grpcurl(inventory_address, "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "shop.inventory.v1.InventoryService",
    ]


def test_grpcurl_describes_methods_and_messages(inventory_address: str) -> None:
    service = grpcurl(inventory_address, "describe", "shop.inventory.v1.InventoryService")
    assert service.returncode == 0, service.stderr
    assert "rpc ReserveStock ( .shop.inventory.v1.ReserveStockRequest )" in service.stdout
    message = grpcurl(inventory_address, "describe", "shop.inventory.v1.Product")
    assert "google.type.Money price = 3;" in message.stdout


def test_grpcurl_good_call(inventory_address: str) -> None:
    result = grpcurl(
        "-d", '{"sku": "TEA-MATCHA"}', inventory_address, "shop.inventory.v1.InventoryService/GetProduct"
    )
    assert result.returncode == 0, result.stderr
    product = json.loads(result.stdout)["product"]
    assert product["sku"] == "TEA-MATCHA"
    assert product["price"] == {"currency_code": "EUR", "units": "24"}


def test_grpcurl_bad_call_is_invalid_argument_with_field_details(inventory_address: str) -> None:
    result = grpcurl(
        "-d", '{"page_size": -5}', inventory_address, "shop.inventory.v1.InventoryService/ListProducts"
    )
    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stdout + result.stderr
    assert '"field":"page_size"' in (result.stdout + result.stderr).replace(" ", "")


def test_grpcurl_unknown_field_is_rejected_before_sending(inventory_address: str) -> None:
    result = grpcurl(
        "-d", '{"no_such_field": 1}', inventory_address, "shop.inventory.v1.InventoryService/GetProduct"
    )
    assert result.returncode != 0
    assert "no_such_field" in result.stderr
