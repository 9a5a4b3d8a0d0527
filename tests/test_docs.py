"""The documentation against the code: docs/'s generated parts are current (docs/generate.py --check), the
config reference states the real defaults, README.md stays short, every relative link resolves, and every
main.py flag and file the README names exists."""
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


# The flags main.py has are read from its parser (main.build_parser), so a new flag needs no change here.
def parser_flags() -> set[str]:
    """Every flag main.py's parser knows, read from its --help text."""
    from main import build_parser

    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", build_parser().format_help()))


MAIN_FLAGS = parser_flags()


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate():
    return load_generator()


@pytest.fixture(scope="module")
def rendered(generate):
    """Each page's generated blocks, built once (the models table builds every model, on the meta device)."""
    return {page: {name: render() for name, render in blocks.items()} for page, blocks in generate.PAGES.items()}


def fixed(generate, rendered, monkeypatch):
    """The generator with its blocks rendered already."""
    monkeypatch.setattr(generate, "PAGES", {page: {name: (lambda text=text: text) for name, text in blocks.items()}
                                            for page, blocks in rendered.items()})
    return generate


# ----------------------------------------------------------------------------- generated pages


def test_generated_docs_agree_with_the_code(generate, rendered, monkeypatch, capsys):
    """`python docs/generate.py --check`, in this process."""
    code = fixed(generate, rendered, monkeypatch).main(["--check"])
    assert code == 0, f"{capsys.readouterr().out.strip()} (then commit docs/)"


def test_check_names_the_stale_file_and_a_rewrite_fixes_it(generate, rendered, monkeypatch, tmp_path, capsys):
    generate = fixed(generate, rendered, monkeypatch)
    for page in generate.PAGES:
        (tmp_path / page).write_text((DOCS / page).read_text())
    config = tmp_path / "config.md"
    config.write_text(config.read_text().replace("| `epochs` | int | `10` |", "| `epochs` | int | `20` |"))
    assert generate.main(["--check"], docs=tmp_path) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "config.md is stale" in out, out
    assert generate.main([], docs=tmp_path) == 0
    assert config.read_text() == (DOCS / "config.md").read_text()
    assert generate.main(["--check"], docs=tmp_path) == 0


def test_generated_blocks_keep_the_prose_around_them(generate, rendered, monkeypatch, tmp_path):
    generate = fixed(generate, rendered, monkeypatch)
    page = tmp_path / "models.md"
    page.write_text("before\n<!-- generated: models -->\nSTALE TABLE\n<!-- end generated -->\nmiddle\n"
                    "<!-- generated: renamed-models --><!-- end generated -->\nafter\n")
    (tmp_path / "config.md").write_text((DOCS / "config.md").read_text())
    assert generate.main([], docs=tmp_path) == 0
    text = page.read_text()
    assert text.startswith("before\n<!-- generated: models -->\n") and text.endswith("-->\nafter\n")
    assert "\nmiddle\n" in text and "STALE TABLE" not in text and "| `simple_cnn` |" in text


def documented(section_title: str) -> dict[str, dict[str, str]]:
    """The rows of one section's table in docs/config.md's generated block: key -> {column: cell}."""
    text = (DOCS / "config.md").read_text().split("<!-- generated: config -->")[1].split("<!-- end generated -->")[0]
    part = text.split(f"\n### {section_title}\n")[1].split("\n### ")[0]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        key = re.fullmatch(r"`(\w+)`", cells[0])
        if key:
            rows[key.group(1)] = dict(zip(header, cells))
    return rows


def test_config_reference_states_every_key_with_its_real_default():
    """Independent of the generator: read back from the page, each default is the config's own value."""
    from config import from_dict

    cfg = from_dict({"model": {"name": "simple_cnn"}, "data": {"name": "cifar10"}})
    sections = {"Top level": cfg, **{f"`{f.name}`": getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                                     if dataclasses.is_dataclass(getattr(cfg, f.name))}}
    for title, section in sections.items():
        rows = documented(title)
        fields = [f.name for f in dataclasses.fields(section) if not dataclasses.is_dataclass(getattr(section, f.name))
                  and f.name != "kwargs"]
        assert sorted(rows) == sorted(fields), (title, sorted(rows), sorted(fields))
        for key, row in rows.items():
            text = row["default"]
            if text == "required":
                continue
            actual = getattr(section, key)
            stated = text.strip("`") if isinstance(actual, str) else yaml.safe_load(text.strip("`"))
            assert stated == actual and type(stated) is type(actual), (title, key, text, actual)


def test_models_table_lists_every_registered_model(rendered):
    from models import list_models

    table = rendered["models.md"]["models"]
    assert sorted(re.findall(r"^\| `([\w/]+)` \|", table, re.M)) == list_models()  # grouped by family
    assert "| `simple_cnn` | 431,594 | `cifar10` | 32 px | CNN |" in table  # the CNN vs. CNN+Transformer write-up's CNN
    assert "| `vit_mini_patchnorm` | 1,202,410 | `cifar10` | 28/32 px | ViT |" in table


# ----------------------------------------------------------------------------- README and links


def without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (but - and _), spaces as hyphens."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; reference material belongs in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading '{anchor}' in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def commands(text: str) -> list[str]:
    """The README's shell lines (continuations joined) and inline code spans."""
    blocks = re.findall(r"^```(?:bash|sh)?\n(.*?)^```", text, flags=re.M | re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", without_fences(text))


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def main_flags(text: str) -> set[str]:
    """Flags given to main.py (or vitlab) in commands, and inline code that starts with a flag."""
    found = set()
    for command in commands(text):
        after = re.search(r"(?:main\.py|\bvitlab)\b(.*)", command)
        if after:
            found |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", after.group(1)))
        elif command.startswith("--"):
            found |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", command))
    return found


def test_readme_flags_are_main_flags():
    found = main_flags(README.read_text())
    assert {"--cfg", "--set", "--dry-run", "--list-models", "--resume", "--eval", "--predict"} <= found
    assert found <= MAIN_FLAGS, f"README.md names flags main.py does not have: {sorted(found - MAIN_FLAGS)}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_commands_use_main_flags(page):
    found = set()
    for command in commands(page.read_text()):
        after = re.search(r"(?:main\.py|\bvitlab)\b(.*)", command)
        if after:
            found |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", after.group(1)))
    assert found <= MAIN_FLAGS, f"{page.name} gives main.py flags it does not have: {sorted(found - MAIN_FLAGS)}"


def test_readme_commands_name_files_that_exist():
    blocks = re.findall(r"^```(?:bash|sh)?\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    paths = {p for block in blocks for p in re.findall(r"(?<![\w/.-])((?:configs|docs|tests|requirements)[\w/.-]*)",
                                                       block)}
    assert {"configs/fashion_mnist.yaml", "docs/examples/ankle_boot.png"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md's commands name files that do not exist: {missing}"


def test_readme_has_the_test_commands_ci_runs():
    """.ci/run runs the README's test commands: each pytest call it makes without a changed environment."""
    ci = (ROOT / ".ci" / "run").read_text()
    calls = re.findall(r'^part "[^"]+" "\$PY" (-m pytest.*)$', ci, re.M)
    assert len(calls) >= 2, calls
    readme = README.read_text()
    missing = [call for call in calls if f"python {call}" not in readme]
    assert not missing, f"README.md lacks the test commands .ci/run runs: {missing}"
