"""The reliability suite's fixtures (a Prefect server for the subprocesses, small scenes) and its verdict count.

Each test records the verdict it observed for its case (:data:`tests.reliability.support.CASES`); the
terminal summary prints each case's promised and observed verdict and the counts by verdict. A test
that fails before recording counts as a crash. ``RELIABILITY_VERDICTS=file.json`` also writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.synthetic.scenes import write_synthetic_group
from tests.reliability.support import CASES, CRASH, OTHER_TREE, TREE, VERDICTS

_observed: dict[str, str] = {}
_outcomes: dict[str, str] = {}


@pytest.fixture
def verdict(request) -> Callable[[str, str], None]:
    """``verdict(case_id, observed)``: record what a case did (before asserting what it must do)."""

    def record(case: str, observed: str) -> None:
        assert case in CASES, f"{case} is not in the case table"
        assert observed in VERDICTS, observed
        _observed[case] = observed
        request.node.user_properties.append(("case", case))

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        for key, case in item.user_properties:
            if key == "case":
                _outcomes[case] = report.outcome
        # A case id in the test's parameters that never got a verdict: the test broke first.
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if isinstance(case, str) and case in CASES and case not in _observed and report.failed:
            _observed[case] = CRASH


def pytest_terminal_summary(terminalreporter) -> None:
    if not _observed:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"reliability verdicts ({TREE}{', another tree' if OTHER_TREE else ''})")
    for case, (family, promised) in CASES.items():
        if case in _observed:
            mark = "" if _observed[case] == promised else "   <-- not as promised"
            write(f"{case:32} {family:24} promised: {promised:12} observed: {_observed[case]}{mark}")
    counts = Counter(_observed.values())
    write("counts: " + ", ".join(f"{name} {counts.get(name, 0)}" for name in VERDICTS)
          + f" ({len(_observed)} of {len(CASES)} cases run)")
    if os.environ.get("RELIABILITY_VERDICTS"):
        Path(os.environ["RELIABILITY_VERDICTS"]).write_text(json.dumps(
            {"tree": str(TREE), "observed": _observed, "promised": {k: v[1] for k, v in CASES.items()}}, indent=1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """One Prefect server for every `changeflow` subprocess of the suite (each would else start its own, ~6 s)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    environment = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
    environment.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    prefect = Path(sys.executable).with_name("prefect")
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()


@pytest.fixture(scope="package")
def group_files(tmp_path_factory) -> dict[str, Path]:
    """A 256-px synthetic group: role ('A', 'B', 'C', 'label') -> GeoTIFF."""
    root = tmp_path_factory.mktemp("synthetic")
    group = write_synthetic_group(root, name="g", size=256, seed=1)
    return dict(group.paths)


def copy_group(files: dict[str, Path], folder: Path, base: str) -> dict[str, Path]:
    """The group's files copied into ``folder`` as ``{base}_{role}.tif``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {role: Path(shutil.copy(path, folder / f"{base}_{role}.tif")) for role, path in files.items()}
