"""The review store: one SQLite file in WAL mode with a row per feature and an append-only operation log.

A GeoPackage written by GDAL cannot be edited row by row with plain sqlite (its spatial-index triggers
call GDAL functions), so the store is plain SQLite and the GeoPackage is an export
(:mod:`pipeline.review.export`). Geometries are WKB in the group's CRS.

Every request is one ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``: once a write is
acknowledged it survives a killed server. Edits are optimistic: a change names the version it was
made on, and a stale one is refused with the current state (:class:`Conflict`) and logged, never
applied over another reviewer's work. A change may carry a client operation id: the retry of an
operation already applied returns the feature as it is instead of applying it twice.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import shapely

from pipeline.errors import InputError

REVIEWED = ("accepted", "rejected", "edited")  # a candidate's statuses once reviewed
CHANGE = ("accepted", "edited", "added")  # statuses whose geometry is change
DETECTION, REVIEWER = "detection", "reviewer"  # where a feature comes from

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS features (
    uuid TEXT PRIMARY KEY,
    geometry BLOB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'edited', 'added', 'deleted')),
    class INTEGER NOT NULL DEFAULT 1,
    reviewer TEXT,
    created_utc TEXT NOT NULL,
    updated_utc TEXT NOT NULL,
    version INTEGER NOT NULL,
    mean_prob REAL,
    comment TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL CHECK (source IN ('detection', 'reviewer')),
    detection_id INTEGER,
    detection_geometry BLOB,
    area REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT,
    uuid TEXT NOT NULL,
    op TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'conflict')),
    reviewer TEXT,
    at_utc TEXT NOT NULL,
    base_version INTEGER,
    version INTEGER,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    reviewed INTEGER NOT NULL,
    reviewer TEXT,
    updated_utc TEXT NOT NULL,
    PRIMARY KEY (row, col)
);
CREATE INDEX IF NOT EXISTS ops_op_id ON ops (op_id);
CREATE TRIGGER IF NOT EXISTS ops_append_only_update BEFORE UPDATE ON ops
    BEGIN SELECT RAISE(ABORT, 'the operation log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ops_append_only_delete BEFORE DELETE ON ops
    BEGIN SELECT RAISE(ABORT, 'the operation log is append-only'); END;
"""
COLUMNS = ("uuid", "geometry", "status", "class", "reviewer", "created_utc", "updated_utc", "version", "mean_prob",
           "comment", "source", "detection_id", "detection_geometry", "area")


class ReviewError(ValueError):
    """A change the store refuses as such (an unknown feature, a status that does not fit it)."""


class UnknownFeature(ReviewError):
    """No feature with that uuid."""


class Conflict(Exception):
    """A change made on a stale version; ``current`` is the feature as it is now."""

    def __init__(self, current: dict[str, Any]) -> None:
        self.current = current
        super().__init__(f"feature {current['uuid']} is at version {current['version']}")


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReviewStore:
    """The review store of one group (see the module docstring).

    Args:
        path: the SQLite file; created with its schema when missing.

    Raises:
        InputError: naming ``path`` when it is not a review store (not SQLite, or another schema).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connection() as connection:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(SCHEMA)
                names = [row[1] for row in connection.execute("PRAGMA table_info(features)")]
        except sqlite3.DatabaseError as exc:
            raise InputError(self.path, f"is not a review store ({exc})") from None
        if tuple(names) != COLUMNS:
            raise InputError(self.path, f"is not a review store of this version (columns {names})")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA synchronous=FULL")  # an acknowledged edit survives a crash
            yield connection
        finally:
            connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed when the block ends, rolled back on an error.

        Yields:
            The connection, inside the transaction.
        """
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def meta(self) -> dict[str, str]:
        """The store's metadata (group, CRS, detection run id, threshold...)."""
        with self._connection() as connection:
            return {row["key"]: row["value"] for row in connection.execute("SELECT key, value FROM meta")}

    def import_candidates(self, candidates: list[dict[str, Any]], meta: Mapping[str, str]) -> int:
        """Copy the detection's polygons in as pending candidates, once per store.

        Args:
            candidates: dicts with ``geometry`` (shapely), ``detection_id``, ``class`` and ``mean_prob``.
            meta: the store's metadata; ``group`` and ``detection_run_id`` identify the detection.

        Returns:
            How many candidates were imported (0 when the store already holds this detection's).

        Raises:
            InputError: the store holds the candidates of another group or detection run.
        """
        with self.transaction() as connection:
            known = {row["key"]: row["value"] for row in connection.execute("SELECT key, value FROM meta")}
            if "group" in known:
                for key in ("group", "detection_run_id"):
                    if known.get(key) != meta.get(key):
                        raise InputError(self.path, f"holds the review of {key} {known.get(key)!r}, not "
                                                    f"{meta.get(key)!r}; choose another --review-dir")
                return 0
            connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            now = utc_now()
            rows = [
                (str(uuidlib.uuid4()), shapely.to_wkb(c["geometry"]), "pending", int(c["class"]), None, now, now, 1,
                 _finite(c["mean_prob"]), "", DETECTION, int(c["detection_id"]), shapely.to_wkb(c["geometry"]),
                 float(c["geometry"].area))
                for c in candidates
            ]
            connection.executemany(f"INSERT INTO features ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 14)})", rows)
            for row in rows:
                _log(connection, None, row[0], "import", "applied", None, None, 1,
                     {"detection_id": row[11], "mean_prob": row[8]})
            return len(rows)

    def features(self) -> list[dict[str, Any]]:
        """Every feature, as dicts of the store's columns, in creation order."""
        with self._connection() as connection:
            return [dict(row) for row in connection.execute("SELECT * FROM features ORDER BY rowid")]

    def feature(self, uuid: str) -> dict[str, Any]:
        """One feature.

        Args:
            uuid: its id.

        Returns:
            Its columns.

        Raises:
            UnknownFeature: there is none with that id.
        """
        with self._connection() as connection:
            return _get(connection, uuid)

    def log(self) -> list[dict[str, Any]]:
        """The operation log, oldest first (payloads decoded)."""
        with self._connection() as connection:
            rows = [dict(row) for row in connection.execute("SELECT * FROM ops ORDER BY seq")]
        for row in rows:
            row["payload"] = json.loads(row["payload"])
        return rows

    def reviewed_cells(self) -> list[tuple[int, int]]:
        """The review cells marked reviewed, as (row, col), sorted."""
        with self._connection() as connection:
            rows = connection.execute("SELECT row, col FROM cells WHERE reviewed = 1 ORDER BY row, col")
            return [(row["row"], row["col"]) for row in rows]

    def mark_cell(self, row: int, col: int, reviewed: bool, reviewer: str, op_id: str | None = None) -> None:
        """Mark a review cell reviewed (the reviewer has seen all of it: what is not change there is no change) or not.

        Args:
            row: the cell's row (cells of ``cell_px`` pixels from the grid's top-left corner).
            col: its column.
            reviewed: the new mark.
            reviewer: who marks it.
            op_id: the client's operation id, logged.
        """
        with self.transaction() as connection:
            connection.execute(
                "INSERT INTO cells (row, col, reviewed, reviewer, updated_utc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (row, col) DO UPDATE SET reviewed = excluded.reviewed, reviewer = excluded.reviewer, "
                "updated_utc = excluded.updated_utc",
                (row, col, int(reviewed), reviewer, utc_now()),
            )
            _log(connection, op_id, f"cell:{row}:{col}", "cell", "applied", reviewer, None, None, {"reviewed": reviewed})

    def queue(self, threshold: float) -> list[str]:
        """The candidates in review order: most uncertain first (mean_prob nearest the threshold), then largest.

        Args:
            threshold: the detection's class threshold.

        Returns:
            Candidate uuids.
        """
        with self._connection() as connection:
            rows = connection.execute("SELECT uuid, mean_prob, area FROM features WHERE source = ?", (DETECTION,))
            ranked = sorted(rows, key=lambda r: (math.inf if r["mean_prob"] is None else abs(r["mean_prob"] - threshold),
                                                 -r["area"], r["uuid"]))
        return [row["uuid"] for row in ranked]

    def add(self, geometry: shapely.Geometry, reviewer: str, *, feature_class: int = 1, comment: str = "",
            uuid: str | None = None, op_id: str | None = None) -> dict[str, Any]:
        """Add a feature drawn (or grown) by a reviewer, with status ``added``.

        Adding the same uuid again (a retried request) returns the feature already added.

        Args:
            geometry: a checked polygon in the group's CRS (:mod:`pipeline.review.geometry`).
            reviewer: who added it.
            feature_class: its change class.
            comment: free text.
            uuid: the id chosen by the client (so a retry is recognised); a new one when None.
            op_id: the client's operation id, logged.

        Returns:
            The feature.
        """
        uuid = uuid or str(uuidlib.uuid4())
        with self.transaction() as connection:
            existing = connection.execute("SELECT 1 FROM features WHERE uuid = ?", (uuid,)).fetchone()
            if existing is not None:
                return _get(connection, uuid)
            now = utc_now()
            connection.execute(
                f"INSERT INTO features ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 14)})",
                (uuid, shapely.to_wkb(geometry), "added", int(feature_class), reviewer, now, now, 1, None, comment,
                 REVIEWER, None, None, float(geometry.area)),
            )
            _log(connection, op_id, uuid, "add", "applied", reviewer, None, 1,
                 {"geometry": shapely.to_wkt(geometry), "class": feature_class, "comment": comment})
            return _get(connection, uuid)

    def update(self, uuid: str, version: int, changes: Mapping[str, Any], reviewer: str,
               op_id: str | None = None) -> dict[str, Any]:
        """Change a feature's status, geometry, class or comment, if it is still at ``version``.

        A new geometry on a candidate makes it ``edited`` unless a status is given. A candidate may go
        back to ``pending`` (undo) but not be ``added`` or ``deleted`` (reject it); a reviewer's feature
        is ``added`` or ``deleted``.

        Args:
            uuid: the feature.
            version: the version the change was made on.
            changes: any of ``status``, ``geometry`` (a checked shapely polygon), ``class``, ``comment``.
            reviewer: who makes the change.
            op_id: the client's operation id: when an operation with it was applied already, the feature
                is returned as it is now.

        Returns:
            The feature after the change, its version one higher.

        Raises:
            UnknownFeature: no such feature.
            ReviewError: a status that does not fit the feature.
            Conflict: the feature is no longer at ``version`` (the attempt is logged).
        """
        with self.transaction() as connection:
            current = _get(connection, uuid)
            if op_id is not None and connection.execute(
                    "SELECT 1 FROM ops WHERE op_id = ? AND uuid = ? AND outcome = 'applied'", (op_id, uuid)).fetchone():
                return current
            values = _new_values(current, changes)
            payload = {key: (shapely.to_wkt(value) if key == "geometry" else value) for key, value in changes.items()}
            if current["version"] != version:
                _log(connection, op_id, uuid, "update", "conflict", reviewer, version, current["version"], payload)
                conflict = Conflict(current)
            else:
                values.update(reviewer=reviewer, updated_utc=utc_now(), version=version + 1)
                assignments = ", ".join(f"{key} = ?" for key in values)
                connection.execute(f"UPDATE features SET {assignments} WHERE uuid = ?", (*values.values(), uuid))
                _log(connection, op_id, uuid, "update", "applied", reviewer, version, version + 1,
                     {**payload, "previous_status": current["status"]})
                return _get(connection, uuid)
        raise conflict  # after the commit, so the conflict stays in the log


def _new_values(current: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a change sets; a ReviewError for an unknown key or a status that does not fit."""
    unknown = sorted(set(changes) - {"status", "geometry", "class", "comment"})
    if unknown:
        raise ReviewError(f"cannot change {unknown}")
    values: dict[str, Any] = {}
    status = changes.get("status")
    if "geometry" in changes:
        geometry = changes["geometry"]
        values.update(geometry=shapely.to_wkb(geometry), area=float(geometry.area))
        if status is None and current["source"] == DETECTION:
            status = "edited"
    if status is not None:
        allowed = ("pending", *REVIEWED) if current["source"] == DETECTION else ("added", "deleted")
        if status not in allowed:
            raise ReviewError(f"status {status!r} does not fit a {current['source']} feature (use one of {allowed})")
        values["status"] = status
    if "class" in changes:
        values["class"] = int(changes["class"])
    if "comment" in changes:
        values["comment"] = str(changes["comment"])
    return values


def _get(connection: sqlite3.Connection, uuid: str) -> dict[str, Any]:
    row = connection.execute("SELECT * FROM features WHERE uuid = ?", (uuid,)).fetchone()
    if row is None:
        raise UnknownFeature(f"no feature {uuid!r}")
    return dict(row)


def _log(connection: sqlite3.Connection, op_id: str | None, uuid: str, op: str, outcome: str, reviewer: str | None,
         base_version: int | None, version: int | None, payload: dict[str, Any]) -> None:
    connection.execute(
        "INSERT INTO ops (op_id, uuid, op, outcome, reviewer, at_utc, base_version, version, payload) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (op_id, uuid, op, outcome, reviewer, utc_now(), base_version, version, json.dumps(payload)),
    )


def _finite(value: Any) -> float | None:
    """A float, or None for a missing or NaN value."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
