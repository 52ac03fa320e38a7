"""Running the password KDF off the event loop, in a small pool of its own.

One scrypt derivation takes 16 MiB and around 0.1 s of CPU. On the event loop it would stall
every other call; on the default executor a burst of logins could take every thread and a
lot of memory. A dedicated, bounded pool keeps both in check (hashlib.scrypt releases the
GIL, so the loop keeps serving meanwhile).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from services.user import domain

DEFAULT_WORKERS = 2


class PasswordHasher:
    """Async hash and verify; verifying against ``None`` still pays for one scrypt."""

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrypt")
        # Computed now, so the first login with an unknown email is not slower than the rest.
        self._dummy = domain.dummy_hash()

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, domain.hash_password, password)

    async def verify(self, password: str, encoded: str | None) -> bool:
        """True when the password matches; always False (after equal work) for ``None``."""
        loop = asyncio.get_running_loop()
        matched = await loop.run_in_executor(
            self._executor, domain.verify_password, password, encoded if encoded is not None else self._dummy
        )
        return matched and encoded is not None

    def close(self) -> None:
        self._executor.shutdown(wait=True)
