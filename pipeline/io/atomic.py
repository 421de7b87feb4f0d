"""Atomic writes: a reader never sees half a file, and a failed write leaves the old file as it was."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(destination: Path | str) -> Iterator[Path]:
    """A temporary path beside ``destination``, renamed onto it when the block succeeds.

    The temporary name is hidden, unique per process and keeps the suffix (GDAL and numpy choose the
    format by it). On an exception it is removed, with any GDAL ``.aux.xml`` sidecar, and
    ``destination`` is left untouched.

    Args:
        destination: the file to write; its folder is created if missing.

    Yields:
        The temporary path to write to.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.stem}.{os.getpid()}.partial{destination.suffix}")
    try:
        yield partial
        os.replace(partial, destination)
    finally:
        for leftover in (partial, partial.with_name(partial.name + ".aux.xml")):
            leftover.unlink(missing_ok=True)


def write_atomic(destination: Path | str, content: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``destination`` atomically.

    Args:
        destination: the file to write.
        content: the whole content.

    Returns:
        ``destination`` as a :class:`~pathlib.Path`.
    """
    data = content.encode() if isinstance(content, str) else content
    with atomic_path(destination) as partial:
        partial.write_bytes(data)
    return Path(destination)
