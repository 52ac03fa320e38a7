"""QuoteService: prices a quantity of a product, asking the shop's inventory for the price."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from google.type import money_pb2
from grpc_status import rpc_status
from quotes.v1 import quotes_pb2, quotes_pb2_grpc

from shop.inventory.v1 import inventory_pb2
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub

MAX_QUANTITY = 1000
NANOS = 1_000_000_000
# The inventory's answers about the request, passed on as they are. Anything else, a timeout
# after every retry included, means it is down for us: UNAVAILABLE, naming it.
PASSED_ON = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


class QuoteServicer(quotes_pb2_grpc.QuoteServiceServicer):
    def __init__(self, inventory: InventoryServiceStub) -> None:
        self._inventory = inventory  # a stub over the mesh channel to "inventory"

    async def GetQuote(
        self, request: quotes_pb2.GetQuoteRequest, context: grpc.aio.ServicerContext
    ) -> quotes_pb2.GetQuoteResponse:
        quantity = request.quantity or 1
        if not request.sku:
            await invalid_argument(context, "sku", "is required")
        if not 1 <= quantity <= MAX_QUANTITY:
            await invalid_argument(context, "quantity", f"must be within 1..{MAX_QUANTITY}")
        try:
            # At most 2 s, and never past our own caller's deadline (the mesh propagates it).
            # Retries of this read, and each attempt's timeout, come from POLICY in __main__.
            reply = await self._inventory.GetProduct(
                inventory_pb2.GetProductRequest(sku=request.sku), timeout=2.0
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in PASSED_ON:  # with its google.rpc.Status (the field it names)
                await context.abort(
                    error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
                )
            await unavailable(context, "inventory")
        product = reply.product
        quote = quotes_pb2.Quote(
            sku=product.sku,
            name=product.name,
            quantity=quantity,
            unit_price=product.price,
            total=times(product.price, quantity),
            in_stock=product.stock >= quantity,
        )
        return quotes_pb2.GetQuoteResponse(quote=quote)


def times(price: money_pb2.Money, quantity: int) -> money_pb2.Money:
    """``price`` times ``quantity``, exact (google.type.Money is units plus nanos)."""
    units, nanos = divmod((price.units * NANOS + price.nanos) * quantity, NANOS)
    return money_pb2.Money(currency_code=price.currency_code, units=units, nanos=nanos)


async def invalid_argument(context: grpc.aio.ServicerContext, field: str, description: str) -> None:
    """End the call with INVALID_ARGUMENT and a google.rpc.BadRequest naming the field: the
    gateway turns it into HTTP 400 with the field in the body."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    detail = error_details_pb2.BadRequest(field_violations=[violation])
    await abort(context, code_pb2.INVALID_ARGUMENT, f"{field}: {description}", detail)


async def unavailable(context: grpc.aio.ServicerContext, dependency: str) -> None:
    """End the call with UNAVAILABLE naming what is down. As a google.rpc.Status: a bare
    UNAVAILABLE could be grpc-core's own, which the gateway puts in its own words."""
    detail = error_details_pb2.ErrorInfo(
        reason="DEPENDENCY_UNAVAILABLE", domain="tsunagu", metadata={"name": dependency}
    )
    await abort(context, code_pb2.UNAVAILABLE, f"{dependency} is unavailable", detail)


async def abort(context: grpc.aio.ServicerContext, code: int, message: str, detail: Message) -> None:
    """End the call with a google.rpc.Status carrying ``detail``, for gRPC and REST callers alike."""
    packed = any_pb2.Any()
    packed.Pack(detail)
    rich = rpc_status.to_status(status_pb2.Status(code=code, message=message, details=[packed]))
    await context.abort(rich.code, rich.details, rich.trailing_metadata)
