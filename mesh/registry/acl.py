"""What an operator bootstraps in Consul so that mesh identities mean something: ACL policies,
tokens and intentions, over the agent's HTTP API (synchronous, urllib; run once at start).

With ACLs off, an agent hands a Connect leaf certificate for any service name to any local
process. With ACLs on and ``default_policy = "deny"``, each workload gets a token whose policy
(:func:`service_policy_rules`) lets it register, and fetch a certificate for, its own name only.

Facts checked against a real Consul 1.8.7 dev agent (ACLs on, default deny), for a token
whose policy is ``service "order" { policy = "write" }`` plus read on every service and node:

- ``PUT /v1/agent/service/register`` (with a gRPC check) and ``/v1/agent/service/deregister``
  of ``order`` succeed; for ``payment`` they answer 403 "Missing service:write on payment".
  The agent's anti-entropy syncs the service with the token it was registered with: the
  catalog shows it, no "blocked by ACLs" warning.
- ``GET /v1/agent/connect/ca/leaf/order`` succeeds; ``.../leaf/payment`` answers 403, and so
  does any leaf without a token (the anonymous token has no policy).
- ``GET /v1/agent/connect/ca/roots`` needs no token at all.
- ``POST /v1/agent/connect/authorize`` needs service:write on ``Target``: allowed for
  ``Target=order``, 403 for ``Target=payment``. With no matching intention it answers
  ``Authorized: false`` ("Default behavior configured by ACLs"); an explicit ``* -> *`` deny
  makes that visible as an intention.
- ``GET /v1/connect/intentions`` (and its blocking form ``?index=``) lists only the
  intentions whose destination the token may read: with ``service "order"`` write alone it
  saw only ``* -> *``; ``service_prefix "" read`` shows them all. Anonymous: an empty list.
- ``GET /v1/health/service/<other>?passing=1`` (and ``?index=``) needs ``node:read`` as well
  as ``service:read``: without ``node_prefix "" read`` every row is filtered out (an empty
  list, not a 403), even for the token's own service.
- Creating intentions, policies or tokens needs a management token (the workload's: 403).
- A token may be created with a chosen ``SecretID`` (a UUID); creating it again answers 500
  "SecretID is already in use", so :meth:`ConsulAcl.create_token` updates an existing one.
  ``GET /v1/acl/token/self`` answers 403 "ACL not found" for an unknown secret, and 401
  "ACL support disabled" when the agent runs without ACLs.
- A second ``POST /v1/connect/intentions`` for the same source and destination answers 500
  "duplicate intention found"; ``PUT /v1/connect/intentions/<id>`` replaces one.
- Exact names take precedence over wildcards (precedence 9 for exact -> exact, 5 for
  ``* -> *``), so the shop's allows win over its ``* -> *`` deny.

Errors are :class:`ConsulAclError`, naming the request and the agent's answer; tokens travel
only in the ``X-Consul-Token`` header and are never part of a message.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["allow", "deny"]
ACL_DISABLED = "ACL support disabled"
WILDCARD = "*"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class ConsulAclError(RuntimeError):
    """The agent refused or failed an ACL or intention request."""

    def __init__(self, method: str, path: str, address: str, status: int | None, answer: str) -> None:
        where = f"{method} {path} at {address}"
        said = f"{status} {answer}".strip() if status is not None else answer
        super().__init__(f"{where}: {said}")
        self.status = status
        self.answer = answer


@dataclass(frozen=True)
class Intention:
    """One intention as Consul lists it."""

    id: str
    source: str
    destination: str
    action: Action


def service_policy_rules(name: str) -> str:
    """The ACL rules (HCL) of workload ``name``: write on its own service, read on the rest.

    Write on ``name`` is what registering, deregistering, fetching its leaf and asking
    ``/v1/agent/connect/authorize`` about calls *to* it need; read on every service and node
    is what discovery (health queries) and following intentions need (see the module notes).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a service name: {name!r}")
    return "\n".join(
        (
            f'service "{name}" {{ policy = "write" }}',
            'service_prefix "" { policy = "read" }',
            'node_prefix "" { policy = "read" }',
        )
    )


def _http_url(address: str) -> str:
    return (address if "//" in address else f"http://{address}").rstrip("/")


class ConsulAcl:
    """ACL policies, tokens and intentions of the agent at ``address``, with ``token``."""

    def __init__(self, address: str, token: str = "", *, timeout: float = 5.0) -> None:
        self.address = _http_url(address)
        self._token = token  # sent as X-Consul-Token; never in a message or a repr
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"ConsulAcl({self.address!r})"

    def _call(self, method: str, path: str, body: object = None, *, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.address + path, data=data, method=method)
        secret = self._token if token is None else token
        if secret:
            request.add_header("X-Consul-Token", secret)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            answer = error.read().decode(errors="replace").strip()
            raise ConsulAclError(method, path, self.address, error.code, answer) from None
        except OSError as error:
            raise ConsulAclError(method, path, self.address, None, f"no answer ({error})") from None
        return json.loads(raw) if raw.strip() else None

    def acl_enabled(self) -> bool:
        """Whether the agent enforces ACLs (it answers 401 "ACL support disabled" when not)."""
        try:
            self._call("GET", "/v1/acl/token/self")
        except ConsulAclError as error:
            if error.status == 401 and ACL_DISABLED in error.answer:
                return False
            if error.status == 403:  # this token is unknown, yet ACLs are on
                return True
            raise
        return True

    def token_works(self) -> bool:
        """Whether this client's token is known to the agent (ACLs on)."""
        try:
            self._call("GET", "/v1/acl/token/self")
        except ConsulAclError as error:
            if error.status == 403:
                return False
            raise
        return True

    def create_policy(self, name: str, rules: str, description: str = "") -> str:
        """Create the policy ``name`` with ``rules``, or replace the rules of the existing one; its ID."""
        body = {"Name": name, "Rules": rules, "Description": description}
        try:
            existing = self._call("GET", f"/v1/acl/policy/name/{urllib.parse.quote(name, safe='')}")
        except ConsulAclError as error:
            if error.status not in (403, 404):  # 1.8.7 answers 403 "ACL not found" for a missing name
                raise
            existing = None
        if existing:
            updated = self._call("PUT", f"/v1/acl/policy/{existing['ID']}", body)
            return str(updated["ID"])
        created = self._call("PUT", "/v1/acl/policy", body)
        return str(created["ID"])

    def create_token(self, policy: str, description: str = "", secret_id: str = "") -> str:
        """A token holding the policy named ``policy``; its SecretID.

        With ``secret_id`` (a UUID), the token gets that secret: created when the agent does
        not know it, else given ``policy`` and ``description`` in place of what it had. That
        is how a restarted dev agent (which forgets every token) takes the same secrets again.
        """
        body: dict[str, object] = {"Description": description, "Policies": [{"Name": policy}]}
        if secret_id:
            try:
                existing = self._call("GET", "/v1/acl/token/self", token=secret_id)
            except ConsulAclError as error:
                if error.status != 403:  # 403 "ACL not found": a new secret
                    raise
                existing = None
            if existing:
                self._call("PUT", f"/v1/acl/token/{existing['AccessorID']}", body)
                return secret_id
            body["SecretID"] = secret_id
        created = self._call("PUT", "/v1/acl/token", body)
        return str(created["SecretID"])

    def intentions(self) -> list[Intention]:
        """Every intention this token may read."""
        rows = self._call("GET", "/v1/connect/intentions") or []
        return [Intention(r["ID"], r["SourceName"], r["DestinationName"], r["Action"]) for r in rows]

    def set_intention(self, source: str, destination: str, action: Action, description: str = "") -> str:
        """Create the intention ``source -> destination``, or replace the one there is; its ID."""
        if action not in ("allow", "deny"):
            raise ValueError(f"an intention's action is allow or deny, not {action!r}")
        for name in (source, destination):
            if name != WILDCARD and not _NAME.fullmatch(name):
                raise ValueError(f"not a service name: {name!r}")
        body = {
            "SourceName": source,
            "DestinationName": destination,
            "Action": action,
            "Description": description,
        }
        for intention in self.intentions():
            if (intention.source, intention.destination) == (source, destination):
                self._call("PUT", f"/v1/connect/intentions/{intention.id}", body)
                return intention.id
        created = self._call("POST", "/v1/connect/intentions", body)
        return str(created["ID"])

    def delete_intention(self, intention_id: str) -> None:
        self._call("DELETE", f"/v1/connect/intentions/{urllib.parse.quote(intention_id, safe='')}")
