"""The ingest preflight refuses a configuration that would fail every pass, before anything is claimed."""

from __future__ import annotations

import pytest

from pipeline.config import IngestConfig
from pipeline.errors import InputError
from pipeline.ingest.preflight import check_ingest_config


@pytest.mark.parametrize("below", [False, True])
def test_a_workspace_that_is_a_file_is_refused_naming_it(tmp_path, below):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "scene_A.tif").write_bytes(b"left alone")
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    workspace = existing / "ws" if below else existing
    config = IngestConfig(inbox=tmp_path / "inbox", workspace=workspace, method="cva")
    expected = f"is not a folder, so workspace {workspace} cannot be created" if below else \
        "is not a folder; workspace must name a folder"
    with pytest.raises(InputError, match=expected) as error:
        check_ingest_config(config)
    assert str(error.value).startswith(f"{existing}: ")
    assert existing.read_text() == "mine"
    assert [p.name for p in (tmp_path / "inbox").iterdir()] == ["scene_A.tif"]
