"""Logging set-up shared by the command-line tools: console plus an optional log file."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%H:%M:%S"


def setup_logging(log_file: Optional[Path] = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger for a CLI run and return the project logger ``zsad``.

    Calling it again replaces the handlers, so tests can run several CLIs in one process.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        root.addHandler(file_handler)
    root.setLevel(level)
    return logging.getLogger("zsad")
