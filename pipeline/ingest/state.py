"""What the ingest loop still owes: failing groups, given-up groups, waiting scenes, unchecked archive.

``ingest_state.json`` in the workspace, read and rewritten under a file lock by overlapping passes::

    {"groups": {name: {"done": {role: scene id}, "done_by": run id,
                       "failed": {"members": {role: scene id}, "attempts": n, "error": "...", "run_id": ...}}},
     "given_up": {name: {"scenes": [...], "attempts": n, "error": "...", "run_id": ...}},
     "waiting": {scene id: why it is in no group},
     "archive_version": n, "checked_version": n}

A group is *done* for the member set it was last detected with; a different member set (a late label,
a new date) re-opens it. An attempt is counted when it starts, so a pass killed inside a group counts
too. ``archive_version`` counts the passes that archived scenes; ``checked_version`` is the version
whose scenes were all grouped together by one pass. They differ when overlapping passes archived
scenes the other did not see (a label claimed while its group was being built): the next pass groups
the archive again even when the inbox is empty.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from pipeline.io.atomic import write_atomic
from pipeline.prepare.inbox import Workspace

STATE_FILE = "ingest_state.json"


class IngestState:
    """The ingest state of one workspace (see the module docstring).

    Args:
        workspace: the ingestion workspace.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.path: Path = workspace.root / STATE_FILE
        self._lock = FileLock(workspace.root / f".{STATE_FILE}.lock")

    def read(self) -> dict:
        """The state as last written (no lock: each write is a rename).

        Returns:
            The state; empty sections when there is none yet.

        Raises:
            json.JSONDecodeError: the file is not valid JSON.
        """
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        for key in ("groups", "given_up", "waiting"):
            data.setdefault(key, {})
        data.setdefault("archive_version", 0)
        data.setdefault("checked_version", 0)
        return data

    @contextmanager
    def update(self) -> Iterator[dict]:
        """Read, change and rewrite the state, holding the lock throughout.

        Yields:
            The state to change in place; written back when the block ends without an exception.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = self.read()
            yield data
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))

    def begin_attempt(self, name: str, members: dict[str, str], run_id: str, max_attempts: int) -> int | None:
        """Count an attempt at a group before it runs (so that a killed attempt counts).

        Args:
            name: the group.
            members: role → scene id of the group as it is now.
            run_id: the pass making the attempt.
            max_attempts: the config's ``max_attempts``.

        Returns:
            The attempt number (1 for a new member set), or None when this member set has used up its
            attempts (passes killed inside it) and is to be given up.
        """
        with self.update() as data:
            failed = data["groups"].setdefault(name, {}).get("failed")
            before = failed["attempts"] if failed and failed["members"] == members else 0
            if before >= max_attempts:
                return None
            data["groups"][name]["failed"] = {
                "members": members, "attempts": before + 1, "run_id": run_id,
                "error": f"attempt {before + 1} (pass {run_id}) did not finish: the pass stopped inside it",
            }
            return before + 1

    def succeeded(self, name: str, members: dict[str, str], run_id: str) -> None:
        """Record a group as done for this member set.

        Args:
            name: the group.
            members: role → scene id it was detected with.
            run_id: the pass.
        """
        with self.update() as data:
            data["groups"][name] = {"done": members, "done_by": run_id}
            data["given_up"].pop(name, None)

    def failed(self, name: str, members: dict[str, str], run_id: str, error: str, max_attempts: int) -> bool:
        """Record a failed attempt; give the group up when it was the last one.

        Args:
            name: the group.
            members: role → scene id of the attempt.
            run_id: the pass.
            error: the one-line error.
            max_attempts: the config's ``max_attempts``.

        Returns:
            True when the group is given up (its failure entry moves to ``given_up``).
        """
        with self.update() as data:
            record = data["groups"].setdefault(name, {})
            started = record.get("failed", {})  # written by begin_attempt
            attempts = started["attempts"] if started.get("members") == members else 1
            record["failed"] = {"members": members, "attempts": attempts, "error": error, "run_id": run_id}
            if attempts < max_attempts:
                return False
            del record["failed"]
            data["given_up"][name] = {
                "scenes": sorted(members.values()), "attempts": attempts, "error": error, "run_id": run_id,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            return True

    def grouped(self, scanned: int, archived: bool, waiting: dict[str, str]) -> None:
        """Record that a pass grouped the archive as of version ``scanned`` and then archived its claims.

        Args:
            scanned: ``archive_version`` when the pass listed the archive.
            archived: whether the pass archived scenes (a new version).
            waiting: scene id → why it is in no group, as this pass saw it.
        """
        with self.update() as data:
            current = data["archive_version"]
            data["archive_version"] = current + int(archived)
            if current == scanned:  # no other pass archived in between: all scenes were seen together
                data["checked_version"] = data["archive_version"]
            data["waiting"] = waiting

    def forget_failures(self, names: list[str]) -> None:
        """Drop the failure entries of groups that no longer form (their scenes were moved away).

        Args:
            names: the groups.
        """
        with self.update() as data:
            for name in names:
                data["groups"].get(name, {}).pop("failed", None)


def pending_groups(data: dict) -> dict[str, dict]:
    """The groups still to be retried.

    Args:
        data: the state (:meth:`IngestState.read`).

    Returns:
        Group → ``{"scenes": [...], "attempts": n, "error": "..."}``, by name.
    """
    return {
        name: {"scenes": sorted(record["failed"]["members"].values()), "attempts": record["failed"]["attempts"],
               "error": record["failed"]["error"]}
        for name, record in sorted(data["groups"].items()) if "failed" in record
    }


def needs_grouping(data: dict) -> bool:
    """Whether a pass that claimed nothing must still group the archive: a group to retry, or scenes
    archived by overlapping passes that no pass grouped together yet.

    Args:
        data: the state (:meth:`IngestState.read`).

    Returns:
        True when the archive is to be grouped again.
    """
    return bool(pending_groups(data)) or data["archive_version"] != data["checked_version"]
