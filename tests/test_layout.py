"""The one-way flow of the design: config -> models, data -> train -> run directory -> plots; bench beside.

Read from the source's import statements, so a new arrow the wrong way fails here, not in a review.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "config", "models", "data", "train", "plots", "bench")

# What each package may import from the project (besides itself).
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "models": {"core"},
    "data": {"core"},
    "train": {"core", "config", "models", "data"},
    "plots": {"core", "config", "models", "data"},  # it reads run directories: no training code
    "bench": {"core", "config", "models", "data", "train"},
}


def project_imports(package: str):
    """(file, imported top-level project package, imported names) for every import in ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top, names = alias.name.split(".")[0], []
                    if top in PACKAGES or top == "main":
                        yield path.relative_to(ROOT), top, alias.name, names
                continue
            else:
                continue
            if top in PACKAGES or top == "main":
                yield path.relative_to(ROOT), top, node.module, names


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    wrong = [f"{f}: {module}" for f, top, module, _ in project_imports(package)
             if top != package and top not in ALLOWED[package]]
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


@pytest.mark.parametrize("package", ["plots", "bench"])
def test_tools_use_only_public_names(package):
    private = [f"{f}: {module}.{n}" for f, top, module, names in project_imports(package) if top != package
               for n in names if n.startswith("_")]
    private += [f"{f}: {module}" for f, top, module, _ in project_imports(package) if top != package
                and any(part.startswith("_") for part in module.split("."))]
    assert not private, private


def test_no_provenance_in_library_code():
    """Model, data and training code name things by what they are; seed numbers live in configs and docs."""
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("models", "train", "data")
            for p in sorted((ROOT / folder).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if "seed00" in line.lower()]
    assert not hits, hits
