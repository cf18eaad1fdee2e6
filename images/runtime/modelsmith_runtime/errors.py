"""Two kinds of failure, because the Job controller treats them differently.

A `BadInputError` ends the process with exit code 2, which the Job's podFailurePolicy
turns into an immediate run failure: retrying a corrupt corpus cannot help. Anything
else exits 1 and is retried from the latest checkpoint.
"""

from __future__ import annotations

from typing import Any

from modelsmith.contract import Result


class BadInputError(Exception):
    """The task config, an input artifact or the data is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from our fields, not from args: Ray pickles a worker's exception to
        # the driver, and the default (the args alone) cannot call this __init__.
        return type(self), (self.reason, self.message)


class TransientError(Exception):
    """A failure a retry may get past; carries what the run achieved so far (checkpoint,
    progress), so the operator shows where the retry resumes."""

    def __init__(self, reason: str, message: str, partial: Result | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.partial = partial

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason, self.message, self.partial)
