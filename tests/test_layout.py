"""The architecture as checks: which process a module runs in follows from its path.

* relay/service/ (the service process) and relay/worker/ (a session's child process)
  import nothing from each other; relay/wire.py is what both speak.
* api/ (the control API, sans HTTP server) imports nothing from relay/; the protocol
  cores rtmp/ and whip/ import nothing of the service at all.
* No import cycles among the product's modules, counting imports inside functions.
* No module over 700 lines.
* pyproject.toml declares every third-party distribution the product imports, and
  nothing it does not import.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("api", "relay", "rtmp", "whip")
MAX_LINES = 700
# the import name of each declared distribution (the livekit packages share one name)
DISTRIBUTION_OF = {
    "trio": "trio", "hypercorn": "hypercorn", "quart": "quart", "quart_trio": "quart-trio",
    "av": "av", "aiortc": "aiortc", "aioice": "aioice", "livekit.rtc": "livekit",
    "livekit.api": "livekit-api", "livekit.protocol": "livekit-protocol",
    "google.protobuf": "protobuf", "msgpack": "msgpack", "yaml": "pyyaml",
    "prometheus_client": "prometheus-client", "numpy": "numpy", "jwt": "pyjwt",
    "werkzeug": "werkzeug", "redis": "redis", "wsproto": "wsproto", "h11": "h11",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names; `from x import y` counts x.y
    when that is a module, else x), wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    files = product_files()
    return {name: {m for m in imports_of(name, path) if m in files and m != name}
            for name, path in files.items()}


def test_processes_import_only_the_wire_from_each_other() -> None:
    for name, deps in graph().items():
        if name.startswith("relay.worker"):
            assert not {d for d in deps if d.startswith("relay.service")}, name
        if name.startswith("relay.service"):
            assert not {d for d in deps if d.startswith("relay.worker")}, name


def test_api_and_protocol_cores_import_no_relay() -> None:
    for name, deps in graph().items():
        if name.split(".")[0] in ("api", "rtmp", "whip"):
            assert not {d for d in deps if d.split(".")[0] == "relay"}, name
        if name.split(".")[0] in ("rtmp", "whip"):
            assert not {d for d in deps if d.split(".")[0] == "api"}, name


def test_no_import_cycles() -> None:
    edges = graph()
    # a package's __init__ importing its own submodules is how packages re-export;
    # count a cycle only through a submodule importing something that leads back
    for name in list(edges):
        edges[name] = {d for d in edges[name] if not (d.startswith(name + "."))}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_module_over_700_lines() -> None:
    long = []
    for path in ROOT.rglob("*.py"):
        if {".venv", "node_modules", ".git"} & set(path.parts):
            continue
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines}")
    assert long == []


def test_dependencies_are_declared_and_used() -> None:
    declared = set()
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = spec.split(";")[0].strip()
        for stop in "<>=!~[ ":
            name = name.split(stop)[0]
        declared.add(name.lower())
    imported = set()
    unknown = set()
    for name, path in product_files().items():
        for module in imports_of(name, path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in PRODUCT or not top:
                continue
            key = ".".join(module.split(".")[:2]) if top in ("livekit", "google") else top
            if key == "livekit.livekit" or key not in DISTRIBUTION_OF:
                if key not in ("livekit",):  # `from livekit import rtc` names livekit.rtc too
                    unknown.add(module)
                continue
            imported.add(DISTRIBUTION_OF[key])
    assert unknown == set(), "imported but not mapped to a distribution here"
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - imported == set(), "declared but never imported"
