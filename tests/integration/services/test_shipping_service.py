"""The shipping service as a real process, called through the generated stubs."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shop.shipping.v1 import shipping_pb2 as pb
from shop.shipping.v1 import shipping_pb2_grpc
from tests.conftest import StartService
from tests.support.tokens import KeyPair

TOKYO = pb.Address(
    recipient="Aiko Tanaka", line1="1-2-3 Shibuya", city="Tokyo", postal_code="150-0002", country_code="JP"
)


def schedule(
    shipment_id: str, address: pb.Address = TOKYO, user_id: str = "u-1"
) -> pb.ScheduleShipmentRequest:
    return pb.ScheduleShipmentRequest(
        shipment_id=shipment_id, order_id="o-1", user_id=user_id, address=address
    )


def details(error: grpc.aio.AioRpcError) -> list[object]:
    status = rpc_status.from_call(error)
    assert status is not None
    unpacked: list[object] = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            message = kind()
            if detail.Unpack(message):
                unpacked.append(message)
    return unpacked


async def test_shipments_and_errors(start_service: StartService, jwt_keys: KeyPair) -> None:
    service = start_service("shipping")
    customer = jwt_keys.metadata("u-1")
    order_service = jwt_keys.service_metadata("order")
    stranger = jwt_keys.metadata("u-2")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = shipping_pb2_grpc.ShippingServiceStub(channel)

        scheduled = (await stub.ScheduleShipment(schedule("s-1"), metadata=order_service)).shipment
        assert scheduled.state == pb.SHIPMENT_STATE_SCHEDULED
        assert scheduled.address == TOKYO
        assert scheduled.tracking_number.startswith("TSG")
        transit = scheduled.estimated_delivery_time.ToDatetime() - scheduled.create_time.ToDatetime()
        assert transit == timedelta(days=3)
        again = await stub.ScheduleShipment(schedule("s-1"), metadata=order_service)
        assert again.shipment == scheduled
        elsewhere = pb.Address(
            recipient="A", line1="B", city="Osaka", postal_code="530-0001", country_code="JP"
        )
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.ScheduleShipment(schedule("s-1", elsewhere), metadata=order_service)
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS

        got = await stub.GetShipment(pb.GetShipmentRequest(shipment_id="s-1"), metadata=customer)
        assert got.shipment == scheduled

        # An unsupported country is refused by name, and nothing is stored.
        rio = pb.Address(recipient="A", line1="B", city="Rio", postal_code="20000-000", country_code="BR")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ScheduleShipment(schedule("s-2", rio), metadata=order_service)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'BR'" in (refused.value.details() or "")
        [info] = details(refused.value)
        assert isinstance(info, error_details_pb2.ErrorInfo)
        assert (info.reason, info.domain, dict(info.metadata)) == (
            "DESTINATION_NOT_SUPPORTED",
            "shop.shipping",
            {"country_code": "BR"},
        )
        with pytest.raises(grpc.aio.AioRpcError) as never_stored:
            await stub.GetShipment(pb.GetShipmentRequest(shipment_id="s-2"), metadata=customer)
        assert never_stored.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ScheduleShipment(
                schedule("s-3", pb.Address(recipient="A", line1="B", city="C", country_code="jp")),
                metadata=order_service,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violations] = details(bad.value)
        assert isinstance(violations, error_details_pb2.BadRequest)
        assert {v.field for v in violations.field_violations} == {
            "address.postal_code",
            "address.country_code",
        }

        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.GetShipment(pb.GetShipmentRequest(shipment_id="s-1"), metadata=stranger)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        # Customers never schedule or cancel shipments themselves: only the order service does.
        for call in (
            stub.ScheduleShipment(schedule("s-4"), metadata=stranger),
            stub.ScheduleShipment(schedule("s-5"), metadata=customer),
            stub.CancelShipment(pb.CancelShipmentRequest(shipment_id="s-1"), metadata=customer),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as not_a_service:
                await call
            assert not_a_service.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # Cancelling is repeatable, and cancelling an unknown shipment is a no-op.
        cancelled = await stub.CancelShipment(
            pb.CancelShipmentRequest(shipment_id="s-1"), metadata=order_service
        )
        assert cancelled.shipment.state == pb.SHIPMENT_STATE_CANCELLED
        twice = await stub.CancelShipment(pb.CancelShipmentRequest(shipment_id="s-1"), metadata=order_service)
        assert twice.shipment == cancelled.shipment
        unknown = await stub.CancelShipment(
            pb.CancelShipmentRequest(shipment_id="never-made"), metadata=order_service
        )
        assert not unknown.HasField("shipment")

        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.ScheduleShipment(schedule("s-5"))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as anonymous_get:
            await stub.GetShipment(pb.GetShipmentRequest(shipment_id="s-1"))
        assert anonymous_get.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_service_ships_for_users_where_the_environment_allows(
    start_service: StartService, jwt_keys: KeyPair
) -> None:
    service = start_service("shipping", SHIPPING_SUPPORTED_COUNTRIES="BR")
    saga = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = shipping_pb2_grpc.ShippingServiceStub(channel)
        rio = pb.Address(recipient="A", line1="B", city="Rio", postal_code="20000-000", country_code="BR")
        shipped = await stub.ScheduleShipment(schedule("s-1", rio, user_id="u-7"), metadata=saga)
        assert shipped.shipment.user_id == "u-7"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ScheduleShipment(schedule("s-2", TOKYO), metadata=saga)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'JP'" in (refused.value.details() or "")
