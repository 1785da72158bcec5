"""Data flows one way: exporters write files, targets orchestrate, and nothing below the toolchain imports it.

Read from the source with `ast`, so an import inside a function counts as much as one at the top.
"""

import ast
from pathlib import Path

import pytest

import edgec

ROOT = Path(edgec.__file__).parent
BELOW_TOOLCHAIN = ("targets", "tasks", "passes", "models", "calibration", "runtimes", "exporters")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every edgec module `path` imports, `from a import b` counted as `a` and as `a.b`."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "edgec" or m.startswith("edgec.")}


GRAPH = {_module(p): _imports(p) for p in ROOT.rglob("*.py")}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _crossings(layers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if _layer(m) in layers
                  for i in deps if _layer(i) in forbidden and i in GRAPH)


def test_the_reader_sees_every_layer_and_imports_inside_functions():
    assert set(BELOW_TOOLCHAIN) | {"toolchain"} <= {_layer(m) for m in GRAPH}
    assert "edgec.tasks.base" in GRAPH["edgec.toolchain.pipeline"]  # at the top
    assert "edgec.runtimes.qnn_htp" in GRAPH["edgec.targets.npu"]  # inside a function


def test_exporters_neither_run_runtimes_nor_reach_the_toolchain():
    assert _crossings(("exporters",), ("runtimes", "toolchain")) == []


@pytest.mark.parametrize("layer", BELOW_TOOLCHAIN)
def test_nothing_below_the_toolchain_imports_it(layer):
    assert _crossings((layer,), ("toolchain",)) == []


def test_no_import_circle_inside_the_toolchain():
    inner = {m: {i for i in deps if i in GRAPH and _layer(i) == "toolchain" and i != m}
             for m, deps in GRAPH.items() if _layer(m) == "toolchain"}
    circles = []
    for start in inner:
        seen, todo = set(), list(inner[start])
        while todo:
            m = todo.pop()
            if m == start:
                circles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(inner[m])
    assert circles == []
