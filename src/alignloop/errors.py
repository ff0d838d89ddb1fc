"""The one exception type a user of alignloop can meet.

Every error a user can cause (a bad config key, a malformed data line, a model that is not
installed) is raised as :class:`AlignloopError` with a message that names the cause and, where
there is one, the fix. The CLI prints it as one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class AlignloopError(Exception):
    """A user-facing error: ``str(err)`` is the whole story, ``hint`` says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")
