"""The CLI reports a user's mistake as one line naming the file, with exit code 2 and no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app


@pytest.mark.parametrize("command", ["prepare", "detect", "run"])
def test_a_missing_config_is_named_with_exit_code_2(command, tmp_path):
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(app, [command, "--config", str(missing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "config file not found" in result.output
    assert "nope.yaml" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_invalid_config_lists_every_problem(tmp_path):
    config = tmp_path / "detect.yaml"
    config.write_text("scene_list: scenes.yaml\n")
    result = CliRunner().invoke(app, ["detect", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    for problem in ("'prepared': Field required", "unknown config key 'scene_list'"):
        assert problem in " ".join(result.output.split())


@pytest.mark.parametrize(("extra", "verdict"), [("", "not neither"), ("method: cva\ncheckpoint: m.pt\n", "not both")])
def test_detect_needs_exactly_one_of_checkpoint_and_method(tmp_path, extra, verdict):
    config = tmp_path / "detect.yaml"
    config.write_text(f"prepared: {tmp_path}\n{extra}")
    result = CliRunner().invoke(app, ["detect", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "give exactly one of 'checkpoint'" in " ".join(result.output.split())
    assert verdict in result.output


def test_ingest_refuses_a_missing_config(tmp_path):
    result = CliRunner().invoke(app, ["ingest", "--config", str(tmp_path / "ingest.yaml")])
    assert result.exit_code == 2
    assert "ingest.yaml" in result.output
