"""One ingestion pass: recover dead claims, claim, group, build and detect each group, archive, record.

The guarantees (see README "Scheduled ingestion"):

- A scene leaves the loop only to the archive (its group detected, or waiting for a partner),
  ``rejected/`` (refused by the catalog, or its group given up after ``max_attempts``, with the
  reason beside it) or ``archive/duplicates``. A group whose prepare or detection failed stays
  pending in the state and is retried by the next passes, even when the inbox is empty.
- A pass holds a lease on its claim folder; the claims of a dead pass go back to the inbox on the
  next pass, and an exception returns this pass's unfinished claims (:class:`IngestPass` is a
  context manager).
- Overlapping passes: a file lock per group around build + detect (the second pass then skips a
  group the first one finished), a locked registry and state.
- A group is re-run when its member set differs from the one it was done with (a late label, a later
  date): the record names the scenes that re-opened it.
- Every pass writes ``runs/{run_id}.json``: returned, claimed, refused, groups run (status, attempt,
  error, outputs), waiting scenes, pending groups, given-up groups.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from pipeline.config import IngestConfig, PrepareConfig
from pipeline.detect.group_run import run_group
from pipeline.errors import ChangeflowError
from pipeline.ingest.lease import LeaseHolder, return_dead_claims, return_to_inbox
from pipeline.ingest.state import IngestState, needs_grouping, pending_groups
from pipeline.io.atomic import write_atomic
from pipeline.prepare.catalog import build_catalog, scan_inbox
from pipeline.prepare.group_build import process_group
from pipeline.prepare.inbox import Workspace, archive, claim_new_scenes, fingerprint, reject, unregister
from pipeline.prepare.overlap import Group, build_groups


@dataclass
class GroupJob:
    """A group a pass is to build and detect.

    Args:
        group: the overlap group.
        members: role → scene id, the identity of the group's content.
        claimed: whether it holds a scene this pass claimed (then it runs even if done before).
        reopened_by: scene ids that are new since the group was last done.
    """

    group: Group
    members: dict[str, str]
    claimed: bool
    reopened_by: list[str] = field(default_factory=list)


def _one_line(exc: Exception) -> str:
    """The error on one line; an unexpected kind (OSError, MemoryError) keeps its type name."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, (ChangeflowError, ValueError)) else f"{type(exc).__name__}: {text}"


class IngestPass:
    """One pass over the inbox; a context manager that holds the claim lease and returns unfinished claims.

    Use: ``recover()``, ``claim()``, ``plan()``, ``process(job)`` for each job, ``finish()``.

    Args:
        config: the validated (and checked, see :mod:`pipeline.ingest.preflight`) ingest config.
        run_id: this pass's id.
    """

    def __init__(self, config: IngestConfig, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self.workspace = Workspace(config.workspace)
        self.state = IngestState(self.workspace)
        self.claim_dir = self.workspace.claim_dir(run_id)
        self.report: dict = {"run_id": run_id, "returned": {}, "claimed": [], "refused": {}, "groups": {},
                             "waiting": {}, "pending": {}, "given_up": {}}
        self._lease = LeaseHolder(self.claim_dir)
        self._claimed: list[Path] = []
        self._scanned: int | None = None  # archive version when this pass listed the archive
        self._prepare: PrepareConfig | None = None
        self._crs = None

    def __enter__(self) -> IngestPass:
        self._lease.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lease.__exit__(*exc_info)
        if not self.claim_dir.exists():  # taken back by another pass (this one stopped renewing its lease)
            return
        # Normally empty by now; after an exception these are the scenes this pass did not finish.
        unfinished = return_to_inbox(self.claim_dir, self.config.inbox, self.workspace, self.run_id)
        if unfinished:
            self.report["unfinished"] = unfinished
            print(f"returned {len(unfinished)} unfinished scene(s) to the inbox: {', '.join(unfinished)}")

    def recover(self) -> dict[str, list[str]]:
        """Return the claims of dead passes to the inbox (:func:`pipeline.ingest.lease.return_dead_claims`).

        Returns:
            Run id of each dead pass → the names returned.
        """
        self.report["returned"] = return_dead_claims(self.workspace, self.config.inbox, self.run_id)
        return self.report["returned"]

    def claim(self) -> list[Path]:
        """Claim the inbox's new scenes into this pass's claim folder.

        Returns:
            The claimed paths.
        """
        self._claimed = claim_new_scenes(self.config.inbox, self.workspace, self.run_id,
                                         settle_seconds=self.config.settle_seconds)
        self.report["claimed"] = [p.name for p in self._claimed]
        return self._claimed

    def plan(self) -> list[GroupJob]:
        """Catalog the claimed and archived scenes, refuse bad ones, group them, and pick the groups to run.

        A pass that claimed nothing groups the archive only when a group waits for a retry or
        overlapping passes archived scenes no pass grouped together (:func:`needs_grouping`).

        Returns:
            The groups holding a claimed scene, and those whose member set differs from the one they
            were done with (never done, failed, re-opened).
        """
        data = self.state.read()
        if not self._claimed and not needs_grouping(data):
            return []
        self._scanned = data["archive_version"]
        groups, unpaired = self._group_scenes()
        self.report["waiting"] = unpaired
        jobs = []
        for group in groups:
            members = {role.value: scene.id for role, scene in sorted(group.members.items(), key=lambda i: i[0].value)}
            claimed = any((m.source or m.path).parent == self.claim_dir for m in group.members.values())
            done = data["groups"].get(group.name, {}).get("done")
            if claimed or members != done:
                reopened = sorted(set(members.values()) - set(done.values())) if done else []
                jobs.append(GroupJob(group, members, claimed, reopened))
        formed = {group.name for group in groups}
        self.state.forget_failures([
            name for name, record in data["groups"].items()
            if "failed" in record and name not in formed
            and not self.workspace.claim_dir(record["failed"]["run_id"]).exists()  # not a live pass's attempt
        ])
        return jobs

    def _group_scenes(self) -> tuple[list[Group], dict[str, str]]:
        """Catalog this pass's claims with the archive, reject what the catalog refuses, form the groups."""
        sensors = PrepareConfig.model_fields["inbox_sensors"].get_default(call_default_factory=True)
        sensors = self.config.prepare.get("inbox_sensors", sensors)
        entries = scan_inbox(self.claim_dir, sensors)
        if self.workspace.archive.exists():
            entries += [e for e in scan_inbox(self.workspace.archive, sensors) if e.path != self.workspace.duplicates]
        if not entries:  # every scene is still in the claims of an overlapping pass: nothing to group yet
            return [], {}
        self._prepare = self.config.prepare_config(entries)
        scenes, failures = build_catalog(self._prepare.scenes, self._prepare)
        for entry, reason in failures:
            self.report["refused"][entry.path.name] = reason
            if entry.path in self._claimed:
                reject(entry.path, self.workspace, self.run_id, reason)
        groups, unpaired, self._crs = build_groups(scenes, self._prepare.min_overlap)
        return groups, dict(unpaired)

    def process(self, job: GroupJob, device_slot: AbstractContextManager | None = None) -> dict:
        """Build and detect one group under its lock; record the attempt, success, failure or give-up.

        Any exception of the group (not only ChangeflowError: an OSError, a MemoryError) is a failed
        attempt; the pass goes on with the next group.

        Args:
            job: the group (from :meth:`plan`).
            device_slot: held while the model runs (the flow's GPU slot).

        Returns:
            The group's outcome: ``status`` (done, skipped, failed, given up), the attempt, and the
            error or the outputs (polygons, n_polygons, metrics and report when evaluated); also
            stored in the report under ``groups``.
        """
        name = job.group.name
        locks = self.workspace.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(locks / f"{name}.lock"):
            record = self.state.read()["groups"].get(name, {})
            if not job.claimed and record.get("done") == job.members:  # an overlapping pass did it meanwhile
                outcome = {"status": "skipped", "done_by": record["done_by"]}
            else:
                outcome = self._attempt(job, device_slot)
        if job.reopened_by:
            outcome["reopened_by"] = job.reopened_by
        self.report["groups"][name] = outcome
        return outcome

    def _attempt(self, job: GroupJob, device_slot: AbstractContextManager | None = None) -> dict:
        """One counted attempt at a group (the caller holds the group's lock)."""
        name, max_attempts = job.group.name, self.config.max_attempts
        attempt = self.state.begin_attempt(name, job.members, self.run_id, max_attempts)
        if attempt is None:  # earlier passes died inside this group max_attempts times
            error = self.state.read()["groups"][name]["failed"]["error"]
            self.state.failed(name, job.members, self.run_id, error, max_attempts)
            return self._give_up(job, max_attempts, error)
        try:
            summary = self._build_and_detect(job.group, device_slot)
        except Exception as exc:  # any failure keeps the group pending, never drops it
            error = _one_line(exc)
            if self.state.failed(name, job.members, self.run_id, error, max_attempts):
                return self._give_up(job, attempt, error)
            return {"status": "failed", "attempt": attempt, "error": error}
        self.state.succeeded(name, job.members, self.run_id)
        outputs = {key: summary[key] for key in ("polygons", "n_polygons", "metrics", "report") if key in summary}
        return {"status": "done", "attempt": attempt, **outputs}

    def _build_and_detect(self, group: Group, device_slot: AbstractContextManager | None) -> dict:
        prepared = self.workspace.root / "prepared"
        process_group(group, self._crs, self._prepare, prepared)
        return run_group(prepared / "groups" / group.name, self.config.detect_config(),
                         self.workspace.root / "detections" / group.name, device_slot=device_slot)

    def _give_up(self, job: GroupJob, attempts: int, error: str) -> dict:
        """Move the group's scenes that were never detected to ``rejected/`` and forget them in the registry."""
        done = self.state.read()["groups"].get(job.group.name, {}).get("done") or {}
        reason = f"given up after {attempts} attempts: {error}"
        forget = []
        for member in job.group.members.values():
            path = member.source or member.path
            if member.id in done.values() or not path.exists():
                continue
            if path.parent == self.workspace.archive:
                forget.append(fingerprint(path))
            reject(path, self.workspace, self.run_id, reason)
        unregister(self.workspace, forget)
        self.report["given_up"][job.group.name] = {"scenes": sorted(job.members.values()), "error": reason}
        return {"status": "given up", "attempt": attempts, "error": reason}

    def finish(self) -> dict:
        """Archive the claimed scenes still here, update the state and write the run record.

        Returns:
            The pass's report (also in ``runs/{run_id}.json``), with ``pending``: the groups to retry.
        """
        done = [p for p in self._claimed if p.exists()]
        if done:
            archive(done, self.workspace, self.run_id)
        if self._scanned is not None:
            self.state.grouped(self._scanned, bool(done), self.report["waiting"])
        self.report["pending"] = pending_groups(self.state.read())
        write_atomic(self.workspace.root / "runs" / f"{self.run_id}.json", json.dumps(self.report, indent=1))
        return self.report
