import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.order.v1 import order_pb2 as _order_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_EVENT_KIND_UNSPECIFIED: _ClassVar[OrderEventKind]
    ORDER_EVENT_KIND_CREATED: _ClassVar[OrderEventKind]
    ORDER_EVENT_KIND_CONFIRMED: _ClassVar[OrderEventKind]
    ORDER_EVENT_KIND_CANCELLED: _ClassVar[OrderEventKind]
ORDER_EVENT_KIND_UNSPECIFIED: OrderEventKind
ORDER_EVENT_KIND_CREATED: OrderEventKind
ORDER_EVENT_KIND_CONFIRMED: OrderEventKind
ORDER_EVENT_KIND_CANCELLED: OrderEventKind

class OrderEvent(_message.Message):
    __slots__ = ("event_id", "kind", "occur_time", "order")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: OrderEventKind
    occur_time: _timestamp_pb2.Timestamp
    order: _order_pb2.Order
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[_Union[OrderEventKind, str]] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...
