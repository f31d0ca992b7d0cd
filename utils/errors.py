"""User-facing errors and the command-line wrapper that reports them.

A :class:`UserError` is a mistake the user can fix (a wrong path, a bad flag, a broken file).
Command-line entry points run through :func:`run_cli`, which prints such an error as one clear
line and exits non-zero instead of showing a traceback. Programming errors still raise.
"""
from __future__ import annotations

import errno
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


_OFFLINE_ERRORS = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "Timeout",
                   "URLError", "gaierror", "MaxRetryError", "NewConnectionError"}
_UNREADABLE_ERRORS = {"UnpicklingError", "EOFError", "SafetensorError", "BadZipFile"}


def fetch_error(err: BaseException, what: str, model: str, cache_dir: Optional[str]) -> str:
    """One line for a failed download-and-load of ``what`` (e.g. "the 'openai' weights of
    ViT-L-14-336") through open_clip: the cause, and what to do about that kind of failure."""
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    text = " ".join(str(e) for e in chain).lower()
    cause = f"{type(err).__name__}: {first_sentence(err)}"
    try:
        from huggingface_hub import constants as hub_constants
        cache = cache_dir or hub_constants.HF_HUB_CACHE
    except ImportError:
        cache = cache_dir or "the open_clip cache"
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain):
        return (f"no space left on the disk while fetching {what} ({cause}); free space in {cache} "
                "or pass --cache_dir on a larger disk")
    if "checksum" in text or "sha256" in text or "consistency check failed" in text:
        return f"{what} failed their integrity check ({cause}); delete the download from {cache} and run again"
    if names & _OFFLINE_ERRORS or "failed to download" in text:
        return (f"could not download {what} ({cause}). If this machine is offline, copy the weight file "
                "here (for ViT-L-14-336: ViT-L-14-336px.pt from OpenAI's CLIP release) and pass "
                "--pretrained /path/to/ViT-L-14-336px.pt (or set CLIP_WEIGHTS for the .sh scripts)")
    if names & _UNREADABLE_ERRORS or "pytorchstreamreader" in text or "deserializing header" in text:
        return (f"the cached copy of {what} is unreadable, probably an interrupted download ({cause}); "
                f"delete it from {cache} and run again")
    return f"open_clip could not create {model} with {what} ({cause})"


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
