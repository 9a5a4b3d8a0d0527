"""PyYAML's safe loader, with the two tags whose bad values PyYAML itself reports as a bare ``KeyError``
(``!!bool maybe``) or ``AttributeError`` (``!!timestamp x``): here they are ``yaml.YAMLError``s naming the value
and its line, which every reader of YAML text (configs, a run's config.yaml) reports in one line."""
from __future__ import annotations

from typing import Any

import yaml

from core.convert import short_repr


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose ``!!bool`` and ``!!timestamp`` refuse a value that is not one."""


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


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` with ``SafeLoader``."""
    return yaml.load(text, Loader=SafeLoader)
