"""One scene's blocks shared by torchrun's ranks, with no collective communication.

Under ``torchrun --nproc-per-node N changeflow detect ...`` every rank sets the group up the same way
(:func:`~pipeline.detect.setup.set_up`), so all agree on the block plan and the run's fingerprint. Block
``n`` of the plan (row-major) belongs to rank ``n % N``. Rank 0 owns the group's staging folder: it opens
the journal, computes its share, waits until every block's sums are staged, then completes the blocks
and writes the COGs (:func:`~pipeline.detect.blocks.assemble`). The other ranks wait for rank 0's journal
(:func:`follow_group`), stage their share and go on to the next group. Coordination is through the
staging folder alone, which every rank must see (one host, or a shared file system); torchrun's agent
stops all ranks when one fails, so no rank waits forever for a dead one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.detect.blocks import BlockJob, compute_sums, pending
from pipeline.detect.output import OutputPaths, existing_run
from pipeline.detect.setup import DetectSettings, Run, set_up, torch_threads
from pipeline.detect.staging import Staging
from pipeline.detect.windows import Block, block_id

POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Shard:
    """This process's rank among torchrun's processes."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        """The rank and world size torchrun sets (``RANK``, ``WORLD_SIZE``); one process without them.

        Returns:
            The shard.
        """
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    def share(self, order: list[Block], blocks: list[Block]) -> list[Block]:
        """This rank's blocks among ``blocks``.

        Args:
            order: every block of the scene, in plan order (the index decides the rank).
            blocks: the blocks still to compute.

        Returns:
            Those of ``blocks`` whose plan index modulo the world size is this rank, in order.
        """
        mine = {block for n, block in enumerate(order) if n % self.world_size == self.rank}
        return [block for block in blocks if block in mine]


def stage_shard(run: Run, job: BlockJob, shard: Shard, staging: Staging) -> None:
    """Rank 0: compute this rank's share of the unfinished blocks, then wait for the other ranks' sums.

    Args:
        run: the run, set up here.
        job: the group's block job (settings).
        shard: this process's rank (0) and the world size.
        staging: the group's staging, opened by this process.
    """
    order = run.layout.blocks()
    finished = set(staging.state["done"])
    todo = [block for block in order if block_id(*block) not in finished]
    compute_sums(run, job.settings, shard.share(order, pending(staging, todo)), staging)
    while pending(staging, todo):
        time.sleep(POLL_SECONDS)


def _journal_of(staging: Staging, fingerprint: str) -> dict | None:
    journal = staging.recorded()
    return journal if journal is not None and journal.get("fingerprint") == fingerprint else None


def follow_group(group_dir: Path, checkpoint: Path, settings: DetectSettings, staging_dir: Path,
                 published: Path, shard: Shard) -> int:
    """A rank above 0: wait for rank 0 to open the group's staging, then stage this rank's share of blocks.

    A group whose published outputs are already those of this run is skipped (rank 0 reuses them).

    Args:
        group_dir: the prepared group folder.
        checkpoint: the checkpoint.
        settings: the detection settings.
        staging_dir: the group's staging folder, as rank 0 uses it.
        published: the group's output folder, where finished outputs of the same run would be.
        shard: this process's rank and the world size.

    Returns:
        The number of blocks this rank computed.

    Raises:
        InputError: naming the file, for a checkpoint or input this rank cannot read (rank 0 reports the
            group's errors; the caller goes on to the next group).
    """
    with torch_threads(settings.threads):
        run = set_up(group_dir, checkpoint, settings, None)
        staging = Staging(staging_dir)
        paths = OutputPaths.in_folder(published, run.classes_k)
        journal = _journal_of(staging, run.fingerprint)
        while journal is None:
            if not staging.root.exists() and existing_run(paths, run.tags) is not None:
                return 0
            time.sleep(POLL_SECONDS)
            journal = _journal_of(staging, run.fingerprint)
        order = run.layout.blocks()
        todo = [block for block in order if block_id(*block) not in set(journal["done"])]
        share = shard.share(order, pending(staging, todo))
        compute_sums(run, settings, share, staging)
        return len(share)
