"""Publishing prepare's outputs in one switch: tiles, index, effective config and reports change together.

A run's outputs are staged in a hidden folder of ``OUT/releases``, renamed to ``OUT/releases/{n}``
when complete, and published by replacing one symbolic link, ``OUT/current → releases/{n}``. The paths
users and training read are links through it, made once: ``OUT/tiles → current/tiles``,
``OUT/catalog.gpkg → current/catalog.gpkg``, and likewise ``config.yaml``, ``prepare_report.json`` and
``coregistration.json``. A reader, or a run killed at any step, sees every output of the old run or
every output of the new one, never tiles of one with the index or config of the other; a run that
fails before publishing changes nothing. Older releases are removed once the new one is current.

An ``OUT`` written before releases (a real ``tiles/`` folder and real files) is taken over on its next
run: those are replaced by the links after the switch, one by one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.io.atomic import partial_folder, remove_abandoned_partials

PUBLISHED = ("tiles", "catalog.gpkg", "config.yaml", "prepare_report.json", "coregistration.json")
RELEASES = "releases"
CURRENT = "current"


@contextmanager
def release(out_dir: Path) -> Iterator[Path]:
    """A new empty release folder to write a run's outputs in, published when the block succeeds.

    Args:
        out_dir: the prepare output folder ``OUT`` (created if missing).

    Yields:
        The staging folder: write every name of ``PUBLISHED`` into it (``tiles/{split}/{role}/{id}.tif``).

    Raises:
        FileNotFoundError: the block left a name of ``PUBLISHED`` unwritten (nothing is published).
    """
    staging_name = Path(out_dir) / RELEASES / "next"
    remove_abandoned_partials(staging_name)  # left by killed runs
    staging = partial_folder(staging_name)
    try:
        yield staging
        publish(staging, Path(out_dir))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staged: Path, out_dir: Path) -> Path:
    """Make a staged release the outputs of ``out_dir``, switching them all with one rename.

    Args:
        staged: a complete release folder inside ``out_dir/releases`` (see :func:`release`).
        out_dir: the prepare output folder ``OUT``.

    Returns:
        The published release folder ``OUT/releases/{n}``.

    Raises:
        FileNotFoundError: ``staged`` lacks a name of ``PUBLISHED``; naming the folder and the names.
    """
    missing = [name for name in PUBLISHED if not (staged / name).exists()]
    if missing:
        raise FileNotFoundError(f"{staged}: release lacks {', '.join(missing)}; not published")
    releases = out_dir / RELEASES
    number = 1 + max((int(p.name) for p in releases.iterdir() if p.name.isdigit()), default=0)
    final = releases / str(number)
    os.rename(staged, final)
    _point(out_dir / CURRENT, Path(RELEASES) / final.name)  # the switch
    for name in PUBLISHED:
        _link(out_dir / name, Path(CURRENT) / name)
    for old in releases.iterdir():
        if old.name.isdigit() and old != final:
            shutil.rmtree(old)
    return final


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symbolic link to ``target`` in one rename (a link made beside it replaces it)."""
    partial = link.with_name(f".{link.name}.{os.getpid()}.partial")
    if partial.is_symlink():
        os.unlink(partial)  # left by a killed run of a process with the same id
    os.symlink(target, partial)
    os.replace(partial, link)


def _link(path: Path, target: Path) -> None:
    """Make ``path`` a link to ``target``, replacing a real file or folder of an older ``OUT``."""
    if path.is_symlink() and os.readlink(path) == str(target):
        return
    aside = path.with_name(f".{path.name}.replaced.partial")
    if aside.exists():
        shutil.rmtree(aside)  # a folder set aside by a run killed while taking the old OUT over
    if path.is_dir() and not path.is_symlink():
        # A rename cannot replace a folder: set it aside, link, then remove it.
        os.rename(path, aside)
        _point(path, target)
        shutil.rmtree(aside)
    else:
        _point(path, target)
