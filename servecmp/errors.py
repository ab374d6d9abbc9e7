"""The one exception type that reaches the user as a single line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable environment: the CLI prints the message on one line and exits non-zero.

    Raise it wherever the cause is something the user can fix (a URL, a file, a flag); let real
    bugs propagate as ordinary exceptions so they keep their traceback.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        # Keep it to one line: multi-line causes (server logs, tracebacks) belong in files.
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code
