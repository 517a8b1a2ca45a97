"""No import cycle anywhere in ``art_jacreg``, and every module imports on its own in a fresh interpreter.

The cycle check reads every ``import`` statement of the package, including those inside functions (a function-level
import is how a cycle gets hidden), leaving out only ``if TYPE_CHECKING:`` blocks, which never run. An import of a
package's submodule does not count as an import of the package's ``__init__`` (Python runs it first, but it cannot
close a cycle through the submodule unless ``__init__`` imports it back, which is then an edge of its own).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import art_jacreg

PACKAGE = Path(art_jacreg.__file__).parent


def _modules() -> dict[str, Path]:
    out = {"art_jacreg": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="art_jacreg."):
        spec = importlib.util.find_spec(info.name)
        out[info.name] = Path(spec.origin)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, name: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The ``art_jacreg`` modules one module imports (anywhere in its code)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``art_jacreg`` modules it imports."""
    modules = _modules()
    return {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", modules)
        for name, path in modules.items()
    }


def test_the_cycle_finder_sees_a_hidden_cycle():
    tree_a = ast.parse("def f():\n    from art_jacreg.b import g\n")
    tree_b = ast.parse("from art_jacreg import a\nif TYPE_CHECKING:\n    from art_jacreg.c import h\n")
    modules = dict.fromkeys(["art_jacreg", "art_jacreg.a", "art_jacreg.b", "art_jacreg.c"], Path())
    graph = {
        "art_jacreg.a": _imports(tree_a, "art_jacreg.a", False, modules),
        "art_jacreg.b": _imports(tree_b, "art_jacreg.b", False, modules),
    }
    assert graph == {"art_jacreg.a": {"art_jacreg.b"}, "art_jacreg.b": {"art_jacreg.a"}}
    assert _cycles(graph) == [["art_jacreg.a", "art_jacreg.b"]]


def test_certify_modules_are_found_with_their_imports():
    graph = import_graph()
    assert "art_jacreg.certify.ops.relu" in graph
    assert "art_jacreg.certify.patches" in graph["art_jacreg.certify.intervals"]
    assert "art_jacreg.certify.intervals" not in graph["art_jacreg.certify.patches"]


def test_no_import_cycle_in_the_package():
    cycles = _cycles(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(_modules())
    code = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'art_jacreg' or m.startswith('art_jacreg.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
