"""The inbox of scheduled ingestion: claim new scenes exactly once, archive them when done.

A scene is claimed by renaming it into a run's own folder: a rename is atomic, so when two runs
overlap, each file goes to exactly one of them. A registry of content fingerprints (name, size
and a hash of the first and last megabyte) keeps a scene dropped again later from being processed a
second time. Processed scenes move to the archive, where later scenes can still be grouped with
them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.catalog import INBOX_PATTERN

CHUNK = 1 << 20


@dataclass(frozen=True)
class Workspace:
    """Folders of one ingestion workspace."""

    root: Path

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def claims(self) -> Path:
        return self.root / "claims"

    @property
    def registry(self) -> Path:
        return self.root / "ingested.json"

    def claim_dir(self, run_id: str) -> Path:
        return self.claims / run_id


def fingerprint(path: Path) -> str:
    """Cheap content identity of a scene file: name, size, first and last megabyte."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(CHUNK))
        if size > CHUNK:
            handle.seek(max(CHUNK, size - CHUNK))
            digest.update(handle.read(CHUNK))
    return digest.hexdigest()


def read_registry(workspace: Workspace) -> dict[str, dict]:
    if not workspace.registry.exists():
        return {}
    return json.loads(workspace.registry.read_text())


def register(workspace: Workspace, entries: dict[str, dict]) -> None:
    """Add fingerprints to the registry (read-modify-rename; claims already exclude concurrency)."""
    registry = {**read_registry(workspace), **entries}
    partial = workspace.registry.with_name(f".{workspace.registry.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(registry, indent=1, sort_keys=True))
    os.replace(partial, workspace.registry)


def claim_new_scenes(inbox: Path, workspace: Workspace, run_id: str, *, settle_seconds: float = 0.0) -> list[Path]:
    """Move the inbox's new scene files into this run's claim folder; returns the claimed paths.

    Files still being written (modified less than ``settle_seconds`` ago) wait for the next run;
    files already ingested (same fingerprint) are moved straight to the archive's ``duplicates``.
    """
    target = workspace.claim_dir(run_id)
    target.mkdir(parents=True, exist_ok=True)
    known = read_registry(workspace)
    now = time.time()
    claimed = []
    for path in sorted(inbox.iterdir()):
        if not path.is_file() or INBOX_PATTERN.match(path.name) is None:
            continue
        if now - path.stat().st_mtime < settle_seconds:
            continue
        destination = target / path.name
        try:
            os.rename(path, destination)  # atomic: a concurrent run gets FileNotFoundError
        except FileNotFoundError:
            continue
        if fingerprint(destination) in known:
            duplicates = workspace.archive / "duplicates"
            duplicates.mkdir(parents=True, exist_ok=True)
            os.replace(destination, duplicates / destination.name)
            continue
        claimed.append(destination)
    return claimed


def archive(paths: list[Path], workspace: Workspace, run_id: str) -> list[Path]:
    """Register the processed scenes and move them into the archive."""
    workspace.archive.mkdir(parents=True, exist_ok=True)
    register(workspace, {fingerprint(p): {"name": p.name, "run_id": run_id} for p in paths})
    moved = []
    for path in paths:
        destination = workspace.archive / path.name
        os.replace(path, destination)
        moved.append(destination)
    return moved
