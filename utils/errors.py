"""User-facing errors and the command-line wrapper that reports them.

A :class:`UserError` is a mistake the user can fix (a wrong path, a bad flag, a broken file).
Command-line entry points run through :func:`run_cli`, which prints such an error as one clear
line and exits non-zero instead of showing a traceback. Programming errors still raise.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error caused by input the user controls; the message says what to do."""


def first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's message, for a one-line error that keeps the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].split(". ")[0][:200] if lines else type(err).__name__


def flags_not_applicable(names, method: str) -> UserError:
    """The error for flags that mean nothing to ``method``."""
    flags = ", ".join(f"--{n}" for n in sorted(names))
    verb = "does" if len(names) == 1 else "do"
    return UserError(f"{flags} {verb} not apply to --method {method}")


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; turn :class:`UserError` and Ctrl-C into a message and an exit code."""
    log = logging.getLogger("zsad")
    try:
        code = main(argv)
    except UserError as err:
        if not logging.getLogger().handlers and not log.handlers:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        log.error("error: %s", err)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    return int(code or 0)


def exit_with(main: Callable[[Optional[Sequence[str]]], Optional[int]]) -> None:
    """``sys.exit(run_cli(main))`` for ``if __name__ == "__main__"`` blocks."""
    sys.exit(run_cli(main))
