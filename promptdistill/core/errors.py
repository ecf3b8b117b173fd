"""The one exception type users see.

Anything raised as `UserError` is printed by the CLI as a single line (no traceback) and the
process exits non-zero. The message must name the file, field, flag or endpoint at fault and say
what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, an unreachable endpoint."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __str__(self) -> str:  # keep it to one line whatever the caller passed
        return " ".join(str(self.args[0]).split())
