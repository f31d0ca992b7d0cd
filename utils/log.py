"""Logging set-up shared by the command-line tools: console plus an optional log file."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%H:%M:%S"


def setup_logging(log_file: Optional[Path] = None, level: int = logging.INFO) -> logging.Logger:
    """Configure logging for a CLI run and return the project logger ``zsad`` (at ``level``).

    Calling it again replaces the handlers it added before (others, such as a test
    harness's, stay), so several CLIs can run in one process.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_zsad", False)]:
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handlers = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
    for handler in handlers:
        handler._zsad = True
        root.addHandler(handler)
    # libraries that log through the root logger (open_clip) only show warnings
    root.setLevel(logging.WARNING)
    project = logging.getLogger("zsad")
    project.setLevel(level)
    return project
