"""Run `changeflow` with a fault injected at the write layer: ``python inject.py FAULT:N ARGS...``.

Faults (N: the call that fails, counted from 1 over all threads):

- ``enospc-tile:N``: the N-th tile GeoTIFF (``pipeline.prepare.tiling._write_geotiff``) writes half a
  file and fails with ``OSError(ENOSPC)``, as a disk filling up mid-write does.
- ``enospc-cog:N``: the N-th COG copy (``rasterio.shutil.copy``, used by ``pipeline.io.cog``) fails with
  ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from pathlib import Path


def _nth_call_fails(module, name: str, n: int, half_write: bool) -> None:
    original, lock, calls = getattr(module, name), threading.Lock(), [0]

    def wrapper(*args, **kwargs):
        with lock:
            calls[0] += 1
            fail = calls[0] == n
        if fail:
            if half_write:
                Path(args[0]).write_bytes(b"II*\0 half a tile")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> None:
    fault, args = sys.argv[1], sys.argv[2:]
    kind, n = fault.split(":")
    if kind == "enospc-tile":
        import pipeline.prepare.tiling as tiling

        _nth_call_fails(tiling, "_write_geotiff", int(n), half_write=True)
    elif kind == "enospc-cog":
        import rasterio.shutil

        _nth_call_fails(rasterio.shutil, "copy", int(n), half_write=False)
    else:
        raise SystemExit(f"unknown fault {fault}")
    from flows.cli import app

    app(args, prog_name="changeflow")


if __name__ == "__main__":
    main()
