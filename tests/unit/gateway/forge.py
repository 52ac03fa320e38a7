"""Forged and broken bearer tokens: every one must be refused (401) before any upstream call."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt

from tests.support.tokens import AUDIENCE, ISSUER, KID, KeyPair


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, object]) -> str:
    return b64(json.dumps(value).encode())


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "usr_forged",
        "roles": ["admin"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(keys: KeyPair, payload: dict[str, object], **headers: object) -> str:
    header = {"kid": KID, **headers}
    return jwt.encode(payload, keys.private.read_text(), algorithm="EdDSA", headers=header)


def unsigned(alg: str) -> str:
    return f"{segment({'alg': alg, 'typ': 'JWT', 'kid': KID})}.{segment(claims())}."


def hs256_with_public_key(keys: KeyPair) -> str:
    head = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': KID})}.{segment(claims())}"
    mac = hmac.new(keys.public.read_bytes(), head.encode(), hashlib.sha256).digest()
    return f"{head}.{b64(mac)}"


def altered_payload(keys: KeyPair) -> str:
    header, _, signature = signed(keys, claims(roles=["customer"])).split(".")
    return f"{header}.{segment(claims(roles=['admin']))}.{signature}"


def stripped_signature(keys: KeyPair) -> str:
    header, payload, _ = signed(keys, claims()).split(".")
    return f"{header}.{payload}."


def now_plus(seconds: int) -> int:
    return int(time.time()) + seconds


FORGED: dict[str, Callable[[KeyPair], str]] = {
    "alg none": lambda k: unsigned("none"),
    "alg None": lambda k: unsigned("None"),
    "alg NONE": lambda k: unsigned("NONE"),
    "alg nOnE": lambda k: unsigned("nOnE"),
    "alg none with a signature": lambda k: unsigned("none") + "c2lnbmF0dXJl",
    "HS256 signed with the public key": hs256_with_public_key,
    "unknown kid": lambda k: signed(k, claims(), kid="someone-else"),
    "no kid": lambda k: jwt.encode(claims(), k.private.read_text(), algorithm="EdDSA"),
    "expired 10 s ago (past the 5 s leeway)": lambda k: signed(
        k, claims(iat=now_plus(-120), exp=now_plus(-10))
    ),
    "nbf in the future": lambda k: signed(k, claims(nbf=now_plus(60))),
    "iat in the future": lambda k: signed(k, claims(iat=now_plus(300))),
    "wrong aud": lambda k: signed(k, claims(aud="someone-else")),
    "wrong iss": lambda k: signed(k, claims(iss="evil-issuer")),
    "missing exp": lambda k: signed(k, claims(exp=None)),
    "missing iss": lambda k: signed(k, claims(iss=None)),
    "missing aud": lambda k: signed(k, claims(aud=None)),
    "stripped signature": stripped_signature,
    "altered payload": altered_payload,
    "oversized token": lambda k: signed(k, claims(padding="x" * 9000)),
    "non-base64url segments": lambda k: "@@@.###.$$$",
    "jku header": lambda k: signed(k, claims(), jku="http://127.0.0.1:1/jwks.json"),
    "x5u header": lambda k: signed(k, claims(), x5u="http://127.0.0.1:1/cert.pem"),
    "embedded jwk": lambda k: signed(k, claims(), jwk={"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
    "two segments": lambda k: ".".join(signed(k, claims()).split(".")[:2]),
    "service role claimed at the edge": lambda k: k.token("service:order", ("service",)),
    "gateway role claimed at the edge": lambda k: k.token("service:gateway", ("gateway",)),
    "roles not a list": lambda k: signed(k, claims(roles="admin")),
}

BAD_HEADERS: dict[str, str] = {
    "basic scheme": "Basic dXNlcjpwYXNz",
    "bearer without token": "Bearer ",
    "token with spaces": "Bearer abc def",
}
