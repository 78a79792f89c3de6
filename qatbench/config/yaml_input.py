"""YAML read as data a user typed, with the mistakes YAML itself lets through made errors: a key
written twice (YAML keeps the last one silently), aliases nested into a value of millions of
items (a 700-byte "billion laughs" file), an alias that contains itself, and NaN or infinite
numbers, which no setting of a suite accepts.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from qatbench.errors import UserError

MAX_VALUES = 100_000  # a paper-size suite holds a few thousand; aliases can multiply a file past any


class _Loader(yaml.SafeLoader):
    """SafeLoader (no tags run code) that refuses a mapping key given twice, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                break
            if first != line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{str(key)[:60]}' at lines {first} and {line}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The document, or yaml.YAMLError (duplicate keys included)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def check_values(value: Any, where: str) -> None:
    """UserError when `value` expands (through aliases) to more than MAX_VALUES items, contains
    itself, or holds a NaN or infinite number. Each shared node is counted once per reference but
    walked once, so a billion laughs is told in microseconds."""
    sizes: dict[int, int] = {}
    _size(value, sizes, set(), where, [])


def _size(value: Any, sizes: dict[int, int], active: set[int], where: str, path: list[str]) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{_at(where, path)}: {value} is not a number a suite accepts (NaN and infinities are not)")
    if not isinstance(value, dict | list):
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise UserError(f"{_at(where, path)}: an alias that contains itself")
    active.add(key)
    items = value.items() if isinstance(value, dict) else enumerate(value)
    total = 1
    for name, item in items:
        total += _size(item, sizes, active, where, [*path, f"[{name}]" if isinstance(name, int) else str(name)])
        if total > MAX_VALUES:
            raise UserError(
                f"{_at(where, path)}: expands to more than {MAX_VALUES:,} values (aliases within aliases?)"
            )
    active.discard(key)
    sizes[key] = total
    return total


def _at(where: str, path: list[str]) -> str:
    """'suite.yaml: seeds[4]', or '--set seeds[4]' below an overridden key."""
    text = ""
    for part in path:
        text += part if part.startswith("[") else f".{part}"
    text = text[:200]
    if where.startswith("--set "):
        return where + text
    return f"{where}: {text.removeprefix('.')}" if text else where
