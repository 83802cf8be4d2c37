"""Static layering checks over the project's packages (server/, schemas/, pipeline/, upscalers/).

Pure `ast`: nothing of the project is imported, so this runs in well under a second. The checker is a set
of plain functions taking a root path; the real-tree tests run them over the repository and the
`test_checker_*` tests run them over small synthetic trees in tmp_path, to show each rule can fail.

Rules (one test each; every failure lists all offenders):

1. No cross-module underscore imports. `from X import _name` is a failure when X resolves to a project
   module other than the importing module; so is `alias._name` where `alias` is bound in the file by an
   import of a project module (`from pipeline import vae` ... `vae._tiles()`, `import pipeline.x as m` ...
   `m._f`). `self._x` and attributes of any other object are not checked. Dunder names (`__all__`,
   `__version__`) are fine. Relative imports resolve against the importing module's package.
   An underscore MODULE (`pkg/_impl.py`) is package-private rather than forbidden: it may be imported from
   anywhere inside `pkg` (`from ._impl import y` in a sibling is fine), and importing it from outside `pkg`
   (`import pkg._impl`, `from pkg._impl import y`, `from pkg import _impl`) is a failure.
2. No import cycles among project modules. Imports anywhere in a file count: module level, function
   bodies, `try` blocks AND `if TYPE_CHECKING:` blocks. Decision: TYPE_CHECKING imports are NOT exempt. The
   tree has none, every module can use `from __future__ import annotations` / string annotations, and the
   project wants no cycles at all, hidden ones included. Edges: A -> B when A imports B or a name from B;
   `from pkg import name` is an edge to `pkg.name` when `pkg/name.py` (or `pkg/name/__init__.py`) exists,
   else to `pkg`. There are no implicit edges to parent packages (else every `pkg/__init__` that
   re-exports its submodules would be a cycle). Each strongly connected component is reported as the
   shortest cycle through each of its modules, one per line, with the import's file:line per edge.
3. No .py file over 500 lines.
4. A package `__init__.py` only exports: a docstring, imports, `__all__` (and other dunders with literal
   values), `Name = imported_name[.attr...]` aliases, and `if TYPE_CHECKING:` blocks of the same. No def,
   class, calls or other statements.
5. Layering (the project's DESIGN rules): upscalers/ imports nothing of pipeline/ or server/; pipeline/
   imports nothing of server/ and never fastapi/starlette; schemas/ imports nothing of server/, pipeline/,
   upscalers/. Imports anywhere in the file count.

Known limits (static): `importlib.import_module(...)` strings are not followed, and a local variable that
shadows an imported module alias is still treated as that module.
"""
from __future__ import annotations

import ast
import textwrap
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "schemas", "pipeline", "upscalers")
MAX_LINES = 500
# package -> top-level names (project packages or third-party) it must never import
FORBIDDEN = {
    "upscalers": frozenset({"pipeline", "server"}),
    "pipeline": frozenset({"server", "fastapi", "starlette"}),
    "schemas": frozenset({"server", "pipeline", "upscalers"}),
}


# ---------------------------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Module:
    name: str            # dotted: "pipeline.vae", "pipeline" for pipeline/__init__.py
    rel: str             # path relative to the root, posix
    is_package: bool     # an __init__.py
    lines: int
    tree: ast.Module | None
    error: str | None = None  # a SyntaxError while parsing


@dataclass(frozen=True)
class ImportRef:
    """One imported thing: `target` is the absolute dotted name as written/resolved (may be third-party)."""
    importer: str
    lineno: int
    target: str          # "pipeline.vae", "pipeline.vae._tiles" (a name), "fastapi.responses", ...
    edge: str | None     # the project module this creates a dependency on, None if not a project module


def is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and len(name) > 4


def is_private(name: str) -> bool:
    return name.startswith("_") and not is_dunder(name)


def collect_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Module]:
    """Every .py file under root/<package> for each package, parsed; keyed by dotted module name."""
    modules: dict[str, Module] = {}
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            if any(not p.isidentifier() for p in parts):
                continue  # __pycache__ never holds .py; data folders with dashes are not importable
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:  # moved away while we walked (a restructure in progress)
                continue
            tree, error = None, None
            try:
                tree = ast.parse(text, filename=str(rel))
            except SyntaxError as exc:
                error = f"{exc.msg} (line {exc.lineno})"
            modules[".".join(parts)] = Module(".".join(parts), rel.as_posix(), is_package,
                                              len(text.splitlines()), tree, error)
    return modules


def resolve_module(name: str, modules: dict[str, Module]) -> str | None:
    """The project module `name` lives in: itself when it is one, else its longest module prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def from_base(mod: Module, node: ast.ImportFrom) -> str:
    """The absolute dotted module of a `from X import ...`, resolving relative levels."""
    if not node.level:
        return node.module or ""
    package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    up = node.level - 1
    if up >= len(package):
        return ""  # beyond the top-level package: unresolved (python raises ImportError)
    package = package[:len(package) - up]
    return ".".join([*package, *([node.module] if node.module else [])])


def iter_imports(mod: Module, modules: dict[str, Module]) -> Iterator[ImportRef]:
    """Every import in the file (any depth: functions, if/try blocks, TYPE_CHECKING blocks)."""
    if mod.tree is None:
        return
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield ImportRef(mod.name, node.lineno, alias.name, resolve_module(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = from_base(mod, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and sub in modules:
                    yield ImportRef(mod.name, node.lineno, sub, sub)
                else:
                    target = base if alias.name == "*" else sub
                    yield ImportRef(mod.name, node.lineno, target, resolve_module(base, modules))


def import_edges(modules: dict[str, Module]) -> dict[str, dict[str, list[str]]]:
    """importer -> imported project module -> ["file:line", ...]. Self-imports are dropped."""
    edges: dict[str, dict[str, list[str]]] = {name: {} for name in modules}
    for name, mod in modules.items():
        for ref in iter_imports(mod, modules):
            if ref.edge is not None and ref.edge != name:
                edges[name].setdefault(ref.edge, []).append(f"{mod.rel}:{ref.lineno}")
    return edges


def strongly_connected(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative. Every SCC, each sorted; singletons included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                result.append(sorted(comp))
    return result


def shortest_cycle(graph: dict[str, Iterable[str]], start: str, within: set[str]) -> list[str] | None:
    """BFS for the shortest path start -> ... -> start inside `within`; the path includes both ends."""
    prev: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child not in within:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if child not in seen:
                seen.add(child)
                prev[child] = node
                queue.append(child)
    return None


def find_cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """For each SCC of more than one module, the shortest cycle through each of its modules (deduplicated,
    each rotated to start at its smallest module): e.g. [["pkg.a", "pkg.b", "pkg.a"]]."""
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for comp in strongly_connected(edges):
        if len(comp) < 2:
            continue
        members = set(comp)
        for node in comp:
            path = shortest_cycle(edges, node, members)
            if path is None:
                continue
            ring = path[:-1]
            i = ring.index(min(ring))
            ring = ring[i:] + ring[:i]
            if tuple(ring) not in seen:
                seen.add(tuple(ring))
                cycles.append([*ring, ring[0]])
    return sorted(cycles)


def format_cycle(cycle: list[str], edges: dict[str, dict[str, list[str]]]) -> str:
    where = ", ".join(edges[a][b][0] for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}\n      (imports at {where})"


def private_module_breach(importer: str, dotted: str) -> str | None:
    """The first underscore module prefix of `dotted` that `importer` lives outside of, if any."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if is_private(part):
            parent = ".".join(parts[:i])
            if not (importer == parent or importer.startswith(parent + ".")):
                return ".".join(parts[:i + 1])
    return None


def _attr_chain(node: ast.expr) -> list[str] | None:
    """`a.b.c` -> ["a", "b", "c"]; None when the chain is not rooted at a plain name."""
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    chain.append(node.id)
    return chain[::-1]


def module_bindings(mod: Module, modules: dict[str, Module]) -> dict[str, str]:
    """Names in the file bound (by any import, anywhere) to a project module: name -> module."""
    bound: dict[str, str] = {}
    if mod.tree is None:
        return bound
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    if alias.name in modules:
                        bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    if top in modules:
                        bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = from_base(mod, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def underscore_imports(modules: dict[str, Module]) -> list[str]:
    """Every cross-module private import / private attribute of an imported module, as "file:line: ..."."""
    out: list[str] = []
    for name, mod in sorted(modules.items()):
        if mod.tree is None:
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    bad = private_module_breach(name, alias.name)
                    if bad and resolve_module(alias.name, modules):
                        out.append(f"{mod.rel}:{node.lineno}: import {alias.name} (private module {bad})")
            elif isinstance(node, ast.ImportFrom):
                base = from_base(mod, node)
                if resolve_module(base, modules) is None:
                    continue
                if bad := private_module_breach(name, base):
                    out.append(f"{mod.rel}:{node.lineno}: from {base} import ... (private module {bad})")
                    continue
                for alias in node.names:
                    if not is_private(alias.name):
                        continue
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        if bad := private_module_breach(name, sub):
                            out.append(f"{mod.rel}:{node.lineno}: from {base} import {alias.name} "
                                       f"(private module {bad})")
                    elif resolve_module(base, modules) != name:
                        out.append(f"{mod.rel}:{node.lineno}: from {base} import {alias.name}")
        bound = module_bindings(mod, modules)
        if not bound:
            continue
        for node in ast.walk(mod.tree):
            if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
                continue
            chain = _attr_chain(node.value)
            if not chain or chain[0] not in bound:
                continue
            target: str | None = bound[chain[0]]
            for part in chain[1:]:
                target = f"{target}.{part}" if f"{target}.{part}" in modules else None
                if target is None:
                    break
            if target is None:
                continue  # an attribute of something that is not a module
            text = ".".join([*chain, node.attr])
            sub = f"{target}.{node.attr}"
            if sub in modules:
                if bad := private_module_breach(name, sub):
                    out.append(f"{mod.rel}:{node.lineno}: {text} (private module {bad})")
            elif target != name:
                out.append(f"{mod.rel}:{node.lineno}: {text} ({target}.{node.attr})")
    return sorted(set(out))


def long_files(modules: dict[str, Module], limit: int = MAX_LINES) -> list[str]:
    ordered = sorted(modules.values(), key=lambda m: m.rel)
    return [f"{m.rel}: {m.lines} lines" for m in ordered if m.lines > limit]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _init_offenders(body: list[ast.stmt], imported: set[str], rel: str, top: bool) -> list[str]:
    out: list[str] = []
    for i, stmt in enumerate(body):
        if top and i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue  # the docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
            out += _init_offenders(stmt.body + stmt.orelse, imported, rel, top=False)
            continue
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            value = stmt.value
            if len(names) == len(targets) and value is not None:
                if all(is_dunder(n) for n in names):
                    try:
                        ast.literal_eval(value)
                        continue
                    except ValueError:
                        pass
                chain = _attr_chain(value)
                if chain and chain[0] in imported:
                    continue  # Name = imported / Name = imported.attr
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(stmt, ast.ClassDef) else "def"
            out.append(f"{rel}:{stmt.lineno}: {kind} {stmt.name}")
        else:
            src = ast.unparse(stmt).splitlines()[0]
            out.append(f"{rel}:{stmt.lineno}: {src[:80]}")
    return out


def init_offenders(modules: dict[str, Module]) -> list[str]:
    """Every statement of a package __init__.py that is not an export (see rule 4)."""
    out: list[str] = []
    for mod in sorted(modules.values(), key=lambda m: m.rel):
        if not mod.is_package or mod.tree is None:
            continue
        imported: set[str] = set()
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    imported.add(alias.asname or alias.name.split(".")[0])
        out += _init_offenders(mod.tree.body, imported, mod.rel, top=True)
    return out


def layering_violations(modules: dict[str, Module],
                        forbidden: dict[str, frozenset[str]] = FORBIDDEN) -> list[str]:
    out: list[str] = []
    for name, mod in sorted(modules.items()):
        banned = forbidden.get(name.split(".")[0])
        if not banned:
            continue
        for ref in iter_imports(mod, modules):
            top = ref.target.split(".")[0]
            if top in banned:
                out.append(f"{mod.rel}:{ref.lineno}: {name} imports {ref.target}")
    return sorted(set(out))


# ---------------------------------------------------------------------------------------------------------
# The real tree
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real() -> dict[str, Module]:
    modules = collect_modules(ROOT, PACKAGES)
    assert modules, f"no modules found under {ROOT} for {PACKAGES}"
    return modules


def _fail(title: str, offenders: list[str]) -> None:
    if offenders:
        pytest.fail(f"{title} ({len(offenders)}):\n  " + "\n  ".join(offenders), pytrace=False)


def test_every_file_parses(real: dict[str, Module]) -> None:
    _fail("files that do not parse", [f"{m.rel}: {m.error}" for m in real.values() if m.error])


def test_no_cross_module_underscore_imports(real: dict[str, Module]) -> None:
    _fail("private names used across modules (make them public or move the code)", underscore_imports(real))


def test_no_import_cycles(real: dict[str, Module]) -> None:
    edges = import_edges(real)
    _fail("import cycles (imports in functions and TYPE_CHECKING blocks count)",
          [format_cycle(c, edges) for c in find_cycles(edges)])


def test_no_file_over_500_lines(real: dict[str, Module]) -> None:
    _fail(f"files over {MAX_LINES} lines", long_files(real))


def test_package_inits_only_export(real: dict[str, Module]) -> None:
    _fail("package __init__.py statements that are not exports (move them to a submodule)",
          init_offenders(real))


def test_layering(real: dict[str, Module]) -> None:
    _fail("layering: upscalers !-> pipeline/server; pipeline !-> server/fastapi/starlette; "
          "schemas !-> server/pipeline/upscalers", layering_violations(real))


# ---------------------------------------------------------------------------------------------------------
# The checker itself, on synthetic trees
# ---------------------------------------------------------------------------------------------------------

def make_tree(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return collect_modules(root, sorted({rel.split("/")[0] for rel in files}))


def test_checker_module_names_and_resolution(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "from . import b\nfrom .b import thing\nfrom pkg import NAME\n",
        "pkg/b.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import a\nfrom ..b import x\nfrom . import d\n",
        "pkg/sub/d.py": "import pkg.sub.c as cc\nimport os\n",
        "pkg/data-dir/x.py": "",
    })
    assert sorted(mods) == ["pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d"]
    edges = {k: sorted(v) for k, v in import_edges(mods).items()}
    assert edges == {
        "pkg": ["pkg.a"],
        "pkg.a": ["pkg", "pkg.b"],       # `from pkg import NAME`: NAME is no submodule -> pkg itself
        "pkg.b": [],
        "pkg.sub": [],
        "pkg.sub.c": ["pkg.a", "pkg.b", "pkg.sub.d"],
        "pkg.sub.d": ["pkg.sub.c"],
    }
    assert find_cycles(import_edges(mods)) == [["pkg", "pkg.a", "pkg"],
                                               ["pkg.sub.c", "pkg.sub.d", "pkg.sub.c"]]


def test_checker_cycle_through_function_body_import(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
        "pkg/b.py": "def g():\n    from pkg import a\n    return a\n",
    })
    edges = import_edges(mods)
    cycles = find_cycles(edges)
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"]]
    assert format_cycle(cycles[0], edges) == \
        "pkg.a -> pkg.b -> pkg.a\n      (imports at pkg/a.py:1, pkg/b.py:2)"


def test_checker_type_checking_imports_count(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/b.py": "from .a import A\n",
    })
    assert find_cycles(import_edges(mods)) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_checker_no_implicit_parent_edges(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "pkg/__init__.py": "from .a import f\nfrom .b import g\n",
        "pkg/a.py": "from pkg.b import g\nimport pkg.b\n",
        "pkg/b.py": "import os\n",
    })
    assert find_cycles(import_edges(mods)) == []


def test_checker_larger_components(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"d"}, "e": {"f"}, "f": {"e", "a"}}
    comps = strongly_connected(graph)
    assert sorted(comps) == [["a", "b", "c"], ["d"], ["e", "f"]]
    edges = {k: {v: ["x:1"] for v in vs} for k, vs in graph.items()}
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    # a figure eight: two cycles share a module; both are reported
    eight = {"m": {"x": ["f:1"], "y": ["f:2"]}, "x": {"m": ["f:3"]}, "y": {"m": ["f:4"]}}
    assert find_cycles(eight) == [["m", "x", "m"], ["m", "y", "m"]]


def test_checker_underscore_imports(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/mod.py": "def _f(): ...\n_CONST = 1\n",
        "pkg/_x.py": "y = 1\n",
        "pkg/vae.py": "def _tiles(): ...\n",
        "pkg/ok.py": """\
            from ._x import y
            from . import _x
            from pkg import __version__
            from .mod import __all__
            from os import _exit
            from pkg.mod import public
            def _own(): ...

            class C:
                def m(self):
                    return self._x, public._hidden, _own(), C._y

            import pkg.ok as me
            me._own()
            """,
        "pkg/bad.py": """\
            from .mod import _f
            from pkg.mod import _CONST as c
            from pkg import vae
            import pkg.mod as m
            import pkg.vae
            vae._tiles()
            m._f()
            pkg.vae._tiles()
            """,
        "pkg/inner.py": "def h():\n    from . import mod\n    return mod._f\n",
        "other/__init__.py": "",
        "other/use.py": "from pkg._x import y\nimport pkg._x\nfrom pkg import _x\n",
    })
    found = underscore_imports(mods)
    assert found == sorted([
        "other/use.py:1: from pkg._x import ... (private module pkg._x)",
        "other/use.py:2: import pkg._x (private module pkg._x)",
        "other/use.py:3: from pkg import _x (private module pkg._x)",
        "pkg/bad.py:1: from pkg.mod import _f",
        "pkg/bad.py:2: from pkg.mod import _CONST",
        "pkg/bad.py:6: vae._tiles (pkg.vae._tiles)",
        "pkg/bad.py:7: m._f (pkg.mod._f)",
        "pkg/bad.py:8: pkg.vae._tiles (pkg.vae._tiles)",
        "pkg/inner.py:3: mod._f (pkg.mod._f)",
    ])


def test_checker_long_files(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {"pkg/__init__.py": "", "pkg/ok.py": "x = 1\n" * 500,
                                "pkg/big.py": "x = 1\n" * 501})
    assert long_files(mods) == ["pkg/big.py: 501 lines"]


def test_checker_init_only_exports(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "good/__init__.py": '''\
            """Docstring."""
            from __future__ import annotations
            from typing import TYPE_CHECKING
            from .a import f, g as h
            from . import a
            if TYPE_CHECKING:
                from .a import T
            __all__ = ["f", "h", "Alias", "K"]
            __all__ += ["a"]
            __version__ = "1.0"
            Alias = f
            K = a.CONSTANT
            ''',
        "good/a.py": "def f(): ...\ndef g(): ...\nCONSTANT = 1\nclass T: ...\n",
        "bad/__init__.py": '''\
            """Docstring."""
            import logging
            from .a import f
            log = logging.getLogger("x")
            LIMIT = 3
            def helper():
                return f()
            class Thing:
                pass
            if TYPE_CHECKING:
                def hidden(): ...
            f()
            ''',
        "bad/a.py": "def f(): ...\n",
    })
    assert init_offenders(mods) == [
        'bad/__init__.py:4: log = logging.getLogger(\'x\')',
        "bad/__init__.py:5: LIMIT = 3",
        "bad/__init__.py:6: def helper",
        "bad/__init__.py:8: class Thing",
        "bad/__init__.py:11: def hidden",
        "bad/__init__.py:12: f()",
    ]


def test_checker_layering(tmp_path: Path) -> None:
    mods = make_tree(tmp_path, {
        "server/__init__.py": "",
        "server/app.py": "import fastapi\nfrom pipeline import x\nfrom upscalers import y\n"
                         "from schemas import z\n",
        "pipeline/__init__.py": "",
        "pipeline/x.py": "from upscalers import y\nfrom schemas import z\nfrom starlette.responses import R\n"
                         "def f():\n    from server.app import app\n    import fastapi\n",
        "upscalers/__init__.py": "",
        "upscalers/y.py": "import numpy\ndef g():\n    from pipeline.x import f\n",
        "schemas/__init__.py": "",
        "schemas/z.py": "import pydantic\nfrom upscalers.y import g\nfrom ..server import app\n",
    })
    assert layering_violations(mods) == [
        "pipeline/x.py:3: pipeline.x imports starlette.responses.R",
        "pipeline/x.py:5: pipeline.x imports server.app.app",
        "pipeline/x.py:6: pipeline.x imports fastapi",
        "schemas/z.py:2: schemas.z imports upscalers.y.g",
        "upscalers/y.py:3: upscalers.y imports pipeline.x.f",
    ]
