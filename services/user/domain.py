"""User rules, free of I/O: what a valid account is, how passwords are hashed, what a token says.

Passwords are hashed with scrypt (memory-hard, in the standard library) and stored in a
self-describing ``scrypt$N$r$p$salt$hash`` form, so the cost can be raised later without
losing the ability to verify older hashes. Nothing here ever logs or returns a password.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mesh.identity import Principal
from services.common import limits
from services.common.errors import InvalidArgument, NotFound, Unauthenticated

MIN_PASSWORD = limits.PASSWORD_MIN
MAX_PASSWORD = limits.PASSWORD_MAX
MAX_EMAIL = limits.EMAIL_MAX
MAX_LOCAL_PART = limits.EMAIL_LOCAL_PART_MAX
MAX_DISPLAY_NAME = limits.DISPLAY_NAME_MAX
# Deliberately loose on the local part (quoted and internationalized forms exist) and strict
# on the domain (ASCII labels, punycode for IDNs, at least one dot).
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = re.compile(rf"^[^@\s]+@{LABEL}(?:\.{LABEL})+$")
UPDATABLE_PATHS = frozenset({"display_name"})

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# 128 * r * N bytes (16 MiB) for the defaults; the head-room lets verification of hashes
# stored with up to 4x the cost still run.
SCRYPT_MAXMEM = 128 * SCRYPT_R * SCRYPT_N * 4 + 1024 * 1024

INVALID_CREDENTIALS = "invalid email or password"


class Role(StrEnum):
    """A role as named in the JWT ``roles`` claim."""

    CUSTOMER = "customer"
    ADMIN = "admin"


CUSTOMER_ROLES = (Role.CUSTOMER,)
ADMIN_ROLES = (Role.ADMIN, Role.CUSTOMER)


@dataclass(frozen=True)
class Registration:
    """A validated registration: the email normalized, the display name stored as free text."""

    email: str
    display_name: str
    request_id: str


def normalize_email(email: str) -> str:
    """The stored form of an email: trimmed and lower-cased, so uniqueness ignores case."""
    return email.strip().lower()


def _email_violation(email: str) -> str | None:
    if not email:
        return "required"
    if len(email) > MAX_EMAIL:
        return f"at most {MAX_EMAIL} characters"
    if not EMAIL.fullmatch(email) or len(email.rsplit("@", 1)[0]) > MAX_LOCAL_PART:
        return "must be an email address such as name@example.com"
    if limits.unprintable(email):
        return limits.UNPRINTABLE_RULE
    return None


def _password_violation(password: str) -> str | None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"must be between {MIN_PASSWORD} and {MAX_PASSWORD} characters"
    return None


def _display_name_violation(display_name: str) -> str | None:
    return limits.free_text_violation(display_name, MAX_DISPLAY_NAME)


def validate_registration(email: str, password: str, display_name: str, request_id: str) -> Registration:
    """Check every field at once, so a client learns all its mistakes in one round trip."""
    normalized = normalize_email(email)
    name = limits.free_text(display_name)
    checks = {
        "email": _email_violation(normalized),
        "password": _password_violation(password),
        "display_name": _display_name_violation(name),
        "request_id": limits.request_id_violation(request_id),
    }
    violations = {field: problem for field, problem in checks.items() if problem}
    if violations:
        raise InvalidArgument(violations)
    return Registration(normalized, name, request_id)


def validate_login(email: str, password: str) -> str:
    """The normalized email of a login attempt.

    Only presence and size are checked: a malformed email is simply one that matches no
    account, and gets the same UNAUTHENTICATED as a wrong password.
    """
    violations: dict[str, str] = {}
    if not email.strip():
        violations["email"] = "required"
    elif len(email) > MAX_EMAIL:
        violations["email"] = f"at most {MAX_EMAIL} characters"
    if not password:
        violations["password"] = "required"
    elif len(password) > MAX_PASSWORD:
        violations["password"] = f"at most {MAX_PASSWORD} characters"
    if violations:
        raise InvalidArgument(violations)
    return normalize_email(email)


def validate_user_id(user_id: str, field: str = "user_id") -> None:
    limits.require_id(field, user_id)


def validate_update(user_id: str, paths: Sequence[str], display_name: str, request_id: str = "") -> str:
    """The new display name of an UpdateUser; an empty mask means display_name."""
    violations: dict[str, str] = {}
    limits.require_ids((("user.user_id", user_id),), violations)
    problem = limits.request_id_violation(request_id)
    if problem:
        violations["request_id"] = problem
    if len(paths) > limits.UPDATE_MASK_PATHS_MAX:
        violations["update_mask.paths"] = f"at most {limits.UPDATE_MASK_PATHS_MAX} paths"
        paths = ()
    for index, path in enumerate(paths):
        if len(path) > limits.FIELD_PATH_MAX:
            violations[f"update_mask.paths[{index}]"] = f"at most {limits.FIELD_PATH_MAX} characters"
        elif path not in UPDATABLE_PATHS:
            violations[f"update_mask.paths[{index}]"] = f"'{path}' cannot be updated; only display_name can"
    name = limits.free_text(display_name)
    problem = _display_name_violation(name)
    if problem:
        violations["user.display_name"] = problem
    if violations:
        raise InvalidArgument(violations)
    return name


def invalid_credentials() -> Unauthenticated:
    """One error for an unknown email and a wrong password, so neither reveals the other."""
    return Unauthenticated(INVALID_CREDENTIALS)


def user_not_found(user_id: str) -> NotFound:
    """The same NOT_FOUND for a missing user and one the caller may not see."""
    return NotFound(f"user '{user_id}' not found")


def require_access(principal: Principal, user_id: str) -> None:
    """Callers see themselves; admins and services see anyone; others learn nothing."""
    if not principal.may_act_for(user_id):
        raise user_not_found(user_id)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<b64 salt>$<b64 key>`` for a password, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=KEY_BYTES,
        maxmem=SCRYPT_MAXMEM,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` produces ``encoded``; compared in constant time.

    Raises ValueError for a stored value that is not one of our hashes: that is corrupt
    data to be noticed, not a wrong password.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not an scrypt password hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("malformed scrypt password hash") from None
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=SCRYPT_MAXMEM
    )
    return hmac.compare_digest(key, expected)


@functools.cache
def dummy_hash() -> str:
    """A hash of a random secret, verified when an email is unknown.

    Login then costs one scrypt whether or not the account exists, so response time does
    not tell an attacker which emails are registered.
    """
    return hash_password(secrets.token_urlsafe(32))


def build_claims(
    user_id: str, roles: Iterable[Role], *, issuer: str, audience: str, now: int, ttl_seconds: float
) -> dict[str, Any]:
    """The JWT claims every verifier requires (sub, roles, iss, aud, iat, exp)."""
    return {
        "sub": user_id,
        "roles": [role.value for role in roles],
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + math.ceil(ttl_seconds),
    }
