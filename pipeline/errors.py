"""Errors a user sees: each names the file (or config key) and the problem."""

from __future__ import annotations

from pathlib import Path


class ChangeflowError(Exception):
    """Base class of the errors reported to the user without a traceback."""


class ConfigError(ChangeflowError):
    """A config file is missing, malformed, or has unknown keys or bad values."""


class InputError(ChangeflowError):
    """An input raster cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class GroupError(ChangeflowError):
    """A scene group cannot be prepared (no overlap, failed co-registration...)."""

    def __init__(self, group: str, problem: str) -> None:
        self.group = group
        self.problem = problem
        super().__init__(f"group '{group}': {problem}")


class OutputError(ChangeflowError):
    """An output cannot be written: the disk is full, or its folder is read-only or not writable.

    Args:
        path: the file (or folder) that could not be written.
        problem: what stops the write, e.g. ``"no space left on device"``.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot write {path}: {problem}")
