"""Publishing a run's outputs in one switch: every output of a folder changes together.

A run's outputs are staged in a hidden folder of ``OUT/releases``, renamed to ``OUT/releases/{n}``
when complete, and published by replacing one symbolic link, ``OUT/current → releases/{n}``. The paths
users read are links through it: ``OUT/{name} → current/{name}`` for every name in the release
(prepare: ``tiles``, ``catalog.gpkg``, ``config.yaml``, reports; detection: a group's COGs, polygons,
report and quick look). A reader, or a run killed at any step, sees every output of the old run or
every output of the new one, never tiles of one with the index or config of the other; a run that
fails before publishing changes nothing. Older releases, and links to names the new release does not
have, are removed once the new one is current.

An ``OUT`` written before releases (real files and folders at those names) is taken over on its next
run: they are replaced by the links after the switch, one by one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import OutputError
from pipeline.io.atomic import partial_folder, remove_abandoned_partials

RELEASES = "releases"
CURRENT = "current"


@contextmanager
def release(out_dir: Path, required: tuple[str, ...] = ()) -> Iterator[Path]:
    """A new empty release folder to write a run's outputs in, published when the block succeeds.

    Args:
        out_dir: the output folder ``OUT`` (created if missing).
        required: names the release must hold to be published.

    Yields:
        The staging folder: write the run's outputs into it.

    Raises:
        FileNotFoundError: the block left a name of ``required`` unwritten (nothing is published).
        OutputError: a write in the block failed for its disk or folder; it names the output as users
            know it (``OUT/{name}``), not its staged copy.
    """
    staging_name = Path(out_dir) / RELEASES / "next"
    remove_abandoned_partials(staging_name)  # left by killed runs
    staging = partial_folder(staging_name)
    try:
        yield staging
        publish(staging, Path(out_dir), required)
    except OutputError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not exc.path.is_relative_to(staging):
            raise
        raise OutputError(Path(out_dir) / exc.path.relative_to(staging), exc.problem) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staged: Path, out_dir: Path, required: tuple[str, ...] = ()) -> Path:
    """Make a staged release the outputs of ``out_dir``, switching them all with one rename.

    Args:
        staged: a complete release folder inside ``out_dir/releases`` (see :func:`release`).
        out_dir: the output folder ``OUT``.
        required: names ``staged`` must hold.

    Returns:
        The published release folder ``OUT/releases/{n}``.

    Raises:
        FileNotFoundError: ``staged`` lacks a name of ``required``; naming the folder and the names.
    """
    missing = [name for name in required if not (staged / name).exists()]
    if missing:
        raise FileNotFoundError(f"{staged}: release lacks {', '.join(missing)}; not published")
    releases = out_dir / RELEASES
    number = 1 + max((int(p.name) for p in releases.iterdir() if p.name.isdigit()), default=0)
    final = releases / str(number)
    os.rename(staged, final)
    _point(out_dir / CURRENT, Path(RELEASES) / final.name)  # the switch
    names = sorted(p.name for p in final.iterdir())
    for name in names:
        _link(out_dir / name, Path(CURRENT) / name)
    _unlink_stale(out_dir, names)
    for old in releases.iterdir():
        if old.name.isdigit() and old != final:
            shutil.rmtree(old)
    return final


def _unlink_stale(out_dir: Path, names: list[str]) -> None:
    """Remove links through ``current`` to names the published release does not have (they would dangle)."""
    for path in out_dir.iterdir():
        if path.name not in names and path.is_symlink() and Path(os.readlink(path)).parts[:1] == (CURRENT,):
            os.unlink(path)


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
