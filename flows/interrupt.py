"""Ctrl-C (SIGINT) during a command: stop within seconds, say what finished and how to resume, exit 130.

Letting KeyboardInterrupt unwind took minutes and ended in a traceback: a terminal's Ctrl-C also
stops the embedded Prefect API server (same process group), so Prefect's crash report retried the
dead API for ~160 s and ended in a ConnectError, and the interpreter then waited for the worker
threads still building groups. Every stage is already safe to kill: a prepare group is built in a
hidden ``.partial`` folder that a rerun discards, detection journals its finished blocks, checkpoints
and reports are replaced atomically, and the next ingest pass returns a dead pass's claims. So the
handler ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

_finished: str | None = None


def note(finished: str) -> None:
    """Record what has finished so far (``"2 of 5 groups prepared"``), for the line Ctrl-C prints."""
    global _finished
    _finished = finished


@contextmanager
def stop_cleanly(resume: str | Callable[[], str]) -> Iterator[None]:
    """While the block runs, Ctrl-C prints ``interrupted: {what finished}; {resume}`` and exits 130.

    Args:
        resume: how to resume, or a function that says it when Ctrl-C comes (what exists by then).
    """
    previous = signal.signal(signal.SIGINT, partial(_stop, resume))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(resume: str | Callable[[], str], signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process without waiting
    _stop_embedded_server()
    line = "interrupted: " + (f"{_finished}; " if _finished else "") + (resume if isinstance(resume, str) else resume())
    # A progress bar may have hidden the cursor and left the line unfinished; os.write, as a print
    # could be re-entered here in the middle of one.
    prefix = "\x1b[?25h\n" if os.isatty(2) else ""
    os.write(2, f"{prefix}{line}\n".encode())
    os._exit(130)  # 128 + SIGINT, as a shell reports it


def _stop_embedded_server() -> None:
    """Stop Prefect's embedded API server: a SIGINT sent to this process alone would leave it running."""
    server = sys.modules.get("prefect.server.api.server")  # imported once Prefect starts the server
    if server is not None:
        server.SubprocessASGIServer().stop()
