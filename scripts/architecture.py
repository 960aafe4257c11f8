#!/usr/bin/env python
"""The shape of a package, read from its source: wings, import floors, cycles and layer violations.

    python scripts/architecture.py [PACKAGE_DIR] [--check] [--markdown] [--top N]

Nothing is imported: every module is parsed with `ast`, so the report works on any checkout
(an old commit in a worktree, say) without its dependencies. Imports built from strings
(`importlib.import_module(name)`) are invisible to it.

An import is one of three kinds: "module" (runs when the module is imported), "typing" (under
`if TYPE_CHECKING:`) and "function" (inside a function body, runs when called). Floors and
cycles are about what runs at import time, so they use module-level imports only; a layer
violation is a dependency whatever its kind, so all three count there.

--check exits 1 on a layer violation or on a module whose wing has no layer.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ImportKind = Literal["module", "typing", "function"]
TOP = "(top)"

# Highest first: a layer may import its own layer and those below it, never one above.
# Top-level modules are base modules unless named in COMPOSITION_ROOT.
LAYERS: tuple[str, ...] = (
    "composition root",
    "api",
    "usecases",
    "webhooks",
    "inference",
    "store",
    "jobs",
    "diarization",
    "engines",
    "base",
)
COMPOSITION_ROOT = frozenset({"app", "server", "cli", "__main__", "system_service"})


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. service.store.files; a package's __init__ is the package's name
    path: Path
    lines: int
    wing: str  # the top-level subpackage, or TOP


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # dotted; the most specific name known to be a module when it is one of ours
    kind: ImportKind
    lineno: int


@dataclass
class Tree:
    """One package's modules and every import in them (including those of other packages)."""

    package: str
    modules: dict[str, Module] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)

    def edges(self, kinds: Iterable[ImportKind] = ("module",)) -> set[tuple[str, str]]:
        """Imports between the package's own modules, as (importer, imported) pairs."""
        wanted = set(kinds)
        return {
            (i.importer, i.target)
            for i in self.imports
            if i.kind in wanted and i.target in self.modules and i.target != i.importer
        }


@dataclass(frozen=True)
class Violation:
    importer: str
    imported: str
    importer_layer: str
    imported_layer: str
    kind: ImportKind
    lineno: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.importer_layer} below {self.imported_layer})"


def _module_name(package_dir: Path, path: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in_package(package_dir: Path, path: Path) -> bool:
    """Whether every directory from the package down to `path` is a package (has an __init__.py)."""
    rel = path.relative_to(package_dir).parts[:-1]
    return all((package_dir.joinpath(*rel[:n]) / "__init__.py").exists() for n in range(len(rel) + 1))


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _ImportCollector(ast.NodeVisitor):
    """Every import statement of one module, with the context that decides its kind."""

    def __init__(self, module: str, is_package: bool, known: Mapping[str, object]) -> None:
        self.module = module
        # What a relative import is relative to: the package itself for an __init__.
        self.base = module.split(".") if is_package else module.split(".")[:-1]
        self.known = known
        self.found: list[Import] = []
        self._in_function = 0
        self._in_typing = 0

    def _kind(self) -> ImportKind:
        if self._in_function:
            return "function"
        return "typing" if self._in_typing else "module"

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found.append(Import(self.module, target, self._kind(), node.lineno))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._in_function += 1
        self.generic_visit(node)
        self._in_function -= 1

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._in_function += 1
        self.generic_visit(node)
        self._in_function -= 1

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._in_typing += 1
        for stmt in node.body:
            self.visit(stmt)
        self._in_typing -= 1
        for stmt in node.orelse:  # the else branch of `if TYPE_CHECKING` is what runs
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            anchor = self.base[: len(self.base) - (node.level - 1)]
            source = ".".join([*anchor, node.module] if node.module else anchor)
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod.
            self._add(submodule if submodule in self.known else source, node)


def scan(package_dir: Path) -> Tree:
    """Parse every module under `package_dir` (a directory with an __init__.py)."""
    package_dir = package_dir.resolve()
    tree = Tree(package=package_dir.name)
    paths = sorted(p for p in package_dir.rglob("*.py") if _in_package(package_dir, p))
    sources: dict[str, tuple[Path, str]] = {}
    for path in paths:
        name = _module_name(package_dir, path)
        text = path.read_text(encoding="utf-8")
        sources[name] = (path, text)
        rel = path.relative_to(package_dir).parts
        wing = rel[0] if len(rel) > 1 else TOP
        tree.modules[name] = Module(name, path, len(text.splitlines()), wing)
    for name, (path, text) in sources.items():
        collector = _ImportCollector(name, path.name == "__init__.py", tree.modules)
        collector.visit(ast.parse(text, filename=str(path)))
        tree.imports.extend(collector.found)
    return tree


def layer_of(module: Module, package: str) -> str | None:
    """The module's layer in LAYERS, or None for a wing that has no place in the order."""
    if module.wing == TOP:
        short = module.name.removeprefix(f"{package}.")
        return "composition root" if short in COMPOSITION_ROOT else "base"
    return module.wing if module.wing in LAYERS else None


def unplaced(tree: Tree) -> list[Module]:
    return [m for m in tree.modules.values() if layer_of(m, tree.package) is None]


def violations(tree: Tree) -> list[Violation]:
    """Imports of a higher layer by a lower one, of any kind (module, typing or function level)."""
    found: set[Violation] = set()
    for imp in tree.imports:
        if imp.target not in tree.modules or imp.target == imp.importer:
            continue
        low = layer_of(tree.modules[imp.importer], tree.package)
        high = layer_of(tree.modules[imp.target], tree.package)
        if low is None or high is None:
            continue
        if LAYERS.index(low) > LAYERS.index(high):
            found.add(Violation(imp.importer, imp.target, low, high, imp.kind, imp.lineno))
    return sorted(found, key=lambda v: (v.importer, v.imported, v.lineno))


def strongly_connected(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to meet); each component sorted."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def cycles(tree: Tree, kinds: Iterable[ImportKind] = ("module",)) -> list[list[str]]:
    """Import cycles: strongly connected components of more than one module."""
    comps = strongly_connected(tree.modules, tree.edges(kinds))
    return sorted((c for c in comps if len(c) > 1), key=lambda c: (-len(c), c))


def floors(tree: Tree) -> tuple[int, list[str]]:
    """The longest chain of module-level imports, cycles collapsed, counted in modules.

    A module that imports none of the package's modules stands on floor 1; one that imports it,
    on floor 2; and so on. Returns the number of floors and one chain that reaches the top
    (a collapsed cycle is shown as its first member).
    """
    edges = tree.edges()
    comps = strongly_connected(tree.modules, edges)
    comp_of = {m: i for i, comp in enumerate(comps) for m in comp}
    below: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        if comp_of[a] != comp_of[b]:
            below[comp_of[a]].add(comp_of[b])
    # Tarjan emits a component only after all it reaches, so list order is a bottom-up order.
    height: dict[int, int] = {}
    step: dict[int, int | None] = {}
    for i in range(len(comps)):
        best = min(below[i], key=lambda j: (-height[j], comps[j]), default=None)
        height[i] = 1 + (height[best] if best is not None else 0)
        step[i] = best
    if not comps:
        return 0, []
    top = min(range(len(comps)), key=lambda i: (-height[i], comps[i]))
    chain: list[str] = []
    at: int | None = top
    while at is not None:
        chain.append(comps[at][0])
        at = step[at]
    return height[top], chain


def wings(tree: Tree) -> dict[str, list[Module]]:
    by_wing: dict[str, list[Module]] = defaultdict(list)
    for module in tree.modules.values():
        by_wing[module.wing].append(module)
    return dict(sorted(by_wing.items(), key=lambda kv: (kv[0] != TOP, kv[0])))


def largest(tree: Tree, top: int) -> list[Module]:
    return sorted(tree.modules.values(), key=lambda m: (-m.lines, m.name))[:top]


def foreign_imports(tree: Tree, forbidden: str) -> list[Import]:
    """Imports, of any kind, of package `forbidden` or anything inside it."""
    return [i for i in tree.imports if i.target == forbidden or i.target.startswith(f"{forbidden}.")]


def _short(tree: Tree, name: str) -> str:
    return name.removeprefix(f"{tree.package}.")


def report_text(tree: Tree, top: int) -> str:
    out: list[str] = []
    by_wing = wings(tree)
    out.append(
        f"{tree.package}: {len(tree.modules)} modules, {sum(m.lines for m in tree.modules.values())} lines"
    )
    out.append("")
    out.append("Modules per wing:")
    for wing, modules in by_wing.items():
        layer = layer_of(modules[0], tree.package) if wing != TOP else "composition root + base"
        lines = sum(m.lines for m in modules)
        out.append(f"  {wing:<14} {len(modules):>3} modules {lines:>6} lines  [{layer or 'NO LAYER'}]")
    height, chain = floors(tree)
    out.append("")
    out.append(f"Import floors (module-level): {height}")
    out.append("  longest chain: " + " -> ".join(_short(tree, m) for m in chain))
    module_cycles = cycles(tree)
    out.append("")
    out.append(f"Import cycles (module-level): {len(module_cycles)}")
    for comp in module_cycles:
        out.append(f"  {len(comp)} modules: " + ", ".join(_short(tree, m) for m in comp))
    all_cycles = cycles(tree, ("module", "typing", "function"))
    out.append(f"Import cycles counting imports inside functions and TYPE_CHECKING: {len(all_cycles)}")
    for comp in all_cycles:
        out.append(f"  {len(comp)} modules: " + ", ".join(_short(tree, m) for m in comp))
    out.append("")
    out.append(f"Largest modules (top {top}):")
    for module in largest(tree, top):
        out.append(f"  {module.lines:>6}  {module.name}")
    found = violations(tree)
    out.append("")
    out.append(f"Layer violations: {len(found)}")
    out.extend(f"  {v}  [{v.kind}, line {v.lineno}]" for v in found)
    for module in unplaced(tree):
        out.append(f"  {module.name}: wing {module.wing!r} has no layer")
    return "\n".join(out)


def report_markdown(tree: Tree, top: int) -> str:
    out: list[str] = []
    height, chain = floors(tree)
    module_cycles = cycles(tree)
    all_cycles = cycles(tree, ("module", "typing", "function"))
    found = violations(tree)
    out.append("| Wing | Layer | Modules | Lines |")
    out.append("|---|---|---:|---:|")
    for wing, modules in wings(tree).items():
        layer = layer_of(modules[0], tree.package) if wing != TOP else "composition root, base"
        out.append(f"| `{wing}` | {layer or '—'} | {len(modules)} | {sum(m.lines for m in modules)} |")
    out.append(
        f"| **total** | | **{len(tree.modules)}** | **{sum(m.lines for m in tree.modules.values())}** |"
    )
    out.append("")
    out.append("| Measure | Value |")
    out.append("|---|---|")
    out.append(f"| Import floors (module-level) | {height} |")
    out.append(f"| Longest chain | {' → '.join(f'`{_short(tree, m)}`' for m in chain)} |")
    out.append(f"| Import cycles (module-level) | {len(module_cycles)} |")
    for comp in module_cycles:
        out.append(f"| — cycle of {len(comp)} | {', '.join(f'`{_short(tree, m)}`' for m in comp)} |")
    out.append(f"| Import cycles incl. function-level | {len(all_cycles)} |")
    out.append(f"| Layer violations | {len(found)} |")
    out.append("")
    out.append("| Largest modules | Lines |")
    out.append("|---|---:|")
    out.extend(f"| `{m.name}` | {m.lines} |" for m in largest(tree, top))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("package_dir", nargs="?", default="service", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 on any layer violation")
    parser.add_argument("--markdown", action="store_true", help="print tables fit for docs")
    parser.add_argument("--top", type=int, default=5, help="how many of the largest modules to list")
    args = parser.parse_args(argv)
    if not (args.package_dir / "__init__.py").exists():
        parser.error(f"{args.package_dir} is not a package directory")
    tree = scan(args.package_dir)
    if args.check:
        problems = [str(v) for v in violations(tree)]
        problems += [f"{m.name}: wing {m.wing!r} has no layer" for m in unplaced(tree)]
        for line in problems:
            print(line)
        if not problems:
            print(f"{tree.package}: no layer violations")
        return 1 if problems else 0
    print(report_markdown(tree, args.top) if args.markdown else report_text(tree, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
