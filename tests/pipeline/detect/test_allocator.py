"""Detection pins glibc's mmap threshold, which Dask's nanny leaves fixed at 128 KiB."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.detect.allocator import MMAP_THRESHOLD_BYTES, keep_large_buffers_on_heap

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the setting is skipped")
def test_glibc_takes_the_threshold():
    assert keep_large_buffers_on_heap() is True
    assert MMAP_THRESHOLD_BYTES == 32 << 20  # glibc's own adaptive ceiling on 64-bit


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the setting is skipped")
def test_a_buffer_below_the_threshold_is_no_longer_a_fresh_mapping_under_the_nannys_setting():
    """Under MALLOC_TRIM_THRESHOLD_=65536 (Dask's nanny) a 1 MiB buffer is mmapped on every allocation:
    its pages are faulted in again each time. With the threshold pinned, heap memory is reused."""
    code = (
        "import resource, sys, numpy as np\n"
        "from pipeline.detect.allocator import keep_large_buffers_on_heap\n"
        "if sys.argv[1] == 'pinned': keep_large_buffers_on_heap()\n"
        "start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "previous = np.ones(1 << 17)\n"  # 1 MiB
        "for _ in range(200):\n"
        "    previous = previous + 1\n"  # a new buffer while the last one is alive, as a detection loop does
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)\n"
    )
    faults = {}
    for mode in ("default", "pinned"):
        run = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                             env={"MALLOC_TRIM_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"},
                             cwd=Path(__file__).parents[3])
        faults[mode] = int(run.stdout.split()[-1])
    assert faults["default"] > 200 * 200  # ~256 pages faulted in for each of the 200 buffers
    assert faults["pinned"] < 0.6 * faults["default"], faults  # measured here: 22 675 against 51 658
