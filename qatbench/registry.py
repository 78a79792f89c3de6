"""Name -> factory tables that list what exists and refuse typos with the nearest names.

Modelled on timm's registry (a decorator registers a factory under a name), without its global
mutable state beyond the tables themselves: each package owns one `Registry` instance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from qatbench.errors import UserError, allowed_list, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory and what `qatbench list` says about it."""

    name: str
    factory: T
    summary: str = ""
    paper: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A table of named factories of one kind ("method", "dataset", "model")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str = "", paper: str = "", **meta: Any) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc_line = (getattr(factory, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, summary or (doc_line[0] if doc_line else ""), paper, dict(meta))
            return factory

        return decorator

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"allowed: {allowed_list(self._entries)}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def parameters(self, name: str, positional: int) -> list[inspect.Parameter]:
        """The keyword options a factory takes after its `positional` leading arguments, with
        their annotations (evaluated) and defaults."""
        parameters = list(inspect.signature(self.get(name), eval_str=True).parameters.values())[positional:]
        return [p for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def check_options(self, name: str, positional: int, options: dict[str, Any], where: str = "") -> None:
        allowed = [p.name for p in self.parameters(name, positional)]
        for key in options:
            if key not in allowed:
                raise UserError(
                    f"{where or f'{self.kind} {name!r}'}: unknown option '{key}'{did_you_mean(key, allowed)}; "
                    f"allowed: {allowed_list(allowed) or 'none'}"
                )

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Call the factory after refusing options it does not take, naming the ones it does."""
        self.check_options(name, len(args), options)
        return self.get(name)(*args, **options)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
