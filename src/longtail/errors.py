"""Exceptions for mistakes a user can fix (bad config, missing files, bad data) and for Ctrl-C."""

from __future__ import annotations

from pathlib import Path


class LongtailError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with status 2.

    Messages name the file and line or the config key, what was expected and what was found.
    """


class Interrupted(Exception):
    """Ctrl-C during a run: carries what to type to continue it."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


class UnreadableFile(LongtailError):
    """A file torch (or JSON) cannot read: truncated, corrupt or of another format. Carries
    the path, so a caller that holds the file only as a cache can remove it and redo it."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path
