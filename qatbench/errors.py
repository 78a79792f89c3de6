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
