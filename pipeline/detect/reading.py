"""Reading the input windows: normalised batches, read ahead of the model in background threads.

On a GPU, inputs are read window by window in background threads (one rasterio dataset per thread)
a few batches ahead of the model, so reading and normalising overlap compute. On a CPU whose cores
torch already uses, they are read in the main thread between batches: reading costs 25–35 ms per
512² window (4-band A + SAR B) against 0.7–1.5 s of forward, and reader threads there only take
cores from torch (measured at 2000² on 2 busy cores: end-to-end / bare forward 0.96 FC-Siam-diff
and 0.86 GOLD-lite in the main thread, 1.04 and 0.91 with two reader threads, which also cost
300 MB more memory).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from pipeline.detect.inputs import GroupInputs
from pipeline.detect.windows import Block, Offset
from pipeline.io.raster import read_window
from pipeline.learn.normalization import BandStats, normalize

READ_THREADS = 2

Batch = tuple[list[torch.Tensor], torch.Tensor]  # tensors per role (N, C, h, w), joint valid mask (N, h, w)


class WindowReader:
    """Reads and normalises batches of windows; each thread opens its own datasets.

    Args:
        inputs: the group's grid rasters and black values.
        stats: the checkpoint's normalisation statistics per role.
        shape: (rows, cols) of every window.
        pin: pin batches in page-locked memory (for a GPU).
    """

    def __init__(self, inputs: GroupInputs, stats: dict[str, BandStats], shape: tuple[int, int], pin: bool) -> None:
        self.inputs = inputs
        self.stats = stats
        self.shape = shape
        self.pin = pin
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def _datasets(self) -> dict[str, Any]:
        datasets = getattr(self._local, "datasets", None)
        if datasets is None:
            datasets = {role: rasterio.open(path) for role, path in self.inputs.paths.items()}
            self._local.datasets = datasets
            with self._lock:
                self._opened.extend(datasets.values())
        return datasets

    def read(self, offsets: list[Offset]) -> Batch:
        """One batch of windows.

        Args:
            offsets: (row, col) of each window.

        Returns:
            Normalised float32 tensors per role (N, C, h, w), in input order, and the joint valid
            mask (N, h, w); pinned for a fast copy to a GPU when ``pin`` is set.
        """
        datasets = self._datasets()
        h, w = self.shape
        arrays = {role: np.empty((len(offsets), ds.count, h, w), np.float32) for role, ds in datasets.items()}
        valids = np.ones((len(offsets), h, w), bool)
        for k, (row, col) in enumerate(offsets):
            for role, dataset in datasets.items():
                data, valid = read_window(dataset, Window(col, row, w, h), black_value=self.inputs.black_values[role])
                arrays[role][k] = normalize(data, valid, self.stats[role])
                valids[k] &= valid
        tensors = [torch.from_numpy(arrays[role]) for role in datasets]
        mask = torch.from_numpy(valids)
        if self.pin:
            tensors, mask = [t.pin_memory() for t in tensors], mask.pin_memory()
        return tensors, mask

    def close(self) -> None:
        """Close the datasets every thread opened."""
        with self._lock:
            for dataset in self._opened:
                dataset.close()
            self._opened.clear()


def read_threads(device: torch.device) -> int:
    """Background reader threads: on a GPU always; on a CPU only for cores torch leaves idle.

    Args:
        device: where the model runs.

    Returns:
        The number of reader threads, 0 for reading in the main thread.
    """
    if device.type != "cpu":
        return READ_THREADS
    spare = len(os.sched_getaffinity(0)) - torch.get_num_threads() if hasattr(os, "sched_getaffinity") else 0
    return max(0, min(READ_THREADS, spare))


def prefetched(executor: ThreadPoolExecutor, read: Callable, jobs: Iterable, depth: int) -> Iterator:
    """Results of ``read(job)`` in order, with up to ``depth`` jobs running ahead.

    Args:
        executor: the threads that read.
        read: called with each job.
        jobs: the jobs, in order.
        depth: how many jobs may be submitted ahead of the one consumed.

    Returns:
        A generator of the results; closing it cancels the jobs not yet started.
    """
    pending: deque = deque()
    iterator = iter(jobs)
    try:
        for job in iterator:
            pending.append(executor.submit(read, job))
            if len(pending) >= depth:
                break
        while pending:
            future = pending.popleft()
            job = next(iterator, None)
            if job is not None:
                pending.append(executor.submit(read, job))
            yield future.result()
    finally:
        for future in pending:
            future.cancel()


def _read_job(reader: WindowReader, job: tuple[Block, list[Offset]]) -> tuple[list[Offset], Batch]:
    return job[1], reader.read(job[1])


@contextmanager
def window_batches(
    inputs: GroupInputs,
    stats: dict[str, BandStats],
    shape: tuple[int, int],
    device: torch.device,
    jobs: list[tuple[Block, list[Offset]]],
) -> Iterator[Iterator[tuple[list[Offset], Batch]]]:
    """The batches of ``jobs``, read ahead in threads where :func:`read_threads` allows.

    Reading starts lazily at the first batch taken; on exit, pending reads are cancelled and every
    dataset is closed.

    Args:
        inputs: the grid rasters.
        stats: normalisation statistics per role.
        shape: (rows, cols) of every window.
        device: where the model runs (pinned memory and threads for a GPU).
        jobs: (owner block, window offsets) per batch, as :meth:`Layout.batches` gives them.

    Yields:
        An iterator of (window offsets, batch), one per job, in order.
    """
    reader = WindowReader(inputs, stats, shape, pin=device.type == "cuda")
    threads = read_threads(device)
    executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="detect-read")
    read = partial(_read_job, reader)
    batches = prefetched(executor, read, jobs, depth=threads + 2) if threads else (read(job) for job in jobs)
    try:
        yield batches
    finally:
        batches.close()
        executor.shutdown(wait=True, cancel_futures=True)
        reader.close()
