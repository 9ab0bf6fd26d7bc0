"""Turning an exception from Paddle or PaddleNLP into the one line a user is shown."""

from __future__ import annotations

import re


def error_line(error: BaseException) -> str:
    """The line of ``error``'s message that says what went wrong.

    Paddle prefixes errors raised while running a program with "In user code:" and the
    Python stack; the message is the first line naming an error type after that.
    Otherwise it is the first line, or the exception's type for an empty message.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^\(?\w*(Error|Exception)\b", line)]
    return (named or lines or [type(error).__name__])[0]
