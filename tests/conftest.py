"""Fixtures shared by every test: the user key pair, databases (SQLite and PostgreSQL), processes.

Service processes run with ``MESH_INSECURE=1`` unless a test says otherwise (tests/support/tokens.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from mesh.identity import generate_keypair
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from tests.support.processes import ROOT, ServiceProcess, free_port, service_env, stop_all
from tests.support.tokens import KeyPair

POSTGRES_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    directory = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(directory)
    return KeyPair(private, public)


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database on this machine's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs against a SQLite file and against a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def consul_agent(tmp_path: Path) -> Iterator[ConsulDevAgent]:
    """A fresh Consul dev agent on free loopback ports, killed by PID afterwards."""
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul.log").start()
    try:
        yield agent
    finally:
        agent.stop()


StartService = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(tmp_path: Path, jwt_keys: KeyPair) -> Iterator[StartService]:
    """Start ``python -m services.<name>`` processes; every one is stopped afterwards."""
    started: list[ServiceProcess] = []

    def start(name: str, **env: str) -> ServiceProcess:
        port = int(env.pop("MESH_PORT", 0)) or free_port()
        base = {"MESH_PORT": str(port), "MESH_DATA_DIR": str(tmp_path / "data"), **jwt_keys.env(name)}
        process = ServiceProcess(name, port, service_env(base, **env), tmp_path / f"{name}-{port}.log")
        started.append(process)
        return process.start()

    yield start
    stop_all(reversed(started))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a ``--dist loadgroup`` run in which xdist cannot pin the groups.

    Tests marked ``xdist_group`` share a worker because they must not run at the same time (one
    cluster of namespaces, one saga shop, a broker a test kills). pytest-xdist pins them by
    appending ``@<group>`` to each item's ``_nodeid`` as it is collected; under a pytest whose
    ids live elsewhere (9.2) that write changes nothing and every group is spread over all
    workers without a word (CI hung so). Probed here, on the controller, before any worker runs.
    """
    if config.getoption("dist", "no") != "loadgroup" or hasattr(config, "workerinput"):
        return
    probe = object.__new__(pytest.Function)
    probe._nodeid = "probe@group"  # what xdist's collection hook writes
    try:
        pinned = probe.nodeid == "probe@group"
    except AttributeError:
        pinned = False
    if not pinned:
        raise pytest.UsageError(
            f"pytest-xdist cannot pin xdist_group tests to one worker under pytest {pytest.__version__}:"
            " install the pytest version pyproject.toml names"
        )
