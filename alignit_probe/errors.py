"""One error type for every bad input: its message names the problem and the fix, on one line."""


class ProbeError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2, no traceback."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} — {fix}")


class ProbeWarning(UserWarning):
    """Something the user should see (an artifact that changed nothing, a truncated prompt): shown by the CLI as
    ``warning: <message>`` on stderr, and kept in the store's attributes."""
