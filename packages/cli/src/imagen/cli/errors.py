"""The CLI's user errors: reported by ``main`` as one line on stderr with exit status 2."""

from __future__ import annotations


class CliError(Exception):
    """A user error: reported as one line on stderr with exit status 2."""


def one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    return " ".join(text.split())
