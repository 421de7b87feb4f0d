"""Atomic writes: a reader never sees half a file, and a failed write leaves the old file as it was."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.io.write_errors import output_errors


@contextmanager
def atomic_path(destination: Path | str) -> Iterator[Path]:
    """A temporary path beside ``destination``, renamed onto it when the block succeeds.

    The temporary name, ``.{stem}.{host}-{pid}.partial{suffix}``, is hidden, unique per process and
    keeps the suffix (GDAL and numpy choose the format by it); host and pid let
    :func:`remove_abandoned_partials` find those of killed processes. On an exception it is removed,
    with any GDAL ``.aux.xml`` sidecar, and ``destination`` is left untouched.

    Args:
        destination: the file to write; its folder is created if missing.

    Yields:
        The temporary path to write to.

    Raises:
        OutputError: naming ``destination``, when the disk is full or the folder is read-only or not
            writable (:mod:`pipeline.io.write_errors`).
    """
    destination = Path(destination)
    partial = destination.with_name(f".{destination.stem}.{_host()}-{os.getpid()}.partial{destination.suffix}")
    try:
        with output_errors(destination):  # judged while the partial file still takes its space
            destination.parent.mkdir(parents=True, exist_ok=True)
            yield partial
            os.replace(partial, destination)
    finally:
        for leftover in (partial, partial.with_name(partial.name + ".aux.xml")):
            if leftover.exists():  # on a read-only folder even unlinking a missing file fails (EROFS)
                leftover.unlink()


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


def partial_folder(destination: Path | str) -> Path:
    """A new, empty, hidden folder beside ``destination`` to build it in, then rename it onto it.

    Its name, ``.{name}.{host}-{pid}.{random}.partial``, is unique to the call, so two processes (or
    threads) building the same folder never remove each other's; host and pid let
    :func:`remove_abandoned_partials` find those of killed processes.

    Args:
        destination: the folder to be built; its parent is created if missing.

    Returns:
        The new folder.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{destination.name}.{_host()}-{os.getpid()}."
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=destination.parent))


def remove_abandoned_partials(destination: Path | str) -> None:
    """Remove the partial folders (:func:`partial_folder`) and files (:func:`atomic_path`) of
    ``destination`` whose process, on this host, is gone.

    A killed build or write leaves its partial folder or file; one still running (here or on another
    host sharing the folder) keeps its own. The folder beside ``destination`` is listed: call it where
    a folder holds few files (a run folder, a release folder), not per tile.

    Args:
        destination: the folder or file whose partial copies are looked for beside it.
    """
    destination = Path(destination)
    if not destination.parent.is_dir():
        return
    host = _host()
    folders = re.compile(re.escape(f".{destination.name}.{host}-") + r"(\d+)\.[^/]*\.partial")
    files = re.compile(re.escape(f".{destination.stem}.{host}-") + r"(\d+)\.partial" + re.escape(destination.suffix))
    for entry in destination.parent.iterdir():
        match = folders.fullmatch(entry.name) or files.fullmatch(entry.name)
        if not match or process_running(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _host() -> str:
    # Host names may hold dots, which separate the parts of a partial folder's name.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def process_running(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
