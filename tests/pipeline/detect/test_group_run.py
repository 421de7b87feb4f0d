"""Which prepared groups a detection runs on."""

from __future__ import annotations

import pytest

from pipeline.detect.group_run import prepared_groups
from pipeline.errors import ChangeflowError


def _group(prepared, name):
    folder = prepared / "groups" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder


def test_only_finished_groups_are_detected_not_one_a_prepare_is_still_building(tmp_path):
    done = _group(tmp_path, "g1")
    _group(tmp_path, ".g2.host-4242.abc123.partial")  # a group build under way (pipeline.io.atomic.partial_folder)
    (tmp_path / "groups" / "g3").mkdir()  # no manifest: never finished
    assert prepared_groups(tmp_path, None) == [done]
    with pytest.raises(ChangeflowError, match="no prepared group named g3"):
        prepared_groups(tmp_path, ["g1", "g3"])
