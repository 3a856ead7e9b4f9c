"""The library's expected-failure type: bad input from the user, reported as one line.

:class:`UserError` marks an error the user can fix (a bad argument, a damaged or foreign file, a
run folder that does not fit the options). The command line prints such errors as one line and
exits with status 2; any other exception is a bug and keeps its traceback. Subclasses also derive
from the built-in type that callers caught before (``ValueError``, ``RuntimeError``, ...), so
existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["UserError", "UserValueError"]


class UserError(Exception):
    """An expected failure caused by the input; the message names the file or argument."""


class UserValueError(UserError, ValueError):
    """A bad value (argument, config field, file content)."""
