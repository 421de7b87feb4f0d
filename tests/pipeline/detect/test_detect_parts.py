"""The parts of sliding-window detection on their own: settings, layout batches, staging and carries."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import DetectConfig
from pipeline.detect.sliding import DetectSettings
from pipeline.detect.staging import Carries, Staging
from pipeline.detect.windows import block_id, plan


@pytest.mark.parametrize(("options", "message"), [
    ({"overlap": 1.0}, "overlap must be in"),
    ({"probability_dtype": "int16"}, "probability_dtype must be"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"weighting": "cosine"}, "weighting must be"),
])
def test_settings_out_of_range_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DetectSettings(**options)


def test_settings_take_the_inference_keys_of_a_detect_config(tmp_path):
    config = DetectConfig(prepared=tmp_path, checkpoint=tmp_path / "m.pt", window=64, tta=True, prompt="roads")
    settings = DetectSettings.from_config(config)
    assert (settings.window, settings.tta, settings.prompt, settings.block_size) == (64, True, "roads", 2048)


def test_batches_follow_the_blocks_and_cover_every_window_once():
    layout = plan(300, 260, 64, 0.5, 128)
    batches = layout.batches(layout.blocks(), 3)
    assert all(0 < len(offsets) <= 3 for _, offsets in batches)
    offsets = [o for _, chunk in batches for o in chunk]
    assert sorted(offsets) == sorted(o for owned in layout.owned.values() for o in owned)
    assert all((row // 128, col // 128) == block for block, chunk in batches for row, col in chunk)


def test_journal_resumes_finished_blocks_and_restarts_on_another_fingerprint(tmp_path):
    order = [block_id(0, 0), block_id(0, 1)]
    staging = Staging(tmp_path / ".detect-partial")
    assert staging.open("fp", None, order)[0] == []
    staging.finish_block(order[0], {"classes": np.ones((1, 2, 2), np.uint8)})
    done, run_id = Staging(staging.root).open("fp", None, order)
    assert done == order[:1] and run_id == staging.state["run_id"]
    assert Staging(staging.root).open("fp", "mine", order) == (order[:1], "mine")
    assert Staging(staging.root).open("other", None, order)[0] == []
    assert not list(staging.root.rglob("*.partial*"))  # written atomically, nothing left behind


def test_carries_come_back_from_disk_and_are_forgotten(tmp_path):
    staging = Staging(tmp_path / ".detect-partial")
    staging.open("fp", None, [block_id(0, 0)])
    Carries(staging).put("right", 0, 0, np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    carries = Carries(staging)  # as after a restart: nothing in memory
    assert carries.get("right", 0, 0).sum() == 15 and carries.get("right", 0, -1) is None
    carries.forget("right", 0, 0)
    assert Carries(staging).get("right", 0, 0) is None
