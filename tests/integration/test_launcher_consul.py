"""The launcher and a Consul agent it did not start (CONSUL_HTTP_ADDR answers): it needs the
operator's management token to create the shop's tokens and intentions, and says what is
missing when it has none. Real 1.8.7 dev agents, with and without ACLs.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.registry.acl import ConsulAcl
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from services import launcher
from services.launcher import LOG_TAIL_LINES, LaunchError, Mesh, _wait_serving, use_running_consul
from services.mesh_policy import IDENTITIES, SHOP
from tests.support.processes import ROOT, free_port


@pytest.fixture
def token_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "tokens"
    monkeypatch.setattr(launcher, "TOKEN_DIR", directory)
    return directory


@pytest.fixture
def acl_agent(tmp_path: Path) -> Iterator[ConsulDevAgent]:
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul-acl.log", acls=True).start()
    try:
        yield agent
    finally:
        agent.stop()


def address(agent: ConsulDevAgent) -> str:
    return f"127.0.0.1:{agent.ports['http']}"


def test_without_a_token_the_launcher_says_what_is_missing(
    acl_agent: ConsulDevAgent, token_dir: Path
) -> None:
    with pytest.raises(LaunchError) as refused:
        use_running_consul(address(acl_agent), "")
    said = str(refused.value)
    assert "with ACLs on" in said and "CONSUL_HTTP_TOKEN" in said and "management token" in said
    assert not token_dir.exists()


def test_an_unknown_or_unprivileged_token_is_refused_by_name(
    acl_agent: ConsulDevAgent, token_dir: Path
) -> None:
    with pytest.raises(LaunchError, match="does not know the token"):
        use_running_consul(address(acl_agent), "00000000-0000-4000-8000-000000000000")
    acl = ConsulAcl(acl_agent.http_addr, acl_agent.master_token)
    acl.create_policy("reader", 'service_prefix "" { policy = "read" }')
    reader = acl.create_token("reader", "a token that reads")
    with pytest.raises(LaunchError) as refused:
        use_running_consul(address(acl_agent), reader)
    assert "may not create ACL policies" in str(refused.value)
    assert reader not in str(refused.value)


def test_with_a_management_token_it_applies_the_shop_policy_and_children_get_only_their_own_token(
    acl_agent: ConsulDevAgent, token_dir: Path
) -> None:
    mesh = use_running_consul(address(acl_agent), acl_agent.master_token)

    assert set(mesh.token_files) == set(IDENTITIES)
    for identity, path in mesh.token_files.items():
        assert path == token_dir / identity and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert acl_agent.master_token not in repr(mesh)
    intentions = ConsulAcl(acl_agent.http_addr, acl_agent.master_token).intentions()
    assert len(intentions) == len(SHOP.allow) + 1

    operator = {"CONSUL_HTTP_TOKEN": acl_agent.master_token, "CONSUL_HTTP_TOKEN_FILE": "/operator", "X": "1"}
    child = mesh.child_env(operator, "payment")
    assert child == {"CONSUL_HTTP_TOKEN_FILE": str(token_dir / "payment"), "X": "1"}


def test_an_agent_without_acls_gets_the_intentions_and_a_loud_warning(
    consul_agent: ConsulDevAgent, token_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = use_running_consul(address(consul_agent), "")

    assert "WITHOUT ACLs" in capsys.readouterr().out
    assert mesh == Mesh(address(consul_agent), "", {})
    assert mesh.child_env({"CONSUL_HTTP_TOKEN": "x", "X": "1"}, "order") == {"X": "1"}
    assert len(ConsulAcl(consul_agent.http_addr).intentions()) == len(SHOP.allow) + 1
    assert not token_dir.exists()


def test_an_instance_that_dies_while_starting_is_named_with_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "inventory-50054.log"
    log.write_text("".join(f"line {n}\n" for n in range(1, 9)))
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(LaunchError) as refused:
        _wait_serving(f"127.0.0.1:{free_port()}", log, dead)
    message = str(refused.value)
    assert f"(pid {dead.pid}): process exited with 3 before serving" in message
    assert message.splitlines()[-LOG_TAIL_LINES:] == [f"    line {n}" for n in range(4, 9)]
