"""The review store: candidates copied and queued, optimistic versions, retries, durability after kill -9."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import shapely

from pipeline.errors import InputError
from pipeline.review.app import TOKEN_HEADER
from pipeline.review.candidates import open_store
from pipeline.review.store import ReviewStore
from tests.pipeline.review.conftest import WRITE
from tests.pipeline.review.scene import FALSE_ALARM, pixel_box


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_candidates_are_copies_queued_by_uncertainty_then_size(scene, group, tmp_path):
    before = _digest(scene.detection_dir)
    store = open_store(group, tmp_path / "review")
    features = store.features()
    assert [f["status"] for f in features] == ["pending"] * 4
    assert {f["source"] for f in features} == {"detection"}
    assert store.meta()["detection_run_id"] == "20260101T000000Z-test"
    by_uuid = {f["uuid"]: f for f in features}
    queue = [by_uuid[u] for u in store.queue(group.threshold)]
    # the false alarm (mean_prob 0.6) is nearest the threshold; the three at 0.9 follow, largest first
    assert queue[0]["geometry"] and shapely.from_wkb(queue[0]["geometry"]).equals(shapely.box(*pixel_box(*FALSE_ALARM)))
    assert [round(f["area"]) for f in queue[1:]] == [25600, 14400, 9216]
    assert open_store(group, tmp_path / "review").features() == features  # opened again: nothing re-imported
    assert _digest(scene.detection_dir) == before  # detection outputs never modified
    assert [op["op"] for op in store.log()] == ["import"] * 4


def test_store_of_another_detection_run_is_refused(group, store):
    with pytest.raises(InputError, match="detection_run_id"):
        store.import_candidates([], {"group": group.name, "detection_run_id": "another-run"})


def test_two_reviewers_one_wins_the_other_gets_the_current_state(client, store):
    uuid = store.features()[0]["uuid"]
    first = client.patch(f"/api/features/{uuid}", json={"version": 1, "status": "accepted", "reviewer": "ann"},
                         headers=WRITE)
    second = client.patch(f"/api/features/{uuid}", json={"version": 1, "status": "rejected", "reviewer": "bob"},
                          headers=WRITE)
    assert first.status_code == 200 and first.json()["properties"]["version"] == 2
    assert second.status_code == 409
    current = second.json()["current"]["properties"]
    assert (current["status"], current["reviewer"], current["version"]) == ("accepted", "ann", 2)
    assert store.feature(uuid)["status"] == "accepted"
    log = [op for op in store.log() if op["uuid"] == uuid and op["op"] == "update"]
    assert [(op["outcome"], op["reviewer"], op["payload"]["status"]) for op in log] == [
        ("applied", "ann", "accepted"), ("conflict", "bob", "rejected")]
    # bob, having seen ann's version, can still decide
    third = client.patch(f"/api/features/{uuid}", json={"version": 2, "status": "rejected", "reviewer": "bob"},
                         headers=WRITE)
    assert third.status_code == 200 and store.feature(uuid)["version"] == 3


def test_a_retried_operation_is_applied_once(client, store):
    uuid = store.features()[1]["uuid"]
    body = {"version": 1, "status": "rejected", "op_id": "op-1"}
    assert client.patch(f"/api/features/{uuid}", json=body, headers=WRITE).status_code == 200
    again = client.patch(f"/api/features/{uuid}", json=body, headers=WRITE)  # its answer was lost: sent again
    assert again.status_code == 200 and again.json()["properties"]["version"] == 2
    drawn = {"geometry": shapely.geometry.mapping(shapely.box(500100, 3499500, 500200, 3499400)),
             "uuid": "0f0e0d0c-0000-4000-8000-000000000001"}
    assert client.post("/api/features", json=drawn, headers=WRITE).status_code == 201
    assert client.post("/api/features", json=drawn, headers=WRITE).status_code == 201
    assert len(store.features()) == 5
    assert [op["op"] for op in store.log() if op["op"] != "import"] == ["update", "add"]


def test_statuses_that_do_not_fit_are_refused(client, store):
    candidate = store.features()[0]["uuid"]
    answer = client.patch(f"/api/features/{candidate}", json={"version": 1, "status": "deleted"}, headers=WRITE)
    assert answer.status_code == 422 and "rejected" in answer.json()["detail"]
    assert store.feature(candidate)["version"] == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(scene, review_dir: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "flows.cli", "review", "--prepared", str(scene.prepared), "--detections",
               str(scene.detections), "--port", str(port), "--review-dir", str(review_dir), "--reviewer", "kim"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              cwd=Path(__file__).resolve().parents[3])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=2).raise_for_status()
            return server
        except httpx.TransportError:
            assert server.poll() is None, server.stdout.read().decode()
            time.sleep(0.2)
    server.kill()
    raise AssertionError("the review server did not start within 60 s")


def test_killed_server_keeps_every_acknowledged_edit(scene, tmp_path):
    port = _free_port()
    server = _start(scene, tmp_path / "review", port)
    url = f"http://127.0.0.1:{port}"
    try:
        token = httpx.get(f"{url}/api/config").json()["token"]
        queue = httpx.get(f"{url}/api/queue").json()
        acknowledged = {}
        for uuid, status in zip(queue, ("rejected", "accepted", "accepted")):
            answer = httpx.patch(f"{url}/api/features/{uuid}", json={"version": 1, "status": status},
                                 headers={TOKEN_HEADER: token})
            assert answer.status_code == 200
            acknowledged[uuid] = status
        drawn = httpx.post(f"{url}/api/features", headers={TOKEN_HEADER: token},
                           json={"geometry": shapely.geometry.mapping(shapely.box(500100, 3499500, 500200, 3499400))})
        assert drawn.status_code == 201
        acknowledged[drawn.json()["id"]] = "added"
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    assert server.returncode == -signal.SIGKILL
    store = ReviewStore(tmp_path / "review" / "review.sqlite")
    assert {f["uuid"]: f["status"] for f in store.features() if f["status"] != "pending"} == acknowledged
    restarted = _start(scene, tmp_path / "review", port)
    try:
        features = httpx.get(f"{url}/api/features").json()["features"]
        assert {f["id"]: f["properties"]["status"] for f in features if f["properties"]["status"] != "pending"} == acknowledged
        assert {f["properties"]["reviewer"] for f in features if f["properties"]["status"] != "pending"} == {"kim"}
    finally:
        restarted.kill()
        restarted.wait()
