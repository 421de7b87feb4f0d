"""One ingestion pass beside another: what a pass that claimed nothing does while the scenes are elsewhere."""

from __future__ import annotations

from pipeline.config import IngestConfig
from pipeline.ingest.ingest_pass import IngestPass
from pipeline.ingest.state import IngestState, pending_groups
from pipeline.prepare.inbox import Workspace


def test_a_pass_whose_scenes_are_all_in_another_pass_claims_plans_nothing(tmp_path):
    """Pass 1 claimed every scene and its group attempt is under way (pending); pass 2 finds an empty inbox
    and an empty archive. It must plan no group, not fail on a scene list with no scene."""
    inbox, workspace = tmp_path / "inbox", tmp_path / "workspace"
    inbox.mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    state = IngestState(Workspace(workspace))
    state.begin_attempt("g1", {"A": "g1_A", "B": "g1_B"}, "run1", 3)  # pass 1, still running
    (Workspace(workspace).claim_dir("run1") / "g1_A.tif").parent.mkdir(parents=True, exist_ok=True)
    config = IngestConfig(inbox=inbox, workspace=workspace, checkpoint=tmp_path / "model.pt", settle_seconds=0)
    assert pending_groups(state.read())  # so the pass looks at the archive although it claimed nothing

    with IngestPass(config, "run2") as second:
        assert second.claim() == []
        assert second.plan() == []
        report = second.finish()

    assert report["groups"] == {} and report["waiting"] == {}
    assert "g1" in report["pending"]  # still pass 1's to finish or a later pass's to retry
