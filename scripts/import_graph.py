"""The package's import graph, in figures: its depth, the modules that import the most package
modules, the largest modules, and what loading the plugin loads.

python scripts/import_graph.py          # the figures
python scripts/import_graph.py --check  # exit 1 when a limit of docs/architecture.md is crossed

An import is any ``import`` of a package module, wherever it stands (at the top, inside a
function, under TYPE_CHECKING): each is a dependency a reader follows.
"""

from __future__ import annotations

import argparse
import ast
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_instrumental"
COMPOSITION_ROOT = f"{PACKAGE}.run"  # builds every part of a run: it may import them all
MAX_DEPTH = 10
MAX_IMPORTS = 12
MAX_SHARE = 0.1  # of the package's lines, in one module
PLUGIN_LOAD = {PACKAGE, f"{PACKAGE}.plugin", f"{PACKAGE}.options", f"{PACKAGE}.config", f"{PACKAGE}.errors"}
# what pytest --help needs: the option table and its vocabularies (a front door loads nothing)
PLUGIN_LOAD |= {f"{PACKAGE}.vocabulary", f"{PACKAGE}.vocabulary.conditions"}
# The subpackages' layers, lowest first: a module imports none of a higher layer's. The modules at
# the top of the package are the application (plugin, run, options) and what every layer shares
# (errors, text, config): they are not ranked.
LAYERS = {"vocabulary": 0, "records": 1, "statistics": 1, "backends": 2, "judges": 3, "reports": 4}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (a package's face, ``pytest_instrumental``, is not one)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
    return {m for m in found if m in known and m not in (name, PACKAGE)}


@dataclass(frozen=True)
class Figures:
    modules: int
    lines: int
    deepest: list[str]  # the longest chain of imports, from its top
    imports: list[tuple[int, str]]  # (package modules imported, module), most first
    upward: list[tuple[str, str]]  # (module, a module of a higher layer it imports)
    largest: list[tuple[int, str]]  # (lines, module), largest first
    plugin_load: list[str]  # the package modules loading the plugin loads

    @property
    def depth(self) -> int:
        return len(self.deepest)

    def problems(self) -> list[str]:
        said = []
        if self.depth > MAX_DEPTH:
            said.append(
                f"the import graph is {self.depth} levels deep (at most {MAX_DEPTH}): {' -> '.join(self.deepest)}"
            )
        said += [
            f"{name} imports {count} package modules (at most {MAX_IMPORTS} but in {COMPOSITION_ROOT})"
            for count, name in self.imports
            if count > MAX_IMPORTS and name != COMPOSITION_ROOT
        ]
        said += [
            f"{name} holds {count} of the package's {self.lines} lines (at most a tenth)"
            for count, name in self.largest
            if count > MAX_SHARE * self.lines
        ]
        said += [f"{low} imports {high}, of a higher layer" for low, high in self.upward]
        extra = sorted(set(self.plugin_load) - PLUGIN_LOAD)
        if extra:
            said.append(f"loading the plugin loads more than pytest --help needs: {', '.join(extra)}")
        return said


def layer(module: str) -> int | None:
    """The layer of a module of a ranked subpackage; None for the package's top."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 2 else None


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    found = []
    for name, imported in sorted(graph.items()):
        mine = layer(name)
        if mine is not None:
            found += [(name, other) for other in sorted(imported) if (layer(other) or 0) > mine]
    return found


def figures() -> Figures:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}

    @functools.cache
    def depth(name: str) -> int:
        return 1 + max((depth(d) for d in graph[name]), default=0)

    def chain(name: str) -> list[str]:
        below = max(graph[name], key=depth, default=None)
        return [name] + ([] if below is None else chain(below))

    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in known.items()}
    listed = f"import sys, {PACKAGE}.plugin; print(*sorted(m for m in sys.modules if m.startswith('{PACKAGE}')))"
    loaded = subprocess.run([sys.executable, "-c", listed], capture_output=True, text=True, check=True, cwd=ROOT)
    return Figures(
        modules=len(known),
        lines=sum(lines.values()),
        deepest=chain(max(known, key=depth)),
        imports=sorted(((len(v), k) for k, v in graph.items()), reverse=True),
        upward=upward(graph),
        largest=sorted(((v, k) for k, v in lines.items()), reverse=True),
        plugin_load=loaded.stdout.split(),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a limit is crossed")
    args = parser.parse_args()
    found = figures()

    def short(name: str) -> str:
        return name.removeprefix(f"{PACKAGE}.")

    print(f"{found.modules} modules, {found.lines} lines")
    print(f"depth {found.depth}: {' -> '.join(short(m) for m in found.deepest)}")
    print("most imports:", ", ".join(f"{short(m)} {n}" for n, m in found.imports[:6]))
    print("largest:", ", ".join(f"{short(m)} {n}" for n, m in found.largest[:6]))
    print(f"loading the plugin loads {len(found.plugin_load)}: {' '.join(found.plugin_load)}")
    said = found.problems()
    for line in said:
        print(f"LIMIT: {line}")
    return 1 if args.check and said else 0


if __name__ == "__main__":
    sys.exit(main())
