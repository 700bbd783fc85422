"""The library's layout: its modules import each other without a circle, and none of them reaches Dagster
(`relaion run` finds the Dagster layer through an entry point), so every stage runs and is tested on its own."""

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import relaion_pipeline

LIBRARY = Path(relaion_pipeline.__file__).parent if relaion_pipeline.__file__ else Path("relaion_pipeline")
MODULES = sorted(p.stem for p in LIBRARY.glob("*.py") if p.stem != "__init__")


def _imports() -> dict[str, dict[str, int]]:
    """module -> {module of the library it imports: line}, imports inside functions included."""
    found: dict[str, dict[str, int]] = {}
    for name in MODULES:
        tree = ast.parse((LIBRARY / f"{name}.py").read_text())
        uses: dict[str, int] = {}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module == "relaion_pipeline":
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relaion_pipeline."):
                targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("relaion_pipeline.")]
            for target in targets:
                if target in MODULES and target != name:
                    uses.setdefault(target, node.lineno)
        found[name] = uses
    return found


def test_the_library_has_no_import_circle():
    graph = _imports()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for used in graph[module]:
            if used in path:
                circle = path[path.index(used) :] + [used]
                if min(circle[:-1]) == circle[0]:  # each circle once, from its smallest module
                    circles.append(circle)
            elif used not in done:
                visit(used, path + [used])
        done.add(module)

    done: set[str] = set()
    for module in MODULES:
        visit(module, [module])
    shown = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(c, c[1:], strict=False)) + f" -> {c[-1]}"
        for c in circles
    ]
    assert not shown, "import circles:\n" + "\n".join(shown)


def test_no_module_of_the_library_imports_dagster_or_the_dagster_layer():
    offending = []
    for name in MODULES:
        for node in ast.walk(ast.parse((LIBRARY / f"{name}.py").read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            offending += [
                f"{name}.py:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in ("dagster", "assets")
            ]
    assert offending == []
    # and nothing it imports does: every module loaded, Dagster is not
    code = "import importlib, sys\n"
    code += "".join(f"importlib.import_module('relaion_pipeline.{m}')\n" for m in MODULES)
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'assets')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_relaion_run_finds_the_dagster_layer_through_its_entry_point():
    points = {p.name: p.value for p in metadata.entry_points(group="relaion_pipeline.runners")}
    assert points == {"dagster": "assets.runner:run_all"}
    from assets.runner import run_all

    assert metadata.entry_points(group="relaion_pipeline.runners")["dagster"].load() is run_all
