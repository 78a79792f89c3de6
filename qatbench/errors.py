"""The one error type users see as a single line, never as a traceback.

Anything the user can fix (a typo in a suite, a missing folder, a wrong type) raises a
`UserError`; the CLI prints its message and exits with code 2. Everything else is a bug or a
failing run, and is recorded, not hidden.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input, explained in one line."""


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def allowed_list(allowed: Iterable[str]) -> str:
    return ", ".join(sorted(str(a) for a in allowed))


EXCERPT_CHARS = 120  # an error quotes at most this much of a bad value: one line, whatever the input


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """`repr`-like text of a value cut to `limit` characters, on one line (a YAML of nested aliases
    expands to megabytes: the error names it, it does not print it)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one bounded line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return excerpt(f"{type(exc).__name__}: {lines[0] if lines else ''}", limit)
