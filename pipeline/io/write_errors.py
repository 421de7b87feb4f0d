"""Write failures a user can fix (a full disk, a read-only or forbidden folder) as one :class:`OutputError`.

A full disk reaches changeflow in many shapes: ``OSError(ENOSPC)`` from Python, rasterio's
``RasterioIOError('Write failed. See previous exception for details.')`` chained to GDAL's
``Write error at scanline``, GDAL's ``65536 requested and 5088 written``, torch's ``unexpected pos``
RuntimeError, pyogrio's ``Failed to commit transaction``. Only some name the cause, so an error
without a known errno or message is explained by looking at the folder being written: read-only,
not writable, or (almost) no free space left. Anything else is not a write problem and is re-raised
unchanged.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import ChangeflowError, InputError, OutputError

NO_SPACE = "no space left on device"
QUOTA = "disk quota exceeded"
READ_ONLY = "output folder is read-only"
NOT_WRITABLE = "output folder is not writable (permission denied)"
# A write that failed with less than this left on its device failed for want of space.
LOW_SPACE_BYTES = 1 << 20

_ERRNOS = {errno.ENOSPC: NO_SPACE, errno.EDQUOT: QUOTA, errno.EROFS: READ_ONLY}
_DENIED = {errno.EACCES, errno.EPERM}
_MESSAGES = (
    (re.compile(r"no space left on device|requested and \d+ written"), NO_SPACE),
    (re.compile(r"disk quota exceeded"), QUOTA),
    (re.compile(r"read-only file system"), READ_ONLY),
)
# Messages of a failed write that do not say why (GDAL, libtiff, torch, SQLite through pyogrio).
_WRITE_FAILED = re.compile(r"write failed|write error|error writing|failed writing|unexpected pos|failed to commit"
                           r"|could not write|unable to open database file")


def write_problem(exc: BaseException, path: Path | str) -> str | None:
    """What made writing ``path`` fail, when it is the disk or the folder; None for any other error.

    Args:
        exc: the exception raised while writing ``path``.
        path: the file (or folder) being written.

    Returns:
        :data:`NO_SPACE`, :data:`QUOTA`, :data:`READ_ONLY`, :data:`NOT_WRITABLE`, ``"write failed
        (…), N MiB free on the device"`` for a write that failed for no stated reason, or None.
    """
    if isinstance(exc, ChangeflowError):
        return None
    chain = _chain(exc)
    for error in chain:
        if isinstance(error, OSError) and error.errno in _ERRNOS:
            return _ERRNOS[error.errno]
    text = " | ".join(str(error) for error in chain).lower()
    for pattern, problem in _MESSAGES:
        if pattern.search(text):
            return problem
    folder = _existing_folder(Path(path))
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return READ_ONLY
    if not os.access(folder, os.W_OK):
        return NOT_WRITABLE
    free = shutil.disk_usage(folder).free
    if free < LOW_SPACE_BYTES:
        return NO_SPACE
    if _WRITE_FAILED.search(text):
        return f"write failed ({chain[-1]}), {free / 2**20:.1f} MiB free on the device"
    return None


@contextmanager
def output_errors(path: Path | str) -> Iterator[None]:
    """Raise a failure to write ``path`` caused by its disk or folder as an :class:`OutputError` naming it.

    Other errors go through unchanged (an OutputError raised inside, naming a more precise path, too).

    Args:
        path: the file (or folder) written inside the block.

    Raises:
        OutputError: the disk is full, or the folder is read-only or not writable.
    """
    try:
        yield
    except Exception as exc:
        problem = write_problem(exc, path)
        if problem is None:
            raise
        raise OutputError(path, problem) from exc


def folder_or_creatable(folder: Path, setting: str) -> Path:
    """``folder`` when it is a folder or can be made one; checked before a command writes anything.

    Args:
        folder: an output folder given by the user.
        setting: how the user gave it, for the message (``--out``, ``workspace``).

    Returns:
        ``folder``.

    Raises:
        InputError: ``folder``, or a path above it, exists and is not a folder (naming it).
    """
    # The nearest existing path decides; a dangling link counts as existing (mkdir would fail on it).
    nearest = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if nearest is not None and not nearest.is_dir():
        if nearest == folder:
            raise InputError(folder, f"is not a folder; {setting} must name a folder")
        raise InputError(nearest, f"is not a folder, so {setting} {folder} cannot be created")
    return folder


def writable_folder(folder: Path | str) -> Path:
    """Create ``folder`` if missing and check that a file can be written in it, before a long run starts.

    Args:
        folder: an output folder.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: naming the folder, when it cannot be created or written (read-only, permission
            denied, no space left).
    """
    folder = Path(folder)
    with output_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:  # one byte: a full disk refuses even that
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())
    return folder


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (rasterio chains GDAL's own error as the cause)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _existing_folder(path: Path) -> Path:
    """The folder ``path`` is (or would be) written in, or its nearest existing ancestor."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
