"""The layering rules the code keeps, checked on the import graph read from the source.

Each rule names the modules that are today's exceptions; a new import that breaks a rule fails
here until it is removed or, deliberately, added to the exceptions (docs/architecture.md says
which of them are debts to pay off).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.import_graph import imports, modules

GRAPH = imports()
IO_MODULES = {"asyncio", "socket", "time", "threading", "selectors", "subprocess", "sqlite3", "ssl", "http", "urllib"}


def _edges(source: str, target: str) -> set[tuple[str, str]]:
    return {
        (s, d)
        for s, ds in GRAPH.items()
        for d in ds
        if (s == source or s.startswith(source + ".")) and (d == target or d.startswith(target + "."))
    }


def test_the_graph_reads_every_module() -> None:
    assert len(GRAPH) == len(modules()) > 100
    assert "gateway.scheduling" in GRAPH["gateway.wiring"]  # a plain import
    assert "gateway.iec104" in GRAPH["gateway.wiring"]  # an import inside a function


SIMULATOR_AS_TEST_SET = {("gateway.cli.protection", "hil.control")}
"""`stima protection test --live` plays its sequence through the simulator's control socket, as
through a relay test set; imported only inside that command."""


@pytest.mark.parametrize("product", ["gateway", "protocols", "native"])
def test_the_product_never_imports_the_simulator(product: str) -> None:
    assert _edges(product, "hil") - SIMULATOR_AS_TEST_SET == set()


CONTRACT = "gateway.contract"
"""The floor: process image, clock, ports, the adapters' settings (docs/architecture.md)."""
PROTOCOLS_DEBTS = {("protocols.iec104", "gateway.iec104")}
"""The IEC 104 map and command handler, still read by the outstation from the core: to do."""


def test_the_contract_imports_nothing_else_of_the_project() -> None:
    assert {
        (s, d)
        for s, ds in GRAPH.items()
        if s == CONTRACT or s.startswith(CONTRACT + ".")
        for d in ds
        if not (d == CONTRACT or d.startswith(CONTRACT + "."))
    } == set()
    assert GRAPH["gateway"] == set()


def test_adapters_import_only_the_contract_and_their_own_modules() -> None:
    crossing = {
        (s, d)
        for s, ds in GRAPH.items()
        if s.startswith("protocols")
        for d in ds
        if not d.startswith(("protocols", CONTRACT + "."))
    }
    assert crossing == PROTOCOLS_DEBTS


GATEWAY_IMPORTERS_OF_PROTOCOLS = {
    "gateway.wiring",  # the composition root: builds the adapters and the uplink
    "gateway.cli.commissioning",
    "gateway.commissioning.scl_import",  # tools that talk to IEDs
}


def test_only_the_wiring_and_named_edges_import_the_adapters() -> None:
    assert {s for s, _ in _edges("gateway", "protocols")} == GATEWAY_IMPORTERS_OF_PROTOCOLS


AGENTS_MUST_NOT_IMPORT = (
    "protocols",
    "gateway.daemon",
    "gateway.server",
    "gateway.wiring",
    "gateway.scheduling",
    "gateway.operations",
    "gateway.reload",
    "gateway.storage",
    "gateway.control",
    "gateway.hmi",
    "gateway.protection",
    "gateway.telemetry",
    "gateway.agent_host",
)


@pytest.mark.parametrize("target", AGENTS_MUST_NOT_IMPORT)
def test_agents_decide_without_adapters_storage_or_the_daemon(target: str) -> None:
    assert {(s, d) for s, d in _edges("gateway.agents", target) if s != "gateway.agents.cli"} == set()


DAEMON_IMPORTERS = {
    "gateway.daemon": set(),  # the entry point: nothing builds on it
    "gateway.server": {"gateway.daemon", "gateway.operations"},  # the operations read its status
    "gateway.wiring": {
        "gateway.daemon",
        "gateway.server",
        "gateway.reload",
        "gateway.scheduling",
        "gateway.operations",
    },
    "gateway.scheduling": {"gateway.daemon", "gateway.wiring"},
    "gateway.operations": {"gateway.server"},
}
"""The daemon's modules and the only modules of the gateway that import each of them."""


@pytest.mark.parametrize("module", sorted(DAEMON_IMPORTERS))
def test_nothing_but_the_daemon_and_reload_builds_on_the_daemon(module: str) -> None:
    assert {s for s, _ in _edges("gateway", module) if s != module} == DAEMON_IMPORTERS[module]


SANS_IO_PACKAGES = ("gateway.agents", "gateway.switching", "gateway.protection", "gateway.maintenance")
IO_EDGES = {"gateway.protection.bridge", "gateway.maintenance.service", "gateway.agents.cli"}
"""Where a sans-IO package meets storage or the clock, and the agents' command line (a client)."""


def test_deciding_packages_do_no_io() -> None:
    found = {}
    for mod, path in modules().items():
        if not mod.startswith(SANS_IO_PACKAGES) or mod in IO_EDGES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module.split(".")[0]]
            if IO_MODULES & set(names):
                found[mod] = IO_MODULES & set(names)
    assert found == {}


def test_a_broken_rule_is_seen(tmp_path: Path) -> None:
    """An import inside a function, relative or absolute, is an edge of the graph the rules read."""
    for name, text in {
        "gateway/__init__.py": "",
        "gateway/agents/__init__.py": "",
        "gateway/agents/x.py": "def f():\n    from protocols.mqtt import MqttUplink\n",
        "gateway/agents/y.py": "from . import x\nfrom ..contract.points import P\n",
        "gateway/contract/__init__.py": "",
        "gateway/contract/points.py": "",
        "protocols/__init__.py": "",
        "protocols/mqtt.py": "",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = imports(tmp_path)
    assert graph["gateway.agents.x"] == {"protocols.mqtt"}
    assert graph["gateway.agents.y"] == {"gateway.agents.x", "gateway.contract.points"}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The import cycles of `graph`: its strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(mod: str) -> None:
        index[mod] = low[mod] = len(index)
        stack.append(mod)
        for dep in graph.get(mod, ()):
            if dep not in index:
                visit(dep)
                low[mod] = min(low[mod], low[dep])
            elif dep in stack:
                low[mod] = min(low[mod], index[dep])
        if low[mod] == index[mod]:
            component = set()
            while True:
                top = stack.pop()
                component.add(top)
                if top == mod:
                    break
            if len(component) > 1:
                found.append(component)

    for mod in sorted(graph):
        if mod not in index:
            visit(mod)
    return found


CLIS = {m for m in GRAPH if m == "gateway.cli" or m.startswith("gateway.cli.")} | {"gateway.agents.cli"}


def test_the_clis_import_each_other_plainly_and_without_a_cycle() -> None:
    assert len(CLIS) > 10
    assert [c for c in _cycles(GRAPH) if c & CLIS] == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    for mod, path in modules().items():
        if mod in CLIS - {"gateway.agents.cli"}:  # it looks an agent type's table up by name
            assert "importlib" not in path.read_text(), mod


def test_only_a_cli_imports_a_cli() -> None:
    assert {(s, d) for s, ds in GRAPH.items() for d in ds if d in CLIS and s not in CLIS} == set()
