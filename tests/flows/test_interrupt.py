"""Ctrl-C stops a command within seconds with one line saying what finished and how to resume (exit 130).

It used to end 165 s later in a ConnectError traceback: a terminal's Ctrl-C also stops the embedded
Prefect API server, and Prefect's crash report kept retrying it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline.synthetic.scenes import write_synthetic_group

CHANGEFLOW = Path(sys.executable).with_name("changeflow")


@pytest.fixture
def start():
    """``start(args, folder, name)``: ``changeflow ARGS`` in its own process group (as a terminal runs it),
    stderr to ``folder/name.err``; whatever still runs at the end of the test is killed."""
    processes = []

    def launch(args: list[str], folder: Path, name: str) -> tuple[subprocess.Popen, Path]:
        stderr = folder / f"{name}.err"
        with stderr.open("w") as sink:
            processes.append(subprocess.Popen([str(CHANGEFLOW), *args], cwd=folder, stdout=subprocess.DEVNULL,
                                              stderr=sink, start_new_session=True))
        return processes[-1], stderr

    yield launch
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def wait_for(condition, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def tile_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "tiles").rglob("*.tif"))}


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory) -> Path:
    """A scene list of a small group (done in seconds) and a 1024 px one, still being built when it is."""
    folder = tmp_path_factory.mktemp("interrupt")
    scenes = []
    for name, size, seed in (("small", 512, 1), ("big", 1024, 0)):
        group = write_synthetic_group(folder, name=name, size=size, seed=seed)
        scenes += yaml.safe_load(group.scene_list.read_text())["scenes"]
    (folder / "scenes.yaml").write_text(yaml.safe_dump({"scenes": scenes}))
    return folder


@pytest.mark.integration
def test_ctrl_c_during_prepare_stops_at_once_and_a_rerun_gives_the_same_tiles(two_groups, start):
    command = ["prepare", "--config", "scenes.yaml", "--out"]
    reference, _ = start([*command, "reference"], two_groups, "reference")  # uninterrupted, meanwhile
    process, stderr = start([*command, "out"], two_groups, "interrupted")
    wait_for(lambda: "group small: prepared" in stderr.read_text() and (two_groups / "out/groups/.big.partial").is_dir())
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole group, embedded API server included
    sent = time.monotonic()
    returncode = process.wait(timeout=60)
    seconds = time.monotonic() - sent

    log = stderr.read_text()
    assert returncode == 130, log
    assert seconds < 15
    assert "Traceback" not in log
    assert log.splitlines()[-1] == "interrupted: 1 of 2 groups prepared; rerun the same command to resume"
    assert [line for line in log.splitlines() if "interrupted" in line] == [log.splitlines()[-1]]
    with pytest.raises(ProcessLookupError):  # nothing left running, the API server neither
        os.killpg(process.pid, 0)
    assert sorted(p.name for p in (two_groups / "out/groups").iterdir() if not p.name.startswith(".")) == ["small"]
    assert not (two_groups / "out/catalog.gpkg").exists()

    rerun, rerun_log = start([*command, "out"], two_groups, "rerun")
    assert rerun.wait(timeout=600) == 0, rerun_log.read_text()
    assert reference.wait(timeout=600) == 0
    assert "group small: skipped" in rerun_log.read_text()
    assert "group big: prepared" in rerun_log.read_text()
    hashes = tile_hashes(two_groups / "out")
    assert hashes
    assert hashes == tile_hashes(two_groups / "reference")
    assert not list((two_groups / "out/groups").glob(".*partial"))


def test_stop_cleanly_prints_what_finished_and_exits_130(tmp_path):
    # stop_cleanly alone, without Prefect: the line, exit code 130, and the handler removed after the block.
    script = textwrap.dedent("""
        import os, signal, time
        from flows.interrupt import note, stop_cleanly
        before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background by a shell
        with stop_cleanly("rerun it"):
            assert signal.getsignal(signal.SIGINT) is not before
        assert signal.getsignal(signal.SIGINT) is before
        with stop_cleanly("rerun the same command to resume"):
            if os.environ["NOTE"]:
                note(os.environ["NOTE"])
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
    """)
    for done, expected in (("", "interrupted: rerun the same command to resume"),
                           ("2 of 3 groups detected", "interrupted: 2 of 3 groups detected; rerun the same command to resume")):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "NOTE": done}, cwd=Path(__file__).parents[2])
        assert result.returncode == 130, result.stderr
        assert result.stderr == expected + "\n"
