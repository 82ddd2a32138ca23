"""The one exception type the CLI turns into a one-line error message."""

from __future__ import annotations


class SaltError(Exception):
    """A user-facing error: bad input, missing file, invalid config.

    The message is a single line that names the file or field and says what was
    expected. ``salt-exp`` prints it as ``error: <message>`` and exits with status 1 (2 is argparse's usage error).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def one_line(exc: BaseException) -> str:
    """``Type: message`` of any exception on one line (at most 500 characters), for tags and logs."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
