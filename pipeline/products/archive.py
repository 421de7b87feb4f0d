"""Safe extraction of delivered product archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``).

Archives come from outside, so nothing in them is trusted:

- a member whose name is absolute, has a drive, or climbs out with ``..`` is refused (zip-slip);
- symbolic and hard links, devices and FIFOs are refused: only regular files and folders are made;
- the member count and the bytes actually written are capped (a zip bomb stops at the cap, whatever
  sizes its headers claim);
- extraction goes to a hidden staging folder, unique to the extraction, that is renamed when
  complete, so a failed or killed extraction never leaves a half-filled folder that looks finished,
  and a refused one leaves nothing at all.

Every refusal is an :class:`~pipeline.errors.InputError` naming the archive.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import InputError
from pipeline.io.atomic import partial_folder, remove_abandoned_partials

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Caps on what one archive may extract."""

    max_bytes: int = 64 << 30
    max_members: int = 20_000


def is_archive(path: Path) -> bool:
    """Whether ``path`` is an existing file with an archive suffix (.zip, .tar, .tar.gz, .tgz).

    Args:
        path: any path; the suffix decides, not the content.

    Returns:
        True for an existing archive file.
    """
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    """The archive's name without its archive suffix (``X.SAFE.zip`` → ``X.SAFE``).

    Args:
        path: the archive.

    Returns:
        The file name without the longest matching archive suffix (the whole name when none matches).
    """
    name = path.name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_name(archive: Path, name: str) -> PurePosixPath | None:
    """The member's relative path, or an InputError when it would land outside the folder."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
        raise InputError(archive, f"archive member '{name}' has an absolute path; refused")
    if ".." in path.parts:
        raise InputError(archive, f"archive member '{name}' points outside the extraction folder (../); refused")
    parts = [part for part in path.parts if part not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def list_members(archive: Path, limits: Limits = Limits()) -> list[str]:
    """Names of the archive's regular files (checked like an extraction, nothing written).

    Args:
        archive: a .zip, .tar, .tar.gz or .tgz file.
        limits: the member cap (``max_members``) applied.

    Returns:
        The relative POSIX paths of the regular files, in archive order.

    Raises:
        InputError: the archive is unreadable, has too many members, or a member is absolute, climbs
            out with ``..``, is a link, or is not a regular file or folder (names the archive).
    """
    return [str(name) for name, _ in _members(archive, limits)]


def _members(archive: Path, limits: Limits):
    """(relative path, opener) of every regular file; folders are implied; the rest is refused."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                _check_count(archive, len(infos), limits)
                out = []
                for info in infos:
                    relative = _safe_name(archive, info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise InputError(archive, f"archive member '{info.filename}' is a symbolic link; refused")
                    if info.is_dir() or relative is None:
                        continue
                    out.append((relative, info))
                return out
        with tarfile.open(archive) as tf:
            out = []
            count = 0
            for info in tf:
                count += 1
                _check_count(archive, count, limits)
                relative = _safe_name(archive, info.name)
                if info.issym() or info.islnk():
                    raise InputError(archive, f"archive member '{info.name}' is a link; refused")
                if info.isdir() or relative is None:
                    continue
                if not info.isfile():
                    raise InputError(archive, f"archive member '{info.name}' is not a regular file; refused")
                out.append((relative, info))
            return out
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(archive, f"not a readable archive ({exc})") from None


def _check_count(archive: Path, count: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise InputError(archive, f"archive has more than {limits.max_members} members; refused")


def extract(archive: Path, destination: Path, limits: Limits = Limits()) -> Path:
    """Extract ``archive`` into ``destination`` (created; reused when already complete).

    Extraction goes to a hidden staging folder beside ``destination``, unique to the call (two
    processes extracting the same archive never remove each other's), renamed when complete. On any
    failure it is removed with the folders above it that this call created, so a refused archive
    leaves nothing behind; staging folders of killed extractions are removed first.

    Args:
        archive: a .zip, .tar, .tar.gz or .tgz file.
        destination: the folder to extract into; an existing folder is returned as it is.
        limits: caps on the member count and on the bytes actually written.

    Returns:
        ``destination``.

    Raises:
        InputError: the archive is unreadable or corrupt, a member is refused (see :func:`list_members`),
            or the caps are exceeded (names the archive).
        OSError: the files cannot be written (e.g. disk full).
    """
    if destination.is_dir():
        return destination
    members = _members(archive, limits)
    created = [p for p in (destination.parent, *destination.parent.parents) if not p.exists()]
    remove_abandoned_partials(destination)
    staging = partial_folder(destination)
    try:
        _extract_members(archive, members, staging, limits)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zipfile.LargeZipFile) as exc:
        _remove(staging, created)
        raise InputError(archive, f"archive is corrupt ({exc})") from None
    except BaseException:
        _remove(staging, created)
        raise
    try:
        os.replace(staging, destination)
    except OSError:
        # another process finished the same extraction first
        shutil.rmtree(staging, ignore_errors=True)
        if not destination.is_dir():
            raise
    return destination


def _extract_members(archive: Path, members: list, staging: Path, limits: Limits) -> None:
    """Write the checked ``members`` into ``staging``, stopping at the byte cap."""
    written = 0
    root = staging.resolve()
    is_zip = archive.name.lower().endswith(".zip")
    opener = zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)
    with opener as handle:
        for relative, info in members:
            target = (staging / relative).resolve()
            if root not in target.parents:
                raise InputError(archive, f"archive member '{relative}' points outside the extraction folder; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            stream = handle.open(info) if is_zip else handle.extractfile(info)
            if stream is None:
                raise InputError(archive, f"archive member '{relative}' cannot be read")
            with stream, open(target, "wb") as out:
                while chunk := stream.read(CHUNK):
                    written += len(chunk)
                    if written > limits.max_bytes:
                        raise InputError(archive, f"archive expands beyond {limits.max_bytes} bytes; extraction stopped")
                    out.write(chunk)


def _remove(staging: Path, created: list[Path]) -> None:
    """Remove a failed extraction's staging folder and the (now empty) folders made for it."""
    shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break  # another extraction put something there, or it is gone already
