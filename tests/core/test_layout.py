"""The library's layout: layers that import only the layers below them, no import circle among its modules, and
no path to Dagster (`relaion run` finds the Dagster layer through an entry point), so every stage runs and is
tested on its own. The layers are listed in relaion_pipeline/__init__.py."""

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "relaion_pipeline"
# Bottom first: a module may import from its own layer and the layers before it.
LAYERS = [
    "core",
    "canonical",
    "lists",
    "match",
    "stages",
    "validation",
    "status",
    "incremental",
    "publishing",
    "alerting",
    "demo_data",
    "prepare",
    "cli",
]


def _modules(library: Path) -> dict[str, Path]:
    """Dotted name under the library (`core.cache`, `status`; a package by its own name) -> file."""
    found = {}
    for path in sorted(library.rglob("*.py")):
        parts = list(path.relative_to(library).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _imports(library: Path) -> dict[str, dict[str, int]]:
    """module -> {module of the library it imports: line}, imports inside functions included."""
    modules = _modules(library)
    found: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        uses: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "relaion_pipeline":
                base = node.module.removeprefix("relaion_pipeline").lstrip(".")
                for alias in node.names:
                    inner = f"{base}.{alias.name}".lstrip(".")
                    targets.append(inner if inner in modules else base)
            elif isinstance(node, ast.Import):
                targets = [
                    a.name.removeprefix("relaion_pipeline.")
                    for a in node.names
                    if a.name.startswith("relaion_pipeline.")
                ]
            for target in targets:
                if target in modules and target != name:
                    uses.setdefault(target, node.lineno)
        found[name] = uses
    return found


def test_every_module_is_in_a_layer():
    layers = {name.split(".")[0] for name in _modules(LIBRARY)} - {"data"}
    assert layers == set(LAYERS)
    assert all((LIBRARY / layer / "__init__.py").exists() for layer in LAYERS if (LIBRARY / layer).is_dir())
    assert (LIBRARY / "__init__.py").exists()


def test_each_layer_imports_only_the_layers_below_it():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        f"{module} (line {line}) imports {used}"
        for module, uses in _imports(LIBRARY).items()
        for used, line in uses.items()
        if module.split(".")[0] in rank and rank[used.split(".")[0]] > rank[module.split(".")[0]]
    ]
    assert upward == []


def test_the_library_has_no_import_circle():
    graph = _imports(LIBRARY)
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for used in graph[module]:
            if used in path:
                circles.append(path[path.index(used) :] + [used])
            elif used not in done:
                visit(used, path + [used])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        visit(module, [module])
    shown = [" -> ".join(circle) for circle in circles]
    assert not shown, "import circles:\n" + "\n".join(shown)


def test_no_module_of_the_library_imports_dagster_or_the_dagster_layer():
    offending = []
    for name, path in _modules(LIBRARY).items():
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            offending += [
                f"{name}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in ("dagster", "assets")
            ]
    assert offending == []
    # and nothing it imports does: every module loaded, Dagster is not
    code = "import importlib, sys\n"
    code += "".join(f"importlib.import_module('relaion_pipeline.{m}')\n" for m in _modules(LIBRARY))
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'assets')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_every_import_of_the_library_names_a_module_that_exists():
    """An import inside a function runs only when the function does: one of a module that moved would fail then."""
    modules = set(_modules(LIBRARY)) | {""}
    root = LIBRARY.parent
    missing = []
    for path in sorted([*LIBRARY.rglob("*.py"), *(root / "assets").rglob("*.py"), *(root / "tests").rglob("*.py"),
                        *(root / "benchmarks").rglob("*.py")]):  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "relaion_pipeline":
                base = node.module.removeprefix("relaion_pipeline").lstrip(".")
                if base not in modules:
                    missing.append(f"{path.relative_to(root)}:{node.lineno}: no module relaion_pipeline.{base}")
                elif not base or base in {m.rsplit(".", 1)[0] for m in modules if "." in m}:  # a package
                    for alias in node.names:
                        if f"{base}.{alias.name}".lstrip(".") not in modules | {"data"}:
                            missing.append(f"{path.relative_to(root)}:{node.lineno}: no module {alias.name} in"
                                           f" relaion_pipeline{'.' + base if base else ''}")  # fmt: skip
    assert missing == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The layout checks above, on a library of three modules with an upward import and a circle."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text("from relaion_pipeline.match import b\n")
    (tmp_path / "match").mkdir()
    (tmp_path / "match" / "__init__.py").write_text("")
    (tmp_path / "match" / "b.py").write_text("def f():\n    from relaion_pipeline.core import a\n")
    assert _imports(tmp_path) == {"core": {}, "core.a": {"match.b": 1}, "match": {}, "match.b": {"core.a": 2}}


def test_relaion_run_finds_the_dagster_layer_through_its_entry_point():
    points = {p.name: p.value for p in metadata.entry_points(group="relaion_pipeline.runners")}
    assert points == {"dagster": "assets.runner:run_all"}
    from assets.runner import run_all

    assert metadata.entry_points(group="relaion_pipeline.runners")["dagster"].load() is run_all
