"""The project's import graph, read from the source (every `import`, also inside functions).

Used by tests/test_layering.py to hold the layering rules, and to draw the diagram in
docs/architecture.md: `python -m tests.support.import_graph` prints it (Mermaid).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "protocols", "hil", "native")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            out[module_name(path, root)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module `name` is (or is inside), or None for an outside import."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the project modules it imports (at top level or inside a function)."""
    known = modules(root)
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in known.items():
        graph[mod]
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` names a module when mod is one
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for name in names:
                target = _resolve(name, known)
                if target is not None and target != mod:
                    graph[mod].add(target)
    return dict(graph)


def layer(module: str) -> str:
    """The part of the project a module belongs to, as docs/architecture.md names them."""
    parts = module.split(".")
    if parts[0] != "gateway":
        return parts[0]
    if len(parts) > 1 and parts[1] in (
        "contract",
        "cli",
        "agents",
        "protection",
        "switching",
        "maintenance",
        "commissioning",
        "hmi",
    ):
        return f"gateway.{parts[1]}"
    return "gateway (core)"


def layer_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], int]:
    """(from layer, to layer) → how many module imports cross that way."""
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for src, targets in graph.items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if a != b:
                edges[(a, b)] += 1
    return dict(edges)


def mermaid(graph: dict[str, set[str]]) -> str:
    lines = ["flowchart TD"]
    ids = {}
    for a, b in sorted(layer_edges(graph)):
        for name in (a, b):
            ids.setdefault(name, f"n{len(ids)}")
    for name, node in ids.items():
        lines.append(f'  {node}["{name}"]')
    for (a, b), count in sorted(layer_edges(graph).items()):
        lines.append(f"  {ids[a]} -->|{count}| {ids[b]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(mermaid(imports()) + "\n")
