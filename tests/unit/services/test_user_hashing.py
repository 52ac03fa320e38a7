"""The KDF pool: hashes off the loop, and an unknown account still costs one scrypt."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.user import domain
from services.user.hashing import PasswordHasher


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    pool = PasswordHasher()
    yield pool
    pool.close()


async def test_hash_then_verify(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse")
    assert await hasher.verify("correct horse", encoded)
    assert not await hasher.verify("wrong horse", encoded)


async def test_unknown_account_runs_the_kdf_against_the_dummy_hash(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = domain.verify_password

    def spy(password: str, encoded: str) -> bool:
        seen.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(domain, "verify_password", spy)
    assert not await hasher.verify("any password", None)
    assert seen == [domain.dummy_hash()]
