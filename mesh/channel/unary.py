"""Unary-unary calls on a MeshChannel: the engine's attempts, awaited inline.

A mesh unary call starts when it is awaited and drives its attempts in the awaiting
coroutine, without a task of its own: grpc.aio already runs one task per call, and the
picker's budget is the gap to a bare channel (bench/mesh_overhead.py). Status methods used
without awaiting the call start the same drive in a background task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import grpc.aio

from mesh.channel.call import MeshCall, retrieve_exception


class MeshUnaryUnaryCall(MeshCall):
    """A unary-unary call with failover and retries; awaiting it returns the response."""

    _result: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._driving:
            self._driving = True
            return self._drive().__await__()
        return self._result_when_done().__await__()

    def _drive_in_background(self) -> None:
        if not self._driving:
            self._driving = True
            self._task = asyncio.ensure_future(self._drive())
            self._task.add_done_callback(retrieve_exception)

    async def _drive(self) -> Any:
        while True:
            call = self._call = self._start() or await self._start_later()
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                await self._back_off(self._failed(error))  # _failed() raises to stop
                continue
            except BaseException as error:
                self._abandoned(error)
                raise
            self._result = response
            self._succeeded()
            return response

    async def _result_when_done(self) -> Any:
        await self._wait_finished()
        if self._error is not None:
            raise self._error
        return self._result
