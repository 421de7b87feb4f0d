"""The inbox of scheduled ingestion: claim new scenes exactly once, archive them when done.

What is claimed from the inbox (its top level; names starting with '.' are never touched):

- GOLD-named scene files ``{base}_{A|B|D|E}.{tif|tiff|png}``;
- provider products as delivered: a product *folder* that :func:`pipeline.products.recognise`
  names (GF-2 PMS folder, GF-3 folder, Sentinel-2 ``….SAFE`` folder), and any *archive*
  (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``; one that is no product is claimed too, so that the
  catalog reports it by name instead of it lying in the inbox unnoticed). A product's loose key
  file (e.g. a GF-2 ``…-MSS1.tiff`` beside its sidecars) is not claimed: deliver folders or archives.

A scene is claimed by renaming it into a run's own folder: a rename is atomic (a folder moves as a
whole), so when two runs overlap, each file or product goes to exactly one of them.

When is something complete enough to claim?

- A GOLD file: when it was last modified at least ``settle_seconds`` ago.
- A product folder or archive: when its fingerprint (names, sizes and mtimes of every file in it,
  :func:`pipeline.products.common.source_fingerprint`) is the same at two polls at least
  ``settle_seconds`` apart. Each poll records what it saw in ``pending.json`` of the workspace;
  any change (a file added, grown, touched; a copy tool's temporary file) restarts the wait. This
  does not trust mtimes to be recent (copies that keep the source's mtimes, clocks of a network
  share that differ from ours) and it costs one stat per file and poll, nothing is read. A
  product is therefore claimed one poll after it has stopped changing (``settle_seconds`` should
  be at most the schedule's interval); ``settle_seconds: 0`` claims on sight, as for files.

A registry of content fingerprints keeps a scene dropped again later from being processed a second
time: for a file its name, size and a hash of its first and last megabyte; for a product folder the
same for each of its files (relative name, size, first and last megabyte) — mtimes do not count, so
a product copied in again is still recognised. Processed scenes move to the archive, where later
scenes can still be grouped with them; a re-dropped one goes to ``archive/duplicates``; a scene the
catalog refuses goes to ``rejected/`` with the reason beside it (:func:`reject`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pipeline.errors import InputError
from pipeline.io.atomic import write_atomic
from pipeline.io.paths import contained
from pipeline.prepare.catalog import INBOX_PATTERN
from pipeline.products import archive as product_archive
from pipeline.products import recognise
from pipeline.products.common import find_files, source_fingerprint

CHUNK = 1 << 20


@dataclass(frozen=True)
class Workspace:
    """Folders of one ingestion workspace."""

    root: Path

    @property
    def archive(self) -> Path:
        """Processed scenes and products, kept so later scenes can still be grouped with them."""
        return self.root / "archive"

    @property
    def duplicates(self) -> Path:
        """Scenes dropped again after they were ingested (same content fingerprint)."""
        return self.archive / "duplicates"

    @property
    def rejected(self) -> Path:
        """Scenes and products the catalog refused, each with ``{name}.reason.txt`` beside it."""
        return self.root / "rejected"

    @property
    def claims(self) -> Path:
        """One folder per run, holding the scenes that run claimed."""
        return self.root / "claims"

    @property
    def registry(self) -> Path:
        """``ingested.json``: content fingerprint → name and run id of every archived scene."""
        return self.root / "ingested.json"

    @property
    def pending(self) -> Path:
        """Products seen in the inbox but not claimed yet: name → fingerprint and when first seen."""
        return self.root / "pending.json"

    def claim_dir(self, run_id: str) -> Path:
        """The claim folder of one run.

        Args:
            run_id: the run's id.

        Returns:
            ``claims/{run_id}`` of the workspace (not created here).

        Raises:
            UnsafePathError: ``run_id`` is not one plain name inside ``claims/``.
        """
        return contained(self.claims, run_id)


def _hash_file(digest, path: Path, name: str) -> None:
    size = path.stat().st_size
    digest.update(f"{name}:{size}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(CHUNK))
        if size > CHUNK:
            handle.seek(max(CHUNK, size - CHUNK))
            digest.update(handle.read(CHUNK))


def fingerprint(path: Path) -> str:
    """Content identity of a scene file or product (archive or folder), independent of mtimes.

    Mtimes do not count, so a scene or product copied in again is still recognised; only the first
    and last megabyte of each file are read.

    Args:
        path: a file (GOLD scene or archive) or a product folder.

    Returns:
        A SHA-256 hex digest of, for a file, its name, size, first and last megabyte; for a folder,
        its name and each file's relative name, size, first and last megabyte (files up to 8 levels
        down, hidden folders skipped).

    Raises:
        OSError: a file is missing or cannot be read.
    """
    digest = hashlib.sha256()
    if path.is_dir():
        digest.update(f"folder:{path.name}".encode())
        for file in find_files(path, lambda _: True, depth=8):
            _hash_file(digest, file, file.relative_to(path).as_posix())
    else:
        _hash_file(digest, path, path.name)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    """Write by rename, so a reader never sees half a file."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def read_registry(workspace: Workspace) -> dict[str, dict]:
    """The registry of ingested scenes.

    Args:
        workspace: the ingestion workspace.

    Returns:
        Content fingerprint → ``{"name": ..., "run_id": ...}``; empty when there is no registry yet.

    Raises:
        json.JSONDecodeError: the registry is not valid JSON (it is never skipped, unlike ``pending.json``).
    """
    if not workspace.registry.exists():
        return {}
    return json.loads(workspace.registry.read_text())


def _registry_lock(workspace: Workspace) -> FileLock:
    """The lock around the registry's read-modify-rename: overlapping passes would lose each other's entries."""
    return FileLock(workspace.registry.with_name(f".{workspace.registry.name}.lock"))


def register(workspace: Workspace, entries: dict[str, dict]) -> None:
    """Add fingerprints to the registry, by read-modify-rename under a file lock.

    Args:
        workspace: the ingestion workspace.
        entries: content fingerprint → ``{"name": ..., "run_id": ...}``; an existing fingerprint is overwritten.

    Raises:
        json.JSONDecodeError: the existing registry is not valid JSON.
    """
    workspace.root.mkdir(parents=True, exist_ok=True)
    with _registry_lock(workspace):
        _write_json(workspace.registry, {**read_registry(workspace), **entries})


def unregister(workspace: Workspace, fingerprints: list[str]) -> None:
    """Forget scenes (e.g. given up), so that dropped again they are claimed anew rather than set aside.

    Args:
        workspace: the ingestion workspace.
        fingerprints: content fingerprints to remove; unknown ones are ignored.

    Raises:
        json.JSONDecodeError: the existing registry is not valid JSON.
    """
    with _registry_lock(workspace):
        registry = read_registry(workspace)
        _write_json(workspace.registry, {key: value for key, value in registry.items() if key not in set(fingerprints)})


def is_product_candidate(path: Path) -> bool:
    """Whether an inbox entry is claimed as a provider product: a recognised product folder, or an archive.

    Archives are not opened here (listing a large .tar.gz means decompressing it, and one still
    being copied cannot be listed): the catalog recognises or refuses them after the claim.

    Args:
        path: an entry of the inbox's top level.

    Returns:
        True for an archive file or a folder :func:`pipeline.products.recognise` names; False for
        hidden entries, other files and folders, and folders it refuses (InputError).
    """
    if path.name.startswith("."):
        return False
    if product_archive.is_archive(path):
        return True
    if not path.is_dir():
        return False
    try:
        return recognise(path) is not None
    except InputError:
        return False


def product_state(path: Path) -> str:
    """Hash of a product's names, sizes and mtimes (a stat of each file; nothing is read).

    Args:
        path: a product folder or archive.

    Returns:
        A SHA-256 hex digest of :func:`pipeline.products.common.source_fingerprint`; it changes when a
        file is added, removed, grown or touched.

    Raises:
        OSError: a file cannot be stat'ed (e.g. moved while being listed).
    """
    payload = json.dumps(source_fingerprint(path), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _settled_products(workspace: Workspace, candidates: list[Path], settle_seconds: float, now: float) -> set[str]:
    """Names of the candidate products unchanged for ``settle_seconds`` between two polls.

    Updates ``pending.json`` with what this poll saw (a concurrent run may overwrite it: that only
    delays a claim by one poll, it never lets a changing product through).
    """
    if settle_seconds <= 0:
        return {p.name for p in candidates}
    pending = _read_json(workspace.pending)
    seen: dict[str, dict] = {}
    settled = set()
    for path in candidates:
        try:
            state = product_state(path)
        except OSError:  # moved or changed while being listed: look again next poll
            continue
        before = pending.get(path.name)
        if before is not None and before.get("state") == state:
            seen[path.name] = before
            if now - before["since"] >= settle_seconds:
                settled.add(path.name)
        else:
            seen[path.name] = {"state": state, "since": now}
    _write_json(workspace.pending, seen)
    return settled


def claim_new_scenes(inbox: Path, workspace: Workspace, run_id: str, *, settle_seconds: float = 0.0) -> list[Path]:
    """Move the inbox's new scene files and products into this run's claim folder.

    Files still being written (modified less than ``settle_seconds`` ago) and products not yet
    unchanged for ``settle_seconds`` between two polls wait for a later run (see the module
    docstring); scenes already ingested (same content fingerprint) are moved straight to the
    archive's ``duplicates``. Each claim is an atomic rename, so overlapping runs never claim the
    same entry; entries another run took meanwhile are skipped. Updates ``pending.json``.

    Args:
        inbox: the inbox folder; only its top level is scanned, hidden entries are ignored.
        workspace: the ingestion workspace.
        run_id: this run's id; names the claim folder ``claims/{run_id}`` (created).
        settle_seconds: how long, in seconds, a file must be unmodified or a product unchanged
            between polls before it is claimed; 0 claims on sight.

    Returns:
        The claimed paths in the claim folder, sorted (duplicates not included).

    Raises:
        FileNotFoundError: the inbox does not exist.
        json.JSONDecodeError: the registry is not valid JSON.
        UnsafePathError: ``run_id`` or a claimed name would lead out of the claim folder.
    """
    target = workspace.claim_dir(run_id)
    target.mkdir(parents=True, exist_ok=True)
    known = read_registry(workspace)
    now = time.time()
    entries = [p for p in sorted(inbox.iterdir()) if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file() and INBOX_PATTERN.match(p.name) is not None]
    products = [p for p in entries if INBOX_PATTERN.match(p.name) is None and is_product_candidate(p)]
    settled = _settled_products(workspace, products, settle_seconds, now)
    ready = []
    for path in files:
        try:
            if now - path.stat().st_mtime >= settle_seconds:
                ready.append(path)
        except FileNotFoundError:  # claimed by a concurrent run
            continue
    ready += [p for p in products if p.name in settled]
    claimed = []
    for path in sorted(ready):
        destination = contained(target, path.name)
        try:
            os.rename(path, destination)  # atomic: a concurrent run gets FileNotFoundError
        except FileNotFoundError:
            continue
        if fingerprint(destination) in known:
            move_into(destination, workspace.duplicates, run_id)
            continue
        claimed.append(destination)
    return sorted(claimed)


def move_into(path: Path, folder: Path, run_id: str) -> Path:
    """Move ``path`` into ``folder`` under its own name.

    A file replaces a file of the same name (as before products); a folder (or anything meeting a
    folder) first moves the old one to ``folder/.superseded/{run_id}/``, hidden from inbox scans
    (superseded twice in one run, only the latest is kept).

    Args:
        path: the file or folder to move.
        folder: the destination folder; created if missing.
        run_id: the current run's id, naming the ``.superseded`` subfolder.

    Returns:
        The new path, ``folder / path.name``.

    Raises:
        OSError: the move fails (e.g. ``folder`` is on another file system, or ``path`` is gone).
        UnsafePathError: the destination or the superseded copy would lie outside ``folder`` (the
            old one is removed or replaced there, so it must be inside).
    """
    folder.mkdir(parents=True, exist_ok=True)
    destination = contained(folder, path.name)
    if destination.exists() and (destination.is_dir() or path.is_dir()):
        aside = contained(folder, ".superseded", run_id, path.name)
        if aside.exists():  # superseded twice in one run: keep the latest only
            _remove(aside)
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(destination, aside)
    os.replace(path, destination)
    return destination


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def reject(path: Path, workspace: Workspace, run_id: str, reason: str) -> Path:
    """Move a scene or product the catalog refused into ``rejected/``, with ``{name}.reason.txt`` beside it.

    Args:
        path: the refused scene file or product.
        workspace: the ingestion workspace.
        run_id: the current run's id (see :func:`move_into`).
        reason: why the catalog refused it; written to the reason file (an existing one is replaced).

    Returns:
        The new path in ``rejected/``.

    Raises:
        OSError: the move or the write fails.
    """
    moved = move_into(path, workspace.rejected, run_id)
    contained(workspace.rejected, f"{path.name}.reason.txt").write_text(reason + "\n")
    return moved


def archive(paths: list[Path], workspace: Workspace, run_id: str) -> list[Path]:
    """Register the processed scenes and products and move them into the archive.

    All fingerprints are registered before the first move.

    Args:
        paths: the processed scene files and products (in the claim folder).
        workspace: the ingestion workspace.
        run_id: the current run's id, recorded in the registry (see :func:`move_into`).

    Returns:
        The new paths in the archive, in the order of ``paths``.

    Raises:
        OSError: a path is missing or cannot be moved.
        json.JSONDecodeError: the registry is not valid JSON.
    """
    workspace.archive.mkdir(parents=True, exist_ok=True)
    register(workspace, {fingerprint(p): {"name": p.name, "run_id": run_id} for p in paths})
    return [move_into(path, workspace.archive, run_id) for path in paths]
