"""A topology file's ``[apps]``: a team's own services beside the shop (docs/guide.md).

What the launcher makes of an app (identity, intentions, the gateway's modules) is checked
here on the data; tests/integration/test_guide.py runs it for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services import mesh_policy
from services.launcher import gateway_app_env
from services.topology import TopologyError, load_topology
from services.topology_apps import App
from tests.support.topologies import single_host

ROOT = Path(__file__).resolve().parents[3]

QUOTES = """
[apps.quotes]
module = "quotes_service"
pythonpath = [".", "gen"]
port = 50060
instances = 2
protos = ["quotes.v1.quotes_pb2"]
calls = ["inventory"]
public = ["quotes.v1.QuoteService.GetQuote"]
"""


def load(tmp_path: Path, apps: str) -> tuple[App, ...]:
    path = tmp_path / "topology.toml"
    path.write_text(single_host() + apps)
    return load_topology(path).apps


def test_an_app_is_read_with_its_paths_from_the_files_folder(tmp_path: Path) -> None:
    (app,) = load(tmp_path, QUOTES)
    assert app == App(
        name="quotes",
        module="quotes_service",
        port=50060,
        instances=2,
        pythonpath=(tmp_path.resolve(), (tmp_path / "gen").resolve()),
        protos=("quotes.v1.quotes_pb2",),
        calls=("inventory",),
        public=("quotes.v1.QuoteService.GetQuote",),
    )


def test_the_guides_topology_loads() -> None:
    topology = load_topology(ROOT / "examples" / "quotes" / "topology.toml")
    assert [app.name for app in topology.apps] == ["quotes"]
    assert topology.apps[0].pythonpath == (ROOT / "examples/quotes", ROOT / "examples/quotes/gen")


def test_no_apps_is_the_shop_alone(tmp_path: Path) -> None:
    assert load(tmp_path, "") == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[apps.quotes]", "[apps.inventory]"), "apps.inventory: 'inventory' is already a name on the mesh"),
        (("[apps.quotes]", "[apps.gateway]"), "apps.gateway: 'gateway' is already a name on the mesh"),
        (("[apps.quotes]", "[apps.Quotes]"), "apps.Quotes: an app name is lower-case words"),
        (('module = "quotes_service"', 'module = "quotes service"'), "apps.quotes.module: 'quotes service'"),
        (('module = "quotes_service"\n', ""), "apps.quotes.module: missing"),
        (("port = 50060", "port = 0"), "apps.quotes.port: must be an int within 1..65535"),
        (("port = 50060", 'port = "50060"'), "apps.quotes.port: must be an int"),
        (("instances = 2", "instances = 0"), "apps.quotes.instances: must be an int within 1..16"),
        (('calls = ["inventory"]', 'calls = ["warehouse"]'), "apps.quotes.calls: 'warehouse' is neither"),
        (('calls = ["inventory"]', 'calls = "inventory"'), "apps.quotes.calls: must be a list"),
        (
            ('public = ["quotes.v1.QuoteService.GetQuote"]', 'public = ["GetQuote"]'),
            "apps.quotes.public: 'GetQuote' is not package.Service.Method",
        ),
        (("instances = 2", "instances = 2\nreplicas = 3"), "apps.quotes.replicas: unknown key"),
    ],
)
def test_a_broken_app_is_refused_naming_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in QUOTES
    with pytest.raises(TopologyError, match=rf"topology\.toml: {re.escape(message)}"):
        load(tmp_path, QUOTES.replace(old, new))


def test_two_apps_on_one_port_are_refused(tmp_path: Path) -> None:
    second = QUOTES.replace("[apps.quotes]", "[apps.rates]").replace(
        'calls = ["inventory"]', 'calls = ["quotes"]'
    )
    with pytest.raises(
        TopologyError, match=re.escape("apps.rates.port: 50060 is already apps.quotes's port")
    ):
        load(tmp_path, QUOTES + second)


def test_an_app_may_call_another_app(tmp_path: Path) -> None:
    second = (
        QUOTES.replace("[apps.quotes]", "[apps.rates]")
        .replace("port = 50060", "port = 50061")
        .replace('calls = ["inventory"]', 'calls = ["quotes"]')
    )
    assert [app.calls for app in load(tmp_path, QUOTES + second)] == [("inventory",), ("quotes",)]


def test_apps_need_the_single_host_of_make_run(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    text = (ROOT / "deploy" / "cluster.toml").read_text() + QUOTES.replace("local", "app1")
    path.write_text(text)
    with pytest.raises(TopologyError, match="apps run under `make run`"):
        load_topology(path)


def test_an_apps_identity_may_call_exactly_what_it_lists() -> None:
    app = App(name="quotes", module="quotes_service", port=50060, calls=("inventory",))
    policy = mesh_policy.with_apps(mesh_policy.SHOP, [app])
    assert "quotes" in policy.identities
    assert policy.allows("gateway", "quotes")
    assert policy.allows("cli", "quotes")
    assert policy.allows("quotes", "inventory")
    assert not policy.allows("quotes", "payment")
    assert not policy.allows("order", "quotes")
    assert policy.deny == mesh_policy.SHOP.deny
    assert set(mesh_policy.SHOP.allow) < set(policy.allow)  # the shop's calls are all kept


def test_the_gateway_gets_the_apps_modules_beside_its_own(tmp_path: Path) -> None:
    app = App(
        name="quotes",
        module="quotes_service",
        port=50060,
        pythonpath=(tmp_path / "gen",),
        protos=("quotes.v1.quotes_pb2",),
        public=("quotes.v1.QuoteService.GetQuote",),
    )
    env = gateway_app_env({"PYTHONPATH": "/work"}, [app])
    modules = env["GATEWAY_PROTO_MODULES"].split(",")
    assert modules[-1] == "quotes.v1.quotes_pb2" and "shop.inventory.v1.inventory_pb2" in modules
    public = env["GATEWAY_PUBLIC_METHODS"].split(",")
    assert public[-1] == "quotes.v1.QuoteService.GetQuote" and "shop.user.v1.UserService.Login" in public
    assert env["PYTHONPATH"] == f"{tmp_path / 'gen'}:/work"
    chosen = gateway_app_env({"GATEWAY_PROTO_MODULES": "a.b_pb2"}, [app])  # the operator's list is kept
    assert chosen["GATEWAY_PROTO_MODULES"] == "a.b_pb2,quotes.v1.quotes_pb2"
    assert gateway_app_env({}, []) == {}
