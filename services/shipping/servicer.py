"""ShippingService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from dataclasses import asdict

from services.common.auth import Authenticator
from services.common.context import Context
from services.common.errors import PermissionDenied
from services.common.idempotency import RequestKey
from services.common.values import timestamp
from services.shipping import domain
from services.shipping.store import ShipmentRecord, ShippingStore
from shop.shipping.v1 import shipping_pb2 as pb
from shop.shipping.v1 import shipping_pb2_grpc

# The proto enum of each state; a table because Value(name) is typed int, not the enum.
STATES = {
    domain.ShipmentState.SCHEDULED: pb.SHIPMENT_STATE_SCHEDULED,
    domain.ShipmentState.CANCELLED: pb.SHIPMENT_STATE_CANCELLED,
}


def address_pb(address: domain.Address) -> pb.Address:
    return pb.Address(
        recipient=address.recipient,
        line1=address.line1,
        city=address.city,
        postal_code=address.postal_code,
        country_code=address.country_code,
    )


def shipment_pb(record: ShipmentRecord) -> pb.Shipment:
    return pb.Shipment(
        shipment_id=record.shipment_id,
        order_id=record.order_id,
        user_id=record.user_id,
        address=address_pb(record.address),
        state=STATES[record.state],
        tracking_number=record.tracking_number,
        estimated_delivery_time=timestamp(record.estimated_delivery_time),
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


class ShippingServicer(shipping_pb2_grpc.ShippingServiceServicer):  # type: ignore[misc]  # generated grpc code is untyped (Any) for mypy
    """Shipments by caller-chosen id; another user's shipment answers NOT_FOUND."""

    def __init__(self, store: ShippingStore, auth: Authenticator, policy: domain.ShippingPolicy) -> None:
        self._store = store
        self._auth = auth
        self._policy = policy

    async def ScheduleShipment(
        self, request: pb.ScheduleShipmentRequest, context: Context
    ) -> pb.ScheduleShipmentResponse:
        caller = self._auth.service(context)
        a = request.address
        schedule = domain.validate_schedule(
            request.shipment_id,
            request.order_id,
            request.user_id,
            domain.Address(a.recipient, a.line1, a.city, a.postal_code, a.country_code)
            if request.HasField("address")
            else None,
            request.request_id,
        )
        if not caller.may_act_for(schedule.user_id):
            raise PermissionDenied("a shipment can only be scheduled for yourself")
        key = RequestKey.of("ScheduleShipment", caller.subject, request.request_id, asdict(schedule))
        record = await self._store.schedule(schedule, self._policy, key)
        return pb.ScheduleShipmentResponse(shipment=shipment_pb(record))

    async def CancelShipment(
        self, request: pb.CancelShipmentRequest, context: Context
    ) -> pb.CancelShipmentResponse:
        caller = self._auth.service(context)
        domain.validate_shipment_id(request.shipment_id, request.request_id)
        key = RequestKey.of("CancelShipment", caller.subject, request.request_id, request.shipment_id)
        record = await self._store.cancel(request.shipment_id, caller, key)
        return pb.CancelShipmentResponse(shipment=shipment_pb(record) if record else None)

    async def GetShipment(self, request: pb.GetShipmentRequest, context: Context) -> pb.GetShipmentResponse:
        caller = self._auth.required(context)
        domain.validate_shipment_id(request.shipment_id)
        record = await self._store.get(request.shipment_id, caller)
        return pb.GetShipmentResponse(shipment=shipment_pb(record))
