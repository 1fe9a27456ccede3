"""The one exception type for mistakes a user can fix (bad config, missing files, bad data)."""


class LongtailError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with status 2.

    Messages name the file and line or the config key, what was expected and what was found.
    """


class Interrupted(Exception):
    """Ctrl-C during a run: carries what to type to continue it."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint
