"""What a detection keeps between blocks and across a restart: staged blocks, carries and the journal.

``out_dir/.detect-partial/`` holds, per finished block, its outputs (``blocks/r{i}_c{j}.npz``) and
its carries (``carries/*.npy``), each written atomically, then the block id is appended to
``journal.json`` (also replaced atomically). A killed run restarts at the first block not in the
journal, taking the carries of finished blocks from disk: the accumulation is the same sum in the
same order, so the rasters are byte-identical to an uninterrupted run and finished blocks are never
recomputed. The journal carries a fingerprint of the checkpoint, the inputs and the output-affecting
settings; a mismatch discards the partial work. Staged blocks take 2 bytes per pixel on disk (5 with
float32 probabilities) until the COGs are written.

Blocks computed as separate tasks (:mod:`~pipeline.detect.blocks`) stage their own sums
(``sums/r{i}_c{j}.npy``, float32, 4 bytes per pixel and channel: 8 for binary change) after their
carries; one writer completes them in order into ``blocks/`` and the journal, deleting each sum once used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.detect.inputs import GroupInputs
from pipeline.detect.windows import block_id
from pipeline.io.atomic import atomic_path, write_atomic

PARTIAL_DIR = ".detect-partial"
JOURNAL = "journal.json"


def new_run_id() -> str:
    """A new run id.

    Returns:
        The UTC time and 8 random hex digits, e.g. ``20240501T120000Z-1a2b3c4d``.
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def fingerprint(checkpoint_sha: str, inputs: GroupInputs, settings: dict[str, Any]) -> str:
    """What must match for partial work to be resumed: checkpoint, input files and settings.

    Args:
        checkpoint_sha: SHA-256 of the checkpoint file.
        inputs: the grid rasters (their path, size and modification time count).
        settings: the output-affecting settings.

    Returns:
        A SHA-256 hex digest.
    """
    files = {role: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for role, p in inputs.paths.items()}
    text = json.dumps({"checkpoint": checkpoint_sha, "inputs": files, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Staging:
    """``.detect-partial/``: finished blocks, their carries and the journal.

    Args:
        root: the ``.detect-partial`` folder (created or cleared by :meth:`open`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blocks = root / "blocks"
        self.carries = root / "carries"
        self.sums = root / "sums"

    def open(self, fingerprint: str, run_id: str | None, order: list[str]) -> tuple[list[str], str]:
        """Take up the journal, or start a new one.

        A journal of other inputs or settings, or an unreadable one, restarts from scratch; a run id
        given by the caller replaces the journal's, otherwise the interrupted run's id is kept.

        Args:
            fingerprint: the run's :func:`fingerprint`.
            run_id: the caller's run id, or None.
            order: every block id, in processing order.

        Returns:
            The finished block ids (a prefix of ``order``) and the run id.
        """
        journal = self._journal()
        if journal is not None and journal.get("fingerprint") == fingerprint and journal.get("blocks") == order:
            done: list[str] = []
            for expected, recorded in zip(order, journal.get("done", [])):
                if expected != recorded or not (self.blocks / f"{recorded}.npz").exists():
                    break
                done.append(recorded)
            self.state = {**journal, "done": done, "run_id": run_id or journal["run_id"]}
            self.sums.mkdir(exist_ok=True)
            self._write_journal()
            return list(done), self.state["run_id"]
        shutil.rmtree(self.root, ignore_errors=True)
        self.blocks.mkdir(parents=True)
        self.carries.mkdir()
        self.sums.mkdir()
        run_id = run_id or new_run_id()
        self.state = {"fingerprint": fingerprint, "run_id": run_id, "blocks": order, "done": []}
        self._write_journal()
        return [], run_id

    @property
    def done(self) -> int:
        """How many blocks are finished."""
        return len(self.state["done"])

    def recorded(self) -> dict | None:
        """The journal as last written, for processes that stage sums but do not own it.

        Returns:
            The journal's content, or None when there is none (yet) or it cannot be read.
        """
        return self._journal()

    def _journal(self) -> dict | None:
        try:
            return json.loads((self.root / JOURNAL).read_text())
        except (OSError, ValueError):
            return None

    def _write_journal(self) -> None:
        write_atomic(self.root / JOURNAL, json.dumps(self.state, indent=1))

    def carry_path(self, kind: str, block_id: str) -> Path:
        """Where a carry is staged.

        Args:
            kind: ``"right"`` or ``"bottom"``.
            block_id: the block that hands it on (:func:`~pipeline.detect.windows.block_id`).

        Returns:
            ``carries/{block_id}.{kind}.npy``.
        """
        return self.carries / f"{block_id}.{kind}.npy"

    def save_carry(self, kind: str, block_id: str, array: np.ndarray) -> None:
        """Stage a carry atomically.

        Args:
            kind: ``"right"`` or ``"bottom"``.
            block_id: the block that hands it on.
            array: the carry.
        """
        with atomic_path(self.carry_path(kind, block_id)) as partial, open(partial, "wb") as handle:
            np.save(handle, array)

    def load_carry(self, kind: str, block_id: str) -> np.ndarray | None:
        """Read a staged carry.

        Args:
            kind: ``"right"`` or ``"bottom"``.
            block_id: the block that handed it on.

        Returns:
            The carry, or None when none is staged.
        """
        path = self.carry_path(kind, block_id)
        return np.load(path) if path.exists() else None

    def drop_carry(self, kind: str, block_id: str) -> None:
        """Delete a staged carry, if any.

        Args:
            kind: ``"right"`` or ``"bottom"``.
            block_id: the block that handed it on.
        """
        self.carry_path(kind, block_id).unlink(missing_ok=True)

    def finish_block(self, block_id: str, rasters: dict[str, np.ndarray]) -> None:
        """Stage a finished block's rasters, then record it in the journal.

        Args:
            block_id: the finished block.
            rasters: its output rasters by name, each written into ``blocks/{block_id}.npz``.
        """
        with atomic_path(self.blocks / f"{block_id}.npz") as partial, open(partial, "wb") as handle:
            np.savez(handle, **rasters)
        self.state["done"].append(block_id)
        self._write_journal()

    def sums_path(self, block_id: str) -> Path:
        """Where a block computed as a separate task stages its own sums.

        Args:
            block_id: the block.

        Returns:
            ``sums/{block_id}.npy``.
        """
        return self.sums / f"{block_id}.npy"

    def save_sums(self, block_id: str, array: np.ndarray) -> None:
        """Stage a block's own sums atomically (after its carries: their presence says the block is done).

        Args:
            block_id: the block.
            array: its weighted sums and weight sum over its own pixels (C, h, w).
        """
        with atomic_path(self.sums_path(block_id)) as partial, open(partial, "wb") as handle:
            np.save(handle, array)

    def load_sums(self, block_id: str) -> np.ndarray:
        """Read a block's staged own sums.

        Args:
            block_id: the block.

        Returns:
            The sums (C, h, w).
        """
        return np.load(self.sums_path(block_id))

    def block(self, block_id: str, name: str) -> np.ndarray:
        """One raster of a staged block.

        Args:
            block_id: a finished block.
            name: the raster's name, as given to :meth:`finish_block`.

        Returns:
            The raster.
        """
        with np.load(self.blocks / f"{block_id}.npz") as data:
            return data[name]


class Carries:
    """The margins blocks hand on, kept in memory while needed and staged on disk for a resume.

    Block (i, j) hands on a ``right`` carry (the strip over block (i, j + 1)) and a ``bottom`` carry
    (the strip over the blocks below, corner included). Blocks outside the scene have none.

    Args:
        staging: where carries are staged.
    """

    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self._memory: dict[tuple[str, str], np.ndarray | None] = {}

    def get(self, kind: str, i: int, j: int) -> np.ndarray | None:
        """The ``kind`` carry of block (i, j), from memory or, after a restart, from disk.

        Args:
            kind: ``"right"`` or ``"bottom"``.
            i: the block's row index.
            j: the block's column index.

        Returns:
            The carry, or None for a block outside the scene (negative index) or one that handed none on.
        """
        if i < 0 or j < 0:
            return None
        key = (kind, block_id(i, j))
        if key not in self._memory:
            self._memory[key] = self.staging.load_carry(kind, key[1])
        return self._memory[key]

    def put(self, kind: str, i: int, j: int, array: np.ndarray) -> None:
        """Keep and stage the ``kind`` carry of block (i, j).

        Args:
            kind: ``"right"`` or ``"bottom"``.
            i: the block's row index.
            j: the block's column index.
            array: the carry.
        """
        self._memory[(kind, block_id(i, j))] = array
        self.staging.save_carry(kind, block_id(i, j), array)

    def forget(self, kind: str, i: int, j: int) -> None:
        """Drop a carry no later block needs, from memory and disk.

        Args:
            kind: ``"right"`` or ``"bottom"``.
            i: the block's row index (nothing happens when negative).
            j: the block's column index (nothing happens when negative).
        """
        if i >= 0 and j >= 0:
            self._memory.pop((kind, block_id(i, j)), None)
            self.staging.drop_carry(kind, block_id(i, j))
