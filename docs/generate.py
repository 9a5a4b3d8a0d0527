"""Rewrite the parts of docs/ that are generated from the code, or check that they are current.

    python docs/generate.py           # rewrite the generated blocks of docs/config.md and docs/models.md
    python docs/generate.py --check   # exit 1 with one line naming the first stale file; 0 when all agree

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in a page; the text
around it is written by hand and kept as it is. The blocks:

* ``config`` (docs/config.md): every section and key of ``config/schema.py`` with its type, default, allowed
  values (the ``num(...)`` range or the ``Literal`` choices) and the comment that documents it in the source;
* ``models`` (docs/models.md): every registered model with its parameter count at its default dataset, that
  dataset, its ``model.*`` keys and the first line of its builder's docstring (what ``--list-models`` prints);
* ``renamed-models`` (docs/models.md): the old model names the loader refuses, with their new names.

Models are built under ``torch.device("meta")``: shapes only, no memory, no initialisation.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"  # the project's packages import as installed (pip install -e .)

BEGIN = "<!-- generated: {name} -->"
END = "<!-- end generated -->"
NOTE = "<!-- Do not edit this block by hand: python docs/generate.py rewrites it from the code. -->"


# ----------------------------------------------------------------------------- small helpers

def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell (reStructuredText's ``code`` becomes Markdown's `code`)."""
    return " ".join(text.split()).replace("|", "\\|").replace("``", "`") or "—"


def _yaml(value: Any) -> str:
    """A default as it would be written in a config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def _code(text: str) -> str:
    return f"`{text}`"


# ----------------------------------------------------------------------------- the config reference

def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """Every comment by line number, and the lines that hold nothing but a comment."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = re.sub(r"\s*noqa\b.*$", "", tok.string.lstrip("#").strip())
            comments[tok.start[0]] = text
    lines = source.splitlines()
    whole = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
    return comments, whole


def field_comments(module) -> dict[str, dict[str, str]]:
    """For each class of ``module``'s source, each annotated field's comment: the comment lines right above the
    field, then the one at the end of its line."""
    source = inspect.getsource(module)
    comments, whole = _comments(source)
    found: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, line = [], stmt.lineno - 1
            while line in whole:
                above.insert(0, comments[line])
                line -= 1
            after = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments and n not in whole]
            found.setdefault(node.name, {})[stmt.target.id] = " ".join(above + after)
    return found


def _describe_type(tp: Any) -> tuple[str, list[Any] | None, bool]:
    """(type in words, the choices of a Literal or None, whether null is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        words, choices, _ = _describe_type(inner[0])
        return words, choices, True
    if typing.get_origin(tp) is typing.Literal:
        return "string", list(args), False
    named = [a for a in args if typing.get_origin(a) is typing.Literal]
    if len(args) == 2 and len(named) == 1:  # a number or a named choice: int | Literal["auto"]
        words, _, _ = _describe_type(next(a for a in args if a is not named[0]))
        return f"{words} or string", list(typing.get_args(named[0])), False
    if typing.get_origin(tp) is list:
        return f"list of {_describe_type(args[0])[0]}", None, False
    if typing.get_origin(tp) is dict or tp is dict:
        return "mapping", None, False
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, getattr(tp, "__name__", str(tp))), \
        None, False


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def config_rows(cls: type, comments: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed, comment) for every plain field of one config section."""
    from config import loader, schema

    hints = typing.get_type_hints(cls, vars(schema))
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        words, choices, null_ok = _describe_type(tp)
        default = _default(f)
        allowed = []
        if choices:
            allowed.append(", ".join(_code(c) for c in choices))
            if f.name in loader._BOOL_CHOICES:  # YAML's true / false stand for two of the choices
                allowed.append("; " + ", ".join(f"{_code(_yaml(k))} = {_code(v)}"
                                                for k, v in loader._BOOL_CHOICES[f.name].items()))
        if "range" in f.metadata:
            ge, gt, le, lt, null_ok = f.metadata["range"]
            allowed.append((", or " if allowed else "") + schema._describe_range(ge, gt, le, lt))
        if cls is schema.DataConfig and f.name == "name":
            allowed.append(", ".join(_code(d) for d in schema.DATASET_NAMES))
        if cls is schema.ModelConfig and f.name == "name":
            allowed.append("a model of [models.md](models.md), or `timm/<name>`")
        if null_ok and allowed:
            allowed.append(", or null")
        rows.append((_code(f.name), words + (" or null" if null_ok else ""),
                     "required" if default is schema.REQUIRED else _code(_yaml(default)),
                     "".join(allowed), comments.get(f.name, "")))
    return rows


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_config() -> str:
    from config import loader, schema

    comments = field_comments(schema)
    header = ("key", "type", "default", "allowed", "what it does (from config/schema.py)")
    hints = typing.get_type_hints(schema.Config, vars(schema))
    out = ["### Top level", ""]
    out += _table(config_rows(schema.Config, comments["Config"]), header)
    for f in dataclasses.fields(schema.Config):
        cls = hints[f.name]
        if not dataclasses.is_dataclass(cls):
            continue
        out += ["", f"### `{f.name}`", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # not dataclass's generated one
            out += [" ".join(cls.__doc__.split()).replace("``", "`"), ""]
        rows = config_rows(cls, comments.get(cls.__name__, {}))
        if cls is schema.ModelConfig:
            rows = [r for r in rows if r[0] != "`kwargs`"]
            rows.append(("any other key", "per model", "the builder's", "the builder's signature and types",
                         "passed to the model's builder as a keyword argument; docs/models.md lists each "
                         "model's keys"))
        out += _table(rows, header)
    if loader.RENAMED_KEYS:
        out += ["", "Replaced keys, refused with an error that names the new one: "
                + "; ".join(f"{_code(old)} → {new}" for old, new in loader.RENAMED_KEYS.items()) + "."]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the models table

def model_rows() -> list[tuple[str, ...]]:
    """(name, parameters, default dataset, input size, family, model.* keys, description) for every registered
    model, grouped by family as --list-models prints them."""
    from data import get_spec
    from models.catalog import catalog, input_text

    return [(_code(e.name), f"{e.params:,}", _code(e.dataset), input_text(e), e.family,
             ", ".join(_code(k) for k in e.keys) or "none", e.doc) for e in catalog(get_spec)]


def render_models() -> str:
    header = ("model", "params", "dataset", "input", "family", "`model.*` keys", "what it is (its builder's docstring)")
    lines = _table(model_rows(), header)
    # right-align the parameter counts
    lines[1] = "|---|---:|---|---|---|---|---|"
    return "\n".join(lines)


def render_renamed_models() -> str:
    from config import loader

    rows = [(_code(old), _code(new)) for old, new in sorted(loader.RENAMED_MODELS.items())]
    return "\n".join(_table(rows, ("old name", "new name")))


# ----------------------------------------------------------------------------- pages and blocks

PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "config.md": {"config": render_config},
    "models.md": {"models": render_models, "renamed-models": render_renamed_models},
}


def rewrite(text: str, blocks: dict[str, str], page: str) -> str:
    """``text`` with each generated block replaced by its new content."""
    for name, body in blocks.items():
        begin = BEGIN.format(name=name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(END), re.S)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"docs/{page}: needs exactly one '{begin}' ... '{END}' block")
        text = pattern.sub(lambda _: f"{begin}\n{NOTE}\n\n{body}\n\n{END}", text)
    return text


def generated(docs: Path = DOCS) -> dict[Path, tuple[str, str]]:
    """Each page: (its text now, its text with every block regenerated)."""
    out = {}
    for page, renderers in PAGES.items():
        path = docs / page
        text = path.read_text() if path.exists() else ""
        out[path] = (text, rewrite(text, {name: render() for name, render in renderers.items()}, page)
                     if text else "")
    return out


def stale(docs: Path = DOCS) -> list[Path]:
    """The pages whose generated blocks differ from what the code gives now (or that are missing)."""
    return [path for path, (now, new) in generated(docs).items() if not now or now != new]


def main(argv: list[str] | None = None, docs: Path = DOCS) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    pages = generated(docs)
    for path, (now, new) in pages.items():
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if not now:
            print(f"{shown}: missing; it must hold its generated blocks ({', '.join(PAGES[path.name])})")
            return 1
        if now != new:
            if args.check:
                print(f"{shown} is stale: it disagrees with the code; run python docs/generate.py")
                return 1
            path.write_text(new)
            print(f"rewrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
