"""Leases on claim folders: a pass that dies (kill -9, out of memory, a reboot) never strands its scenes.

Each pass writes ``claims/{run_id}/.lease.json`` (run id, owner pid and host, expiry) before it claims
anything, and renews it from a background thread while it runs. A claim folder is dead when its lease
has expired (the owner stopped renewing: killed, frozen, or on a host that went away), or when its
owner ran on this host and its pid is gone. Every pass first returns the entries of dead claim
folders to the inbox (:func:`return_dead_claims`), where they are claimed again like new scenes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.io.atomic import process_running, write_atomic
from pipeline.prepare.inbox import Workspace, reject

LEASE_FILE = ".lease.json"
LEASE_SECONDS = 600.0  # renewed every third of it; a pass that stops renewing loses its claims after this


@dataclass(frozen=True)
class Lease:
    """Who holds a claim folder, and until when.

    Args:
        run_id: the holding pass.
        pid: its process id.
        host: the host name it runs on.
        expires: Unix time after which the claim counts as abandoned.
    """

    run_id: str
    pid: int
    host: str
    expires: float

    def is_dead(self, now: float) -> bool:
        """Whether the holder is gone: the lease expired, or the holder's process is gone from this host.

        Args:
            now: the current Unix time.

        Returns:
            True when the claim may be taken back.
        """
        return now > self.expires or (self.host == socket.gethostname() and not process_running(self.pid))



def read_lease(folder: Path) -> Lease | None:
    """The lease of a claim folder.

    Args:
        folder: a ``claims/{run_id}`` folder.

    Returns:
        The lease, or None when the folder has none or it is unreadable (a pass killed while writing it).
    """
    try:
        return Lease(**json.loads((folder / LEASE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


class LeaseHolder:
    """Holds a pass's lease on its claim folder, renewed in the background, as a context manager.

    Args:
        folder: the pass's ``claims/{run_id}`` folder (created on entry).
        seconds: lifetime of the lease; renewed every third of it.
    """

    def __init__(self, folder: Path, seconds: float = LEASE_SECONDS) -> None:
        self.folder = folder
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True)

    def renew(self) -> None:
        """Write the lease with a new expiry."""
        lease = Lease(self.folder.name, os.getpid(), socket.gethostname(), time.time() + self.seconds)
        write_atomic(self.folder / LEASE_FILE, json.dumps(asdict(lease)))

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            self.renew()

    def __enter__(self) -> LeaseHolder:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.renew()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        (self.folder / LEASE_FILE).unlink(missing_ok=True)


def return_to_inbox(folder: Path, inbox: Path, workspace: Workspace, run_id: str) -> list[str]:
    """Move the entries of a claim folder back to the inbox, then remove the folder.

    An entry whose name the inbox already holds again is not overwritten: it goes to ``rejected/``
    with the reason, so that neither copy is lost.

    Args:
        folder: a ``claims/{run_id}`` folder.
        inbox: the inbox.
        workspace: the ingestion workspace.
        run_id: the current pass's id (names the ``.superseded`` folder of :func:`pipeline.prepare.inbox.reject`).

    Returns:
        The names moved back to the inbox, sorted.

    Raises:
        OSError: an entry cannot be moved.
    """
    returned = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if (inbox / path.name).exists():
            reject(path, workspace, run_id, f"claimed by pass {folder.name}, which stopped; the inbox "
                   "already holds a scene of this name again")
            continue
        try:
            os.rename(path, inbox / path.name)
        except FileNotFoundError:  # another pass returned it first
            continue
        returned.append(path.name)
    shutil.rmtree(folder, ignore_errors=True)
    return returned


def return_dead_claims(workspace: Workspace, inbox: Path, run_id: str) -> dict[str, list[str]]:
    """Return the claims of dead passes to the inbox (see the module docstring).

    A claim folder without a readable lease counts as dead once its own mtime is ``LEASE_SECONDS``
    old (a pass killed between creating the folder and writing the lease).

    Args:
        workspace: the ingestion workspace.
        inbox: the inbox.
        run_id: the current pass's id; its own folder is never touched.

    Returns:
        Run id of each dead pass → the names moved back to the inbox.

    Raises:
        OSError: an entry cannot be moved.
    """
    if not workspace.claims.is_dir():
        return {}
    now = time.time()
    returned = {}
    for folder in sorted(p for p in workspace.claims.iterdir() if p.is_dir() and p.name != run_id):
        lease = read_lease(folder)
        try:
            dead = lease.is_dead(now) if lease is not None else now - folder.stat().st_mtime > LEASE_SECONDS
        except FileNotFoundError:  # removed by its pass or another one meanwhile
            continue
        if dead:
            try:
                returned[folder.name] = return_to_inbox(folder, inbox, workspace, run_id)
            except FileNotFoundError:  # a concurrent pass returned the folder's entries
                continue
    return returned
