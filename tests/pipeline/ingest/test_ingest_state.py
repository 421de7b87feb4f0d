"""The ingest state: attempts counted when they start, give-up, re-grouping after overlapping passes."""

from __future__ import annotations

from pipeline.ingest.state import IngestState, needs_grouping, pending_groups
from pipeline.prepare.inbox import Workspace

MEMBERS = {"A": "g1_A", "B": "g1_B"}


def test_passes_killed_inside_a_group_use_up_its_attempts(tmp_path):
    state = IngestState(Workspace(tmp_path))
    assert [state.begin_attempt("g1", MEMBERS, f"run{i}", 3) for i in range(3)] == [1, 2, 3]
    assert state.begin_attempt("g1", MEMBERS, "run3", 3) is None
    pending = pending_groups(state.read())["g1"]
    assert pending["attempts"] == 3 and pending["error"].startswith("attempt 3 (pass run2) did not finish")
    # A new member (a late label) is a new group content: its attempts start again.
    assert state.begin_attempt("g1", {**MEMBERS, "label": "g1_E"}, "run4", 3) == 1


def test_a_failure_is_pending_until_the_last_attempt_gives_the_group_up(tmp_path):
    state = IngestState(Workspace(tmp_path))
    state.begin_attempt("g1", MEMBERS, "run1", 2)
    assert state.failed("g1", MEMBERS, "run1", "bad B", 2) is False
    assert pending_groups(state.read()) == {"g1": {"scenes": ["g1_A", "g1_B"], "attempts": 1, "error": "bad B"}}
    state.begin_attempt("g1", MEMBERS, "run2", 2)
    assert state.failed("g1", MEMBERS, "run2", "bad B again", 2) is True
    data = state.read()
    assert pending_groups(data) == {}
    assert data["given_up"]["g1"]["scenes"] == ["g1_A", "g1_B"] and data["given_up"]["g1"]["attempts"] == 2


def test_scenes_archived_by_overlapping_passes_are_grouped_again(tmp_path):
    state = IngestState(Workspace(tmp_path))
    # Passes P1 and P2 list the archive at version 0; P2 archives first, then P1.
    state.grouped(0, True, {"g1_E": "group 'g1' has no A (optical t1) image"})
    assert not needs_grouping(state.read())
    state.grouped(0, True, {})
    assert needs_grouping(state.read())  # P2's label was never grouped with P1's scenes
    state.grouped(2, False, {})
    assert not needs_grouping(state.read())
