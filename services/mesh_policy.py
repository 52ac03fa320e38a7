"""The shop's mesh policy, as data: who exists (identities) and who may call whom (intentions).

Every identity gets a Consul ACL token that may register, and fetch a certificate for, its
own name only, and read the rest (:func:`mesh.registry.acl.service_policy_rules`). The
intentions allow exactly the calls the shop makes and deny everything else with ``* -> *``
(Consul ranks an exact source and destination above a wildcard, so the allows win):

- ``order`` runs the checkout saga: it calls inventory, payment, shipping and user;
- ``gateway``, the REST edge, calls every service on its clients' behalf;
- ``cli`` is the identity tools present (grpcurl with ``mesh cert --client cli``): every service;
  ``mesh xds`` also hands it to local xDS clients (plain grpcio, Node) as their certificate files;
- ``xds``, the control plane, registers itself and reads the catalog: it calls no one;
- ``dashboard`` reads the catalog and every instance's metrics (plain HTTP): it calls no one.

:func:`apply` writes this into an agent with a management token and leaves each identity's
token in ``<directory>/<identity>`` (mode 0600), the file a process gets as
``CONSUL_HTTP_TOKEN_FILE``. A secret already in its file is kept and given to the agent
again (Consul lets the creator choose a token's SecretID): a dev agent restarted by the
launcher forgets every token, and the running processes keep the files they were given.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mesh.registry.acl import ConsulAcl, service_policy_rules
from services.topology_apps import App

SERVICES = ("user", "order", "payment", "inventory", "shipping")
IDENTITIES = (*SERVICES, "gateway", "cli", "xds", "dashboard")
POLICY_PREFIX = "mesh-identity-"


@dataclass(frozen=True)
class MeshPolicy:
    """Identities and the calls allowed between them; every other call is denied."""

    identities: tuple[str, ...]
    allow: tuple[tuple[str, str], ...]
    """(source, destination) pairs."""
    deny: tuple[tuple[str, str], ...] = (("*", "*"),)

    def allows(self, source: str, destination: str) -> bool:
        """What the agent answers for this call under this policy (exact pairs rank first)."""
        return (source, destination) in self.allow


SHOP = MeshPolicy(
    identities=IDENTITIES,
    allow=(
        *(("order", name) for name in ("inventory", "payment", "shipping", "user")),
        *(("gateway", name) for name in SERVICES),
        *(("cli", name) for name in SERVICES),
    ),
)


def with_apps(policy: MeshPolicy, apps: Sequence[App]) -> MeshPolicy:
    """``policy`` plus the team's own services (a topology file's ``[apps]``): each its own
    identity; the gateway and ``cli`` may call it, and it may call exactly its ``calls``."""
    allow = list(policy.allow)
    for app in apps:
        allow += [("gateway", app.name), ("cli", app.name), *((app.name, callee) for callee in app.calls)]
    return replace(
        policy,
        identities=(*policy.identities, *(app.name for app in apps)),
        allow=tuple(dict.fromkeys(allow)),
    )


def token_secret(path: Path) -> str:
    """The token secret kept in ``path``; a new random one (a UUID, as Consul wants) if none yet.

    Created beside its final name and linked into place, so two launchers starting at once
    agree on one secret and neither ever reads a half-written file.
    """
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        os.chmod(path, 0o600)
        return existing
    secret = str(uuid.uuid4())  # uuid4 draws from os.urandom
    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:  # another launcher got there first: use its secret
            return path.read_text().strip()
    finally:
        draft.unlink(missing_ok=True)
    return secret


def apply_intentions(acl: ConsulAcl, policy: MeshPolicy = SHOP) -> None:
    """Create (or replace) the policy's intentions: its allows, then its denies."""
    for source, destination in policy.allow:
        acl.set_intention(source, destination, "allow", "tsunagu shop mesh policy")
    for source, destination in policy.deny:
        acl.set_intention(source, destination, "deny", "tsunagu shop mesh policy: the rest is denied")


def apply(address: str, management_token: str, directory: Path, policy: MeshPolicy = SHOP) -> dict[str, Path]:
    """Write ``policy`` into the agent at ``address``; each identity's token file, by identity.

    ``management_token`` (the dev agent's master token, or an operator's) creates policies,
    tokens and intentions; it is never written anywhere.
    """
    acl = ConsulAcl(address, management_token)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    paths: dict[str, Path] = {}
    for identity in policy.identities:
        name = POLICY_PREFIX + identity
        acl.create_policy(name, service_policy_rules(identity), f"mesh identity {identity}")
        path = directory / identity
        acl.create_token(name, f"mesh identity {identity}", secret_id=token_secret(path))
        paths[identity] = path
    apply_intentions(acl, policy)
    return paths
