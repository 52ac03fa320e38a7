"""gRPC status codes as names, so policy code needs no grpc import.

An interceptor passes ``grpc.StatusCode.X.name`` (``"UNAVAILABLE"``); configuration files
write the same names. Keeping names rather than enum members makes the policies importable
and testable without grpc, and one set of spellings serves code, TOML and environment.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.resilience.validate import FieldError

STATUS_CODE_NAMES = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
"""Every name of ``grpc.StatusCode`` (the 17 canonical codes)."""


def code_names(field: str, values: Iterable[str], *, allow_ok: bool = False) -> frozenset[str]:
    """Validate and normalise status code names (case-insensitive) into a frozenset.

    A string is rejected rather than iterated character by character: ``"UNAVAILABLE"``
    passed where a set is expected is a typo, not eleven one-letter codes.
    """
    if isinstance(values, str):
        raise FieldError(field, f"must be a collection of status code names, got the string {values!r}")
    names = set()
    for value in values:
        if not isinstance(value, str):
            raise FieldError(field, f"must contain status code names, got {value!r}")
        name = value.strip().upper()
        if name not in STATUS_CODE_NAMES:
            raise FieldError(field, f"unknown status code {value!r}")
        if name == "OK" and not allow_ok:
            raise FieldError(field, "must not contain OK")
        names.add(name)
    return frozenset(names)
