"""Idempotency keys: one key names one request, in every service.

A caller-chosen key (a ``request_id``, or a caller-chosen resource id such as ``payment_id``)
makes a re-send safe: the same key with the same request returns the first result. The same
key with a *different* request is refused, never answered with the first request's result
(which would hand the caller an order, a payment or an account it did not ask for):
ALREADY_EXISTS (HTTP 409 at the gateway) with ``google.rpc.ErrorInfo`` reason
``IDEMPOTENCY_KEY_REUSED`` whose metadata names the key, ``{"request_id": "<key>"}``.

"The same request" means the same meaningful fields, as validated (trimmed, normalized,
merged): a :func:`fingerprint` over them. Where a service already stores the request's fields
beside the key (an order's items and address, a payment's terms) it compares those; the RPCs
whose key would otherwise be forgotten remember it in a ``request_keys`` table (each service's
migrations create it) through :func:`claim`, in the transaction that acts on the request.

A key is scoped to its caller and its RPC (``CancelOrder:usr_…``), so one caller cannot
collide with, or probe, another's keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from google.rpc import error_details_pb2

from services.common.database import Tx
from services.common.errors import AlreadyExists
from services.common.values import utc_now

REASON = "IDEMPOTENCY_KEY_REUSED"


class KeyReused(AlreadyExists):
    """The key was used before for a different request (ALREADY_EXISTS, ErrorInfo naming it).

    The message names only the key the caller sent: nothing of the earlier request.
    """

    def __init__(self, field: str, key: str, domain: str) -> None:
        super().__init__(f"{field} '{key}' was already used for a different request; use a new {field}")
        self.field = field
        self.key = key
        self.domain = domain

    def details(self) -> list[Any]:
        return [
            error_details_pb2.ErrorInfo(reason=REASON, domain=self.domain, metadata={self.field: self.key})
        ]


def fingerprint(*fields: object) -> str:
    """A stable digest of a request's meaningful fields (JSON-able values: str, int, lists, dicts).

    Only the digest is stored. Secrets (a password) are never fingerprinted: an unsalted digest
    of one could be guessed offline.
    """
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check(field: str, key: str, first: object, again: object, domain: str) -> None:
    """Refuse ``again`` unless it equals ``first``, the request the key was first used for."""
    if first != again:
        raise KeyReused(field, key, domain)


@dataclass(frozen=True)
class RequestKey:
    """A request_id, the scope it is unique in (RPC and caller) and the request's fingerprint."""

    scope: str
    request_id: str
    fingerprint: str

    @classmethod
    def of(cls, rpc: str, caller: str, request_id: str, *fields: object) -> RequestKey | None:
        """The key of a request, or None when the caller sent no request_id."""
        if not request_id:
            return None
        return cls(f"{rpc}:{caller}", request_id, fingerprint(rpc, *fields))


def claim(tx: Tx, key: RequestKey | None, domain: str) -> bool:
    """Remember ``key`` in this transaction; True the first time, False for a re-send.

    KeyReused when the key was remembered for another fingerprint. A concurrent twin that
    committed first wins (ON CONFLICT), and this request is then compared with it. When the
    transaction rolls back (the request was refused), the key is forgotten with it.
    """
    if key is None:
        return True
    added = tx.execute(
        "INSERT INTO request_keys (scope, request_id, fingerprint, create_time) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, request_id) DO NOTHING",
        (key.scope, key.request_id, key.fingerprint, utc_now()),
    )
    if added:
        return True
    row = tx.one(
        "SELECT fingerprint FROM request_keys WHERE scope = ? AND request_id = ?", (key.scope, key.request_id)
    )
    check("request_id", key.request_id, row["fingerprint"] if row else None, key.fingerprint, domain)
    return False
