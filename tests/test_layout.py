"""The design, read from the source's import statements (lazy ones inside functions and ``TYPE_CHECKING`` ones
included), so an arrow the wrong way or a circle fails here, not in a review:

    main.py    parses and dispatches
    launch/    many runs (plans, executors, the call ending with a comparison)
    evaluate/  uses a checkpoint (eval, predict, maps, latency, the measured comparison)
    train/     one run on 1..N processes
    models/ data/ config/   below them; core/ at the bottom
    plots/     renders run files only (core, matplotlib, numpy); bench/ measures beside everything
"""
import ast
import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "config", "models", "data", "train", "evaluate", "launch", "plots", "bench")

# What each package may import from the project (besides itself).
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "models": {"core"},
    "data": {"core"},
    "train": {"core", "config", "models", "data"},
    "plots": {"core"},  # it renders run files: no model, no data, no training code
    "evaluate": {"core", "config", "models", "data", "train", "plots"},
    "launch": {"core", "config", "models", "data", "train", "evaluate", "plots"},
    "bench": {"core", "config", "models", "data", "train"},
}
# Third-party packages that would mean a package does another's job.
FORBIDDEN_EXTERNAL = {"plots": {"torch", "torchvision", "timm"}, "core": {"torch", "matplotlib"},
                      "config": {"torch", "matplotlib"}}


def modules() -> dict[str, Path]:
    """Every project module by dotted name (``launch.plan``, ``plots`` for plots/__init__.py, ``main``)."""
    found = {"main": ROOT / "main.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


@functools.cache  # the source does not change during a session; the tests ask for each file's imports often
def imports(path: Path) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(imported module, imported names) for every import statement anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
    return tuple(found)


def project_edges(name: str) -> set[str]:
    """The project modules ``name`` imports: ``from pkg import sub`` is an edge to ``pkg.sub`` when that is a
    module, else to ``pkg`` (its __init__)."""
    edges = set()
    for module, names in imports(MODULES[name]):
        if module.split(".")[0] not in (*PACKAGES, "main"):
            continue
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        edges.update(subs)
        if len(subs) < len(names) or not names:
            edges.add(module if module in MODULES else module.rsplit(".", 1)[0])
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first: from outside a, an edge to each.
        parts = module.split(".")
        edges.update(p for p in (".".join(parts[:k]) for k in range(1, len(parts)))
                     if p in MODULES and package_of(p) != package_of(name))
    edges.discard(name)
    return edges


def package_of(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down(package):
    wrong = sorted(f"{m} -> {t}" for m in MODULES if package_of(m) == package for t in project_edges(m)
                   if package_of(t) != package and package_of(t) not in ALLOWED[package])
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN_EXTERNAL))
def test_no_foreign_work(package):
    wrong = sorted(f"{m}: {module}" for m in MODULES if package_of(m) == package
                   for module, _ in imports(MODULES[m]) if module.split(".")[0] in FORBIDDEN_EXTERNAL[package])
    assert not wrong, wrong


def test_no_import_circle():
    """No module reaches itself through imports, whether at the top, inside a function or under TYPE_CHECKING."""
    graph = {m: project_edges(m) for m in MODULES}
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_the_layout_finds_the_circles_it_forbids(tmp_path, monkeypatch):
    """The checker itself: a made-up pair of modules importing each other (one lazily) is a circle."""
    (tmp_path / "a.py").write_text("from launch import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from launch.a import g\n")
    monkeypatch.setitem(MODULES, "launch.a", tmp_path / "a.py")
    monkeypatch.setitem(MODULES, "launch.b", tmp_path / "b.py")
    with pytest.raises(AssertionError, match="launch.a"):
        test_no_import_circle()


@pytest.mark.parametrize("package", ["plots", "bench", "evaluate", "launch"])
def test_tools_use_only_public_names(package):
    private = [f"{MODULES[m].relative_to(ROOT)}: {module}.{n}" for m in MODULES if package_of(m) == package
               for module, names in imports(MODULES[m])
               if module.split(".")[0] in PACKAGES and package_of(module) != package for n in names if n.startswith("_")]
    private += [f"{MODULES[m].relative_to(ROOT)}: {module}" for m in MODULES if package_of(m) == package
                for module, _ in imports(MODULES[m])
                if any(part.startswith("_") for part in module.split(".")) and module != "__future__"]
    assert not private, private


def test_no_path_edits():
    """The project is installed (pip install -e .), not found by editing sys.path or PYTHONPATH."""
    scripts = [*sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "docs").glob("*.py"))]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in [*MODULES.values(), *scripts]
            if p != Path(__file__)
            for i, line in enumerate(p.read_text().splitlines(), 1) if "sys.path" in line or "PYTHONPATH" in line]
    assert not hits, hits


def test_no_provenance_in_library_code():
    """Model, data and training code name things by what they are; seed numbers live in configs and docs."""
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("models", "train", "data")
            for p in sorted((ROOT / folder).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if "seed00" in line.lower()]
    assert not hits, hits
