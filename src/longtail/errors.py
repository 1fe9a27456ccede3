"""Exceptions for mistakes a user can fix (bad config, missing files, bad data) and for Ctrl-C."""

from __future__ import annotations

import errno
import os
import stat
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


def file_problem(path: str | Path) -> str | None:
    """Return why ``path`` is no regular file to read, as words to follow its name ("not
    found", "is a folder", "is in a loop of symbolic links", ...), or None when it is one.
    A FIFO or device is refused here: reading one would wait forever or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is in a loop of symbolic links"
        if e.errno == errno.ENAMETOOLONG:
            return f"has {too_long(path)}"
        if os.path.islink(path):
            return f"is a broken symbolic link (-> {os.readlink(path)})"
        if e.errno == errno.EACCES:
            return "cannot be reached (permission denied)"
        return "not found"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, device or socket)"
    return None


def too_long(path: str | Path) -> str:
    """Say which limit a path the system called too long is over: a name of one file or
    folder (255 bytes on most file systems), or the whole path (4096 bytes on Linux)."""
    parts = Path(path).parts
    if any(len(os.fsencode(part)) > 255 for part in parts):
        return "a file or folder name over 255 bytes"
    return "a path over 4096 bytes"
