"""User rules: the validation matrix, the password hash format, access and page tokens."""

from __future__ import annotations

import base64

import pytest

from mesh.identity import Principal
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from services.user import domain
from services.user.domain import Role

GOOD = {"email": "Ada@Example.COM", "password": "correct horse", "display_name": "Ada", "request_id": "req-1"}


def violations_of(error: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return dict(error.value.violations)


def test_valid_registration_is_normalized() -> None:
    registration = domain.validate_registration("  Ada@Example.COM ", "correct horse", "  Ada L. ", "")
    assert registration == domain.Registration("ada@example.com", "Ada L.", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", ""),
        ("email", "ada"),
        ("email", "ada@"),
        ("email", "@example.com"),
        ("email", "ada@example"),
        ("email", "ada@exa mple.com"),
        ("email", "a@b@example.com"),
        ("email", "ada@-example.com"),
        ("email", "x" * 65 + "@example.com"),
        ("email", "ada@" + "a" * 250 + ".com"),
        ("email", "ada\u200b@example.com"),
        ("password", ""),
        ("password", "7chars!"),
        ("password", "p" * 1025),
        ("display_name", ""),
        ("display_name", "   "),
        ("display_name", "n" * 101),
        ("display_name", "bell\x07"),
        ("request_id", "has space"),
        ("request_id", "r" * 129),
    ],
)
def test_each_bad_field_is_named(field: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_registration(**{**GOOD, field: value})
    assert set(violations_of(raised)) == {field}


@pytest.mark.parametrize(
    "email", ["a@b.co", "first.last+tag@sub.example.org", "o'hara@example.ie", "user@xn--bcher-kva.example"]
)
def test_plausible_emails_pass(email: str) -> None:
    assert domain.validate_registration(**{**GOOD, "email": email}).email == email.lower()


def test_password_bounds_are_inclusive_and_spaces_count() -> None:
    domain.validate_registration(**{**GOOD, "password": "   ab   "})  # 8 characters, not trimmed
    domain.validate_registration(**{**GOOD, "password": "p" * 1024})
    with pytest.raises(InvalidArgument):
        domain.validate_registration(**{**GOOD, "password": "   ab  "})


def test_every_violation_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_registration("nope", "short", "", "bad id")
    assert set(violations_of(raised)) == {"email", "password", "display_name", "request_id"}


def test_login_checks_only_presence_and_size() -> None:
    assert domain.validate_login(" Ada@Example.com", "whatever") == "ada@example.com"
    assert domain.validate_login("not-an-email", "x") == "not-an-email"
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_login("", "")
    assert set(violations_of(raised)) == {"email", "password"}
    with pytest.raises(InvalidArgument) as too_long:
        domain.validate_login("a@b.co", "p" * 1025)
    assert set(violations_of(too_long)) == {"password"}


def test_credentials_error_is_the_same_for_every_cause() -> None:
    first, second = domain.invalid_credentials(), domain.invalid_credentials()
    assert isinstance(first, Unauthenticated)
    assert str(first) == str(second) == "invalid email or password"


def test_update_mask_allows_only_display_name() -> None:
    assert domain.validate_update("usr_1", [], " New name ") == "New name"
    assert domain.validate_update("usr_1", ["display_name"], "New") == "New"
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_update("usr_1", ["display_name", "email", "roles"], "New")
    assert set(violations_of(raised)) == {"update_mask.paths[1]", "update_mask.paths[2]"}
    with pytest.raises(InvalidArgument) as empty:
        domain.validate_update("", [], "")
    assert set(violations_of(empty)) == {"user.user_id", "user.display_name"}


def test_hash_is_self_describing_and_salted() -> None:
    encoded = domain.hash_password("correct horse")
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32
    assert domain.hash_password("correct horse") != encoded  # a fresh salt each time
    assert "correct horse" not in encoded


def test_hash_is_deterministic_for_a_given_salt() -> None:
    salt = bytes(range(16))
    assert domain.hash_password("pw-12345", salt) == domain.hash_password("pw-12345", salt)


def test_verify_accepts_the_password_and_rejects_others() -> None:
    encoded = domain.hash_password("correct horse")
    assert domain.verify_password("correct horse", encoded)
    assert not domain.verify_password("correct horsf", encoded)
    assert not domain.verify_password("Correct horse", encoded)
    assert not domain.verify_password("", encoded)


def test_verify_honours_the_parameters_stored_in_the_hash() -> None:
    """Hashes made with other costs keep verifying, so the cost can be raised later."""
    import hashlib

    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"old-password", salt=salt, n=2**12, r=8, p=1, dklen=32)
    encoded = f"scrypt$4096$8$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert domain.verify_password("old-password", encoded)
    assert not domain.verify_password("new-password", encoded)


@pytest.mark.parametrize(
    "stored", ["", "plain", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$AA==$AA==", "scrypt$16384$8$1$!!$AA=="]
)
def test_verify_refuses_values_that_are_not_our_hashes(stored: str) -> None:
    with pytest.raises(ValueError):
        domain.verify_password("anything", stored)


def test_dummy_hash_costs_the_same_as_a_real_one() -> None:
    dummy = domain.dummy_hash()
    assert dummy.split("$")[:4] == domain.hash_password("x" * 8).split("$")[:4]
    assert not domain.verify_password("correct horse", dummy)
    assert domain.dummy_hash() is dummy


def test_claims_carry_what_every_verifier_requires() -> None:
    claims = domain.build_claims(
        "usr_1", [Role.ADMIN, Role.CUSTOMER], issuer="iss", audience="aud", now=1000, ttl_seconds=60.5
    )
    assert claims == {
        "sub": "usr_1",
        "roles": ["admin", "customer"],
        "iss": "iss",
        "aud": "aud",
        "iat": 1000,
        "exp": 1061,
    }


def test_access_is_self_admin_or_service_and_otherwise_not_found() -> None:
    domain.require_access(Principal("usr_1", frozenset({"customer"})), "usr_1")
    domain.require_access(Principal("usr_9", frozenset({"admin"})), "usr_1")
    domain.require_access(Principal("order", frozenset({"service"})), "usr_1")
    with pytest.raises(NotFound) as raised:
        domain.require_access(Principal("usr_2", frozenset({"customer"})), "usr_1")
    assert str(raised.value) == str(domain.user_not_found("usr_1"))
