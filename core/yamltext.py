"""PyYAML's safe loader, with the two tags whose bad values PyYAML itself reports as a bare ``KeyError``
(``!!bool maybe``) or ``AttributeError`` (``!!timestamp x``): here they are ``yaml.YAMLError``s naming the value
and its line, which every reader of YAML text (configs, a run's config.yaml) reports in one line. Nesting is
capped as the text is scanned (``MAX_DEPTH``); ``nesting`` checks loaded data, which aliases can nest deeper."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import yaml

from core.convert import short_repr


# A config nests a few levels (section, key, a list of lists in a model argument). Without a cap, PyYAML's
# scanner walks every open level for every token (quadratic up to about 1,000 levels: 1.5 s for 5,000
# brackets on an idle machine, 3 ms with the cap; timing yaml.load of "model: " + "[" * 5000 + "]" * 5000
# with each loader) before its parser runs out of Python stack, and the error names no line.
MAX_DEPTH = 100


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose ``!!bool`` and ``!!timestamp`` refuse a value that is not one, and which refuses
    text nested more than ``MAX_DEPTH`` levels of brackets and indentation, at the one that goes past it. (A list
    whose dashes sit at its key's own indentation adds no indentation: text nested that way can hold up to twice
    as many levels of data. ``nesting`` measures the data itself.)"""

    def fetch_flow_collection_start(self, TokenClass):  # '[' or '{'
        self._deeper()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:  # a block mapping or list opens
        if self.indent < column:
            self._deeper()
        return super().add_indent(column)

    def _deeper(self) -> None:
        if len(self.indents) + self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested more than {MAX_DEPTH} levels deep (a config "
                                            f"nests a few)", self.get_mark())


def _not_a(kind: str, node: yaml.ScalarNode, valid: str) -> yaml.constructor.ConstructorError:
    tag = node.tag.rsplit(":", 1)[-1]
    return yaml.constructor.ConstructorError(None, None, f"!!{tag} {short_repr(node.value)} is not a {kind} ({valid})",
                                             node.start_mark)


def _construct_bool(loader: SafeLoader, node: yaml.ScalarNode) -> bool:
    value = loader.construct_scalar(node)
    if value.lower() not in loader.bool_values:
        raise _not_a("boolean", node, "true or false")
    return loader.bool_values[value.lower()]


def _construct_timestamp(loader: SafeLoader, node: yaml.ScalarNode) -> Any:
    if not loader.timestamp_regexp.match(loader.construct_scalar(node)):
        raise _not_a("date or time", node, "e.g. 2024-05-01 or 2024-05-01 12:30:00")
    return loader.construct_yaml_timestamp(node)


SafeLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
SafeLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def problem(e: yaml.YAMLError) -> str:
    """What is wrong, and where: "while scanning ..., found ... at line L, column C" (one line, without PyYAML's
    excerpt of the text)."""
    if isinstance(e, yaml.reader.ReaderError):  # a byte or character no YAML text may hold: no line, a position
        return f"{str(e).strip().splitlines()[0]} at character {e.position + 1}"
    mark = getattr(e, "problem_mark", None)
    what = ", ".join(str(part) for part in (getattr(e, "context", None), getattr(e, "problem", None)) if part)
    what = (what or str(e).strip() or type(e).__name__).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what


_END = object()


def nesting(value: Any, limit: int = MAX_DEPTH) -> Optional[str]:
    """Why loaded data cannot be walked, or None: nested more than ``limit`` levels (aliases can build that
    from a short text) or containing itself (``&a [*a]``). Iterative, and each list or mapping is looked
    into once however many aliases repeat it."""
    depth: dict[int, int] = {}  # id -> the levels found below it; -1 while it is being looked into
    stack: list[tuple[Any, Iterator[Any]]] = []

    def children(v: Any) -> Iterator[Any]:
        return iter(v.values() if isinstance(v, dict) else v)

    if not isinstance(value, (dict, list)):
        return None
    depth[id(value)] = -1
    stack.append((value, children(value)))
    while stack:
        parent, items = stack[-1]
        child = next(items, _END)
        if child is _END:
            stack.pop()
            below = 1 + max((depth[id(c)] for c in children(parent) if isinstance(c, (dict, list))), default=0)
            if below > limit:
                return f"nested more than {limit} levels deep"
            depth[id(parent)] = below
            continue
        if not isinstance(child, (dict, list)):
            continue
        seen = depth.get(id(child))
        if seen == -1:
            return "a list or mapping contains itself (through an alias)"
        if seen is None:
            if len(stack) >= limit:
                return f"nested more than {limit} levels deep"
            depth[id(child)] = -1
            stack.append((child, children(child)))
    return None


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` with ``SafeLoader``."""
    return yaml.load(text, Loader=SafeLoader)
