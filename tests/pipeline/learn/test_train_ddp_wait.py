"""Under torchrun the other ranks wait for rank 0's validation on a group with its own timeout.

Two real gloo processes whose collectives time out after 2 s: rank 0 "validates" for 5 s. Waiting on
the training group dies with its timeout (what a long validation did to an NCCL job); waiting on
:func:`~pipeline.learn.train.rank_0_wait_group` does not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]
SCRIPT = """
import sys, time
from datetime import timedelta
import torch.distributed as dist
from pipeline.learn.train import _from_rank_0, _wait_for_rank_0, rank_0_wait_group
dist.init_process_group("gloo", timeout=timedelta(seconds=2))
waits = rank_0_wait_group() if sys.argv[1] == "wait-group" else None
if dist.get_rank() == 0:
    time.sleep(5)  # a validation longer than the collectives' timeout
if waits is None:
    dist.barrier()  # the training group itself
else:
    _wait_for_rank_0(waits)
print("stopped" if _from_rank_0(dist.get_rank() == 0, waits) else "went on", flush=True)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(mode: str) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    ranks = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
        ranks.append(subprocess.Popen([sys.executable, "-c", SCRIPT, mode], env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), p.stdout.read()) for p in ranks]


def test_waiting_on_the_training_group_dies_with_its_timeout():
    """The failure the wait group prevents: rank 1 gives up after 2 s."""
    _, rank_1 = _two_ranks("training-group")
    assert rank_1.returncode != 0
    assert "stopped" not in rank_1.stdout


def test_waiting_on_the_wait_group_outlasts_the_collective_timeout():
    rank_0, rank_1 = _two_ranks("wait-group")
    assert (rank_0.returncode, rank_1.returncode) == (0, 0), rank_0.stdout + rank_1.stdout
    assert rank_1.stdout.strip().endswith("stopped")  # rank 0's value reached rank 1
