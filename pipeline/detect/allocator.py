"""Keep detection's large buffers on the heap in processes whose allocator was tuned to release memory.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any glibc malloc threshold
turns off glibc's adaptive mmap threshold, so every buffer above 128 KiB (window batches, block sums,
model activations) becomes a fresh memory mapping that is zero-filled page by page on each use: on a
4000² scene one worker spent 1.54× the one-process time (1.07 M page faults a block against 0.7–0.8 M).
A fixed 32 MiB mmap threshold, glibc's own adaptive ceiling on 64-bit, gave 1.04×
(benchmarks/README "Scale-out").
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 32 << 20


@cache
def keep_large_buffers_on_heap() -> bool:
    """Set glibc's mmap threshold to :data:`MMAP_THRESHOLD_BYTES` in this process, once.

    Returns:
        True when glibc took the setting; False where the C library is not glibc (nothing changes).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
