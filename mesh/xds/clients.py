"""Who is connected to the xDS server and where each client stands, per resource type.

Why a registry of its own: an xDS client that rejects a config (a NACK) keeps running on the
previous one and says so only on its stream; an operator needs to see that without reading
client logs. The state here is the ADS stream's own protocol state (the server reads and
writes it while serving), so what ``/clients`` shows is exactly what the server acts on.

A client is one ADS stream: a client that reconnects is a new entry with fresh state. Local
clients share one bootstrap (and so one node id); they are told apart by ``peer`` (their
address and port) and ``stream`` (a counter). The last streams that ended stay listed, marked
``connected: false``, so a short-lived client's ACKs and NACKs can still be read afterwards.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


@dataclass
class Nack:
    """A response the client rejected: which version, what it said, and when."""

    version: str  # the version it rejected (the one last sent)
    nonce: str
    message: str
    at: float


@dataclass
class TypeState:
    """One resource type on one stream (state of the world).

    ``names`` None is the wildcard (every resource of the type, LDS/CDS with no names).
    ``requested`` is False until the client's first request for the type: the server sends
    nothing of a type nobody asked for.
    """

    type_url: str
    names: frozenset[str] | None = None
    requested: bool = False
    resend: bool = False  # the subscription changed: answer even if the content did not
    sent_version: str = ""
    sent_nonce: str = ""
    sent_digest: str = ""
    sent_names: tuple[str, ...] = ()
    sent_at: float | None = None
    acked_version: str = ""
    acked_at: float | None = None
    nack: Nack | None = None
    responses: int = 0
    ignored: int = 0  # requests carrying a stale nonce

    def as_dict(self) -> dict[str, Any]:
        return {
            "type_url": self.type_url,
            "subscribed": "*" if self.names is None else sorted(self.names),
            "sent_version": self.sent_version,
            "sent_nonce": self.sent_nonce,
            "sent_resources": list(self.sent_names),
            "sent_at": _iso(self.sent_at),
            "acked_version": self.acked_version,
            "acked_at": _iso(self.acked_at),
            "pending": bool(self.sent_nonce)
            and self.acked_version != self.sent_version
            and self.nack is None,
            "nack": None
            if self.nack is None
            else {
                "version": self.nack.version,
                "nonce": self.nack.nonce,
                "message": self.nack.message,
                "at": _iso(self.nack.at),
            },
            "responses": self.responses,
            "stale_requests": self.ignored,
        }


@dataclass
class ClientState:
    """One ADS stream: the node it named, where it connects from, and its types."""

    stream: int
    peer: str
    connected_at: float
    disconnected_at: float | None = None
    node_id: str = ""
    node_cluster: str = ""
    node_metadata: dict[str, Any] = field(default_factory=dict)
    node_locality: dict[str, str] = field(default_factory=dict)
    user_agent: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)
    unknown_requests: int = 0  # requests for type URLs the server does not serve (ignored)

    def type_state(self, type_url: str) -> TypeState:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(type_url)
        return state

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "peer": self.peer,
            "connected": self.disconnected_at is None,
            "connected_since": _iso(self.connected_at),
            "disconnected_at": _iso(self.disconnected_at),
            "node": {
                "id": self.node_id,
                "cluster": self.node_cluster,
                "locality": dict(self.node_locality),
                "metadata": self.node_metadata,
                "user_agent": self.user_agent,
            },
            "types": {url: state.as_dict() for url, state in sorted(self.types.items())},
            "unknown_requests": self.unknown_requests,
        }


class ClientRegistry:
    """The streams open now (and the last ``keep_ended`` that ended); one per ADS stream."""

    def __init__(self, keep_ended: int = 32) -> None:
        self._clients: dict[int, ClientState] = {}
        self._ended: deque[ClientState] = deque(maxlen=keep_ended)
        self._ids = itertools.count(1)

    def connect(self, peer: str) -> ClientState:
        state = ClientState(stream=next(self._ids), peer=peer, connected_at=time.time())
        self._clients[state.stream] = state
        return state

    def disconnect(self, state: ClientState) -> None:
        if self._clients.pop(state.stream, None) is not None:
            state.disconnected_at = time.time()
            self._ended.append(state)

    def __len__(self) -> int:
        """How many streams are open."""
        return len(self._clients)

    def all(self) -> list[ClientState]:
        """The open streams, oldest first."""
        return [self._clients[key] for key in sorted(self._clients)]

    def as_list(self) -> list[dict[str, Any]]:
        """The open streams, then the recently ended ones, as JSON-ready data (``GET /clients``)."""
        ended = sorted(self._ended, key=lambda state: state.stream)
        return [client.as_dict() for client in (*self.all(), *ended)]
