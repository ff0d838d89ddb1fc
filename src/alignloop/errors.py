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


class TrainingInterrupted(Exception):
    """A run stopped on SIGINT/SIGTERM after writing its checkpoint at ``step``; ``--resume`` continues it.

    Not an error of the user's making: the CLI prints where the run stopped and how to resume, and
    exits 130 (the shell's status for Ctrl-C) so ``sft && rm train`` does not carry on.
    """

    def __init__(self, step: int, run_dir: object = None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.run_dir = run_dir
