"""The review page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

The page loads both panes; a drag in one pane moves the other (cursor mirrored; swipe and flicker
toggle); a candidate accepted, one rejected, a polygon drawn with the mouse and its vertex dragged (edit
mode) reach the store; a stale edit after another reviewer's is refused and shown as a conflict; undo
reverts; the export has the expected label pixels; click-to-grow adds the region under a click; edits
made while the server is away stay queued (the page warns before closing), also across closing and
reopening the page, and are sent when it is back. A screenshot is kept (``review.png`` in the test's tmp folder, and in ``$CHANGEFLOW_TEST_ARTEFACTS``
when set). Skips with the reason when the browser or its driver is not installed (`make test` installs
them as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import uvicorn
from selenium.webdriver.common.keys import Keys

from pipeline.review.app import create_app
from pipeline.review.candidates import open_store
from pipeline.review.export import export_review
from pipeline.review.group import open_review_group
from pipeline.review.tiles import TileSource
from tests.pipeline.review.scene import CHANGES, FALSE_ALARM, pixel_box, write_scene

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,800")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    missing = [str(p) for p in (CHROMIUM, DRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver; "
                    "`make test` does it as root)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("unhandledPromptBehavior", "accept")  # "leave the page?" answered yes
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


class LiveServer:
    """The review app under uvicorn in a thread, which a test may stop and start again on the same port."""

    def __init__(self, app) -> None:
        self.app = app
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.start()

    def start(self) -> None:
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path):
    scene = write_scene(tmp_path / "scene")
    group = open_review_group(scene.prepared, scene.detections)
    store = open_store(group, tmp_path / "review")
    server = LiveServer(create_app(group, store, TileSource(group), reviewer="selenium"))
    yield group, store, server
    server.stop()


def _wait(driver, script: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def _centres(driver) -> list[list[float]]:
    """The map coordinate at the centre pixel of each pane, as each pane last rendered it."""
    return driver.execute_script(
        "return ['t1', 't2'].map((p) => { const m = review.panes[p].map; const s = m.getSize();"
        " return m.getCoordinateFromPixel([s[0] / 2, s[1] / 2]); });")


def _click_at(driver, actions, x: float, y: float) -> None:
    """Click the t1 pane at map coordinate (x, y)."""
    element = driver.find_element("id", "map-t1")
    px, py = driver.execute_script(f"return review.panes.t1.map.getPixelFromCoordinate([{x}, {y}]);")
    size = element.size
    actions.move_to_element_with_offset(element, round(px - size["width"] / 2), round(py - size["height"] / 2))
    actions.click().pause(0.3)


def _candidate(store, square) -> dict:
    target = shapely.box(*pixel_box(*square))
    return next(f for f in store.features() if shapely.from_wkb(f["detection_geometry"] or f["geometry"]).equals(target))


def test_review_page_end_to_end(browser, served, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    group, store, server = served
    browser.get(server.url)
    _wait(browser, "return window.review && review.ready && review.tilesLoaded >= 4")
    assert browser.execute_script("return review.tileErrors") == 0
    assert browser.execute_script("return document.querySelectorAll('#map-t1 canvas, #map-t2 canvas').length") >= 2
    assert browser.find_element("id", "progress").text == "reviewed 0 / 4"
    assert "accept the current candidate" in browser.find_element("id", "keys").text

    # panning one pane moves the other
    before = _centres(browser)
    drag = ActionChains(browser).move_to_element(browser.find_element("id", "map-t1")).click_and_hold()
    for _ in range(4):  # in steps, as a hand moves: OpenLayers pans on pointer moves while the button is down
        drag.move_by_offset(30, 15)
    drag.release().perform()
    _wait(browser, f"return review.view.getCenter()[0] !== {before[0][0]}")
    time.sleep(0.5)  # both panes render the moved view
    after = _centres(browser)
    assert after[0] != before[0]
    np.testing.assert_allclose(after[1], after[0], atol=1e-6)
    assert after[0][0] < before[0][0] and after[0][1] > before[0][1]  # dragged right and down: view moves left, up
    # the cursor in t1 is mirrored into t2 at the same map coordinate
    mirrored = browser.execute_script(
        "const f = review.panes.t2.cursor.getSource().getFeatures(); return f.length ? f[0].getGeometry().getCoordinates() : null;")
    assert mirrored is not None
    np.testing.assert_allclose(mirrored, browser.execute_script("return review.pointer"))
    # swipe (key s) shows t2 over t1 in the t1 pane, and hides it again
    body = browser.find_element("tag name", "body")
    body.send_keys("s")
    assert browser.execute_script("return review.panes.t1.compare.getVisible()") is True
    body.send_keys("s")
    assert browser.execute_script("return review.panes.t1.compare.getVisible()") is False
    ActionChains(browser).key_down("f").perform()  # flicker: t2 shown while f is held
    assert browser.execute_script("return review.panes.t1.compare.getVisible()") is True
    ActionChains(browser).key_up("f").perform()
    assert browser.execute_script("return review.panes.t1.compare.getVisible()") is False

    # the queue starts with the most uncertain candidate: the false alarm; reject it, accept the next
    body.send_keys("n")
    body.send_keys("r")
    comment = browser.find_element("id", "comment")
    comment.send_keys("cloud shadow", Keys.ENTER)
    body.send_keys("n")
    body.send_keys("a")

    # draw the missed (faint) change with the mouse
    row, col, side = CHANGES[3]
    left, bottom, right, top = pixel_box(row, col, side)
    browser.execute_script(f"review.view.fit([{left - 40}, {bottom - 40}, {right + 40}, {top + 40}]);")
    time.sleep(0.5)
    body.send_keys("d")
    actions = ActionChains(browser)
    for x, y in ((left, top), (right, top), (right, bottom), (left, bottom), (left, top)):
        _click_at(browser, actions, x, y)
    actions.perform()
    _wait(browser, "return review.ops.length === 0 && document.getElementById('unsaved').textContent === 'all saved'")
    screenshot = tmp_path / "review.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("CHANGEFLOW_TEST_ARTEFACTS"):
        shutil.copy(screenshot, Path(os.environ["CHANGEFLOW_TEST_ARTEFACTS"]) / "review.png")

    assert _candidate(store, FALSE_ALARM)["status"] == "rejected"
    assert _candidate(store, FALSE_ALARM)["comment"] == "cloud shadow"
    assert _candidate(store, CHANGES[1])["status"] == "accepted"  # largest of the p 0.9 candidates
    added = [f for f in store.features() if f["status"] == "added"]
    assert len(added) == 1 and added[0]["reviewer"] == "selenium"
    drawn = shapely.from_wkb(added[0]["geometry"])
    truth = shapely.box(left, bottom, right, top)
    assert drawn.intersection(truth).area / drawn.union(truth).area > 0.9
    assert browser.find_element("id", "progress").text == "reviewed 2 / 4"

    # edit vertices: select the drawn polygon, press e, drag its top-right corner 3 grid pixels (12 m) right
    actions = ActionChains(browser)
    _click_at(browser, actions, (left + right) / 2, (top + bottom) / 2)
    actions.perform()
    body.send_keys("e")
    start, end = browser.execute_script(
        f"const m = review.panes.t1.map; return [m.getPixelFromCoordinate([{drawn.bounds[2]}, {drawn.bounds[3]}]),"
        f" m.getPixelFromCoordinate([{drawn.bounds[2] + 12}, {drawn.bounds[3]}])];")
    element = browser.find_element("id", "map-t1")
    drag = ActionChains(browser).move_to_element_with_offset(
        element, round(start[0] - element.size["width"] / 2), round(start[1] - element.size["height"] / 2))
    drag.click_and_hold()
    for _ in range(3):
        drag.move_by_offset(round((end[0] - start[0]) / 3), 0)
    drag.release().perform()
    body.send_keys(Keys.ESCAPE)
    _wait(browser, "return review.ops.length === 0 && document.getElementById('unsaved').textContent === 'all saved'")
    edited = store.feature(added[0]["uuid"])
    assert edited["version"] == 2 and edited["status"] == "added"
    assert shapely.from_wkb(edited["geometry"]).bounds[2] > drawn.bounds[2] + 6

    # another reviewer accepts the next candidate first: rejecting it here is refused with their state shown
    other = _candidate(store, CHANGES[0])
    store.update(other["uuid"], 1, {"status": "accepted"}, "bob")
    body.send_keys("n")
    body.send_keys("r")
    _wait(browser, "return document.getElementById('message').textContent.startsWith('conflict: bob')")
    shown = "return review.features.getFeatureById(arguments[0]).getProperties()"
    assert browser.execute_script(shown, other["uuid"])["status"] == "accepted"
    assert _candidate(store, CHANGES[0])["reviewer"] == "bob"
    assert [(op["outcome"], op["reviewer"]) for op in store.log() if op["uuid"] == other["uuid"] and op["op"] == "update"] \
        == [("applied", "bob"), ("conflict", "selenium")]
    # undo (z) skips the refused step and reverts the vertex edit
    body.send_keys("z")
    _wait(browser, "return review.ops.length === 0 && document.getElementById('unsaved').textContent === 'all saved'")
    reverted = store.feature(added[0]["uuid"])
    assert reverted["version"] == 3 and shapely.from_wkb(reverted["geometry"]).equals(drawn)
    assert _candidate(store, CHANGES[0])["status"] == "accepted"
    # and the page picks up changes made elsewhere
    last = _candidate(store, CHANGES[2])
    store.update(last["uuid"], 1, {"status": "rejected"}, "bob")
    browser.execute_script("return review.refresh()")
    _wait(browser, f"return review.features.getFeatureById('{last['uuid']}').get('status') === 'rejected'")

    summary = export_review(group, store, tmp_path / "export")
    with rasterio.open(summary["label"]) as dataset:
        label = dataset.read(1)
    r, c, s = FALSE_ALARM
    assert (label[r:r + s, c:c + s] == 0).all()
    r, c, s = CHANGES[1]
    assert (label[r:r + s, c:c + s] == 1).all()
    r, c, s = CHANGES[3]
    assert (label[r + 1:r + s - 1, c + 1:c + s - 1] == 1).all()  # the mouse lands within a pixel of the corners
    r, c, s = CHANGES[0]
    assert (label[r:r + s, c:c + s] == 1).all()  # bob's
    r, c, s = CHANGES[2]
    assert (label[r:r + s, c:c + s] == 0).all()  # bob's
    assert (label[:20, :20] == 255).all()  # not reviewed


def _accept_the_false_alarm_offline(browser, server) -> None:
    """Open the page, stop the server, then go to the false alarm (n) and accept it (a)."""
    browser.get(server.url)
    _wait(browser, "return window.review && review.ready")
    server.stop()
    body = browser.find_element("tag name", "body")
    body.send_keys("n")
    body.send_keys("a")


def test_unsaved_edits_wait_for_the_server_and_are_retried(browser, served):
    group, store, server = served
    _accept_the_false_alarm_offline(browser, server)
    _wait(browser, "return document.getElementById('unsaved').textContent === '1 unsaved'")
    leaving = "const e = new Event('beforeunload', {cancelable: true}); window.dispatchEvent(e); return e.defaultPrevented;"
    assert browser.execute_script(leaving) is True  # the page warns before it is closed
    assert _candidate(store, FALSE_ALARM)["status"] == "pending"
    browser.get("about:blank")  # the page is closed with the edit unsent; it is kept in localStorage
    server.start()
    browser.get(server.url)  # opened again: the kept edit is sent
    _wait(browser, "return window.review && review.ready && review.ops.length === 0")
    _wait(browser, "return document.getElementById('unsaved').textContent === 'all saved'")
    assert _candidate(store, FALSE_ALARM)["status"] == "accepted"
    assert browser.execute_script(leaving) is False
    assert browser.execute_script("return localStorage.length") == 0


def test_click_to_grow_adds_the_region_under_the_click(browser, served):
    from selenium.webdriver.common.action_chains import ActionChains

    group, store, server = served
    browser.get(server.url)
    _wait(browser, "return window.review && review.ready")
    threshold = browser.find_element("id", "prob-threshold")  # lowered to 0.30: the faint change is at 0.4
    browser.execute_script("arguments[0].value = 30; arguments[0].dispatchEvent(new Event('change'));", threshold)
    assert browser.find_element("id", "threshold-value").text == "0.30"
    left, bottom, right, top = pixel_box(*CHANGES[3])
    browser.execute_script(f"review.view.fit([{left - 40}, {bottom - 40}, {right + 40}, {top + 40}]);")
    time.sleep(0.5)
    browser.find_element("tag name", "body").send_keys("g")
    actions = ActionChains(browser)
    _click_at(browser, actions, (left + right) / 2, (top + bottom) / 2)
    actions.perform()
    _wait(browser, "return review.ops.length === 0 && review.features.getFeatures().length === 5")
    _wait(browser, "return document.getElementById('unsaved').textContent === 'all saved'")
    added = [f for f in store.features() if f["status"] == "added"]
    assert len(added) == 1
    assert shapely.from_wkb(added[0]["geometry"]).equals(shapely.box(left, bottom, right, top))
    assert "grown: 400 px" in browser.find_element("id", "message").text


def test_offline_edits_over_another_reviewers_change_are_refused_together(browser, served):
    """Also: the server comes back with a new launch token, which the page picks up."""
    group, store, server = served
    _accept_the_false_alarm_offline(browser, server)  # two edits made offline, on version 1 then 2
    browser.find_element("id", "comment").send_keys("mine", Keys.ENTER)
    _wait(browser, "return review.ops.length === 2")
    uuid = _candidate(store, FALSE_ALARM)["uuid"]
    store.update(uuid, 1, {"status": "rejected"}, "bob")  # meanwhile on the server: version 2, bob's
    server.app = create_app(group, store, TileSource(group), reviewer="selenium")  # restarted: a new token
    server.start()
    _wait(browser, "return document.getElementById('unsaved').textContent === 'all saved'")
    assert "conflict: bob" in browser.find_element("id", "message").text
    assert "nor 1 later edit" in browser.find_element("id", "message").text
    kept = store.feature(uuid)
    assert (kept["status"], kept["reviewer"], kept["comment"], kept["version"]) == ("rejected", "bob", "", 2)
