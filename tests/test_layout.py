"""How the package is laid out, checked from its source (no imports run): modules do not import each other in a
circle, the run of `apo train` reads as short steps, and the library side does not reach into the CLI."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

KNOWN_CIRCLES = [{"apo.integrations.verl.algos", "apo.integrations.verl.config", "apo.integrations.verl.plugin"}]
"""Import circles not yet taken apart (an import inside a function breaks them at run time); no other may appear."""


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere (at the top or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        else:
            continue
        out |= {m for m in found if m in mods and m != name}
    return out


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_beyond_the_known_ones():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    new = [c for c in _circles(graph) if not any(c <= known for known in KNOWN_CIRCLES)]
    assert new == []


def test_the_library_side_imports_neither_the_cli_nor_matplotlib():
    mods = _modules()
    for name in ("apo.stats", "apo.atomic", "apo.tasks.evaluate", "apo.tasks.evaluation"):
        imported = _imports(name, mods[name], mods)
        assert not {m for m in imported if m.startswith("apo.cli")}, name
        nodes = ast.walk(ast.parse(mods[name].read_text()))
        names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(ast.parse(mods[name].read_text())) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m and m.split(".")[0] == "matplotlib"}, name


def test_no_function_of_the_run_recipe_is_longer_than_60_lines():
    tree = ast.parse((SRC / "apo" / "cli" / "run.py").read_text())
    lengths = {
        n.name: n.end_lineno - n.lineno + 1
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    assert max(lengths.values()) <= 60, {k: v for k, v in lengths.items() if v > 60}
