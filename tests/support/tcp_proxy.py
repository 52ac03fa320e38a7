"""A TCP forwarder on 127.0.0.1 that a test can sever and bring back: a broker outage on demand.

The machine's RabbitMQ is shared and must never be stopped, so a consumer under test connects
through this proxy instead; :meth:`TcpProxy.stop` closes the listener and every forwarded
connection (the client sees the broker vanish), :meth:`TcpProxy.start` listens again on the
same port (the broker is back). :meth:`TcpProxy.sever` is the gentler outage: it cuts every
connection and then accepts-and-drops new ones, counting them in ``refused``, so a test can
wait for the client's reconnect attempts instead of sleeping; :meth:`TcpProxy.heal` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self.refusing = False

    async def start(self) -> int:
        """Listen (on the previous port after a stop); returns the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def sever(self) -> None:
        """Cut every forwarded connection and drop new ones until :meth:`heal`."""
        self.refusing = True
        await self._cut()

    def heal(self) -> None:
        self.refusing = False

    async def stop(self) -> None:
        """Stop listening and cut every forwarded connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._cut()

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            self.refused += 1
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        pumps = [
            asyncio.ensure_future(self._pump(client_reader, upstream_writer)),
            asyncio.ensure_future(self._pump(upstream_reader, client_writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for writer in (client_writer, upstream_writer):
                writer.transport.abort()
                self._writers.discard(writer)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
