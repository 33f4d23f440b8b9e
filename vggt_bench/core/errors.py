"""User errors: one line naming the fix, one exit code, no traceback; any exception as one line."""

from __future__ import annotations

import sys
from typing import Optional

EXIT_USER_ERROR = 2  # every bad setting, missing file or unusable input, whichever command
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it): one line saying what was kept


class UserError(ValueError):
    """Bad input: printed as one line naming the fix, exit code EXIT_USER_ERROR."""


def say_error(message: str) -> None:
    print(f"vggt_bench: error: {message}", file=sys.stderr)


def fail(message: str, code: int = EXIT_USER_ERROR):
    """One line on stderr, no traceback, non-zero exit."""
    say_error(message)
    raise SystemExit(code)


def one_line(exc: BaseException, limit: Optional[int] = 500) -> str:
    """``Type: first line of the message``, cut at ``limit`` characters (None: whole): how a failure
    is said in a row's message, a profile status or one line on the terminal."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}"
    return line if limit is None else line[:limit]
