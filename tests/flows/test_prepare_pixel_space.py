"""Non-georeferenced benchmark pairs (BMP, MATLAB) give pixel-space tiles when the config says so."""

from __future__ import annotations

import warnings

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.config import PrepareConfig
from pipeline.prepare.catalog import build_catalog
from pipeline.prepare.group_build import process_group
from pipeline.prepare.overlap import build_groups


def _prepare(config: PrepareConfig, out):
    scenes, failures = build_catalog(config.scenes, config)
    assert failures == []
    groups, unpaired, crs = build_groups(scenes, config.min_overlap)
    assert crs is None and unpaired == {}
    return process_group(groups[0], crs, config, out)


def test_matlab_pair_gives_pixel_space_tiles(shared_data, tmp_path):
    mat = shared_data / "hcd-img17" / "#4-Img17.mat"
    config = PrepareConfig(
        georeferenced=False,
        scenes=[
            {"path": f"{mat}:image_t1", "role": "A", "group": "img17", "id": "t1"},
            {"path": f"{mat}:image_t2", "role": "C", "group": "img17", "id": "t2"},
            {"path": f"{mat}:Ref_gt", "role": "label", "group": "img17", "id": "gt"},
        ],
        tiling={"size": 256, "stride": 128},
        coregistration={"enabled": False},
    )
    outcome = _prepare(config, tmp_path)
    # 990 rows x 554 columns: 7 rows x 4 columns of windows, the last ones flush with the edges.
    assert len(outcome.tiles) == 28
    assert {(t.col_off, t.row_off) for t in outcome.tiles} >= {(298, 734), (0, 0)}
    label_tile = tmp_path / "groups" / "img17" / "tiles" / "label" / "img17_x298_y734.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(label_tile) as tile:
            assert tile.crs is None and tile.shape == (256, 256)
            assert set(np.unique(tile.read(1))) <= {0, 1}
    total_change = sum(t.change_pixels for t in outcome.tiles)
    assert total_change > 0


def test_bmp_sar_optical_pair_is_coregistered_in_pixel_space(shared_data, tmp_path):
    folder = shared_data / "hcd-shuguang"
    config = PrepareConfig(
        georeferenced=False,
        label_encoding="binary255",
        scenes=[
            {"path": folder / "shuguang_2.bmp", "role": "A", "group": "sg", "id": "optical"},
            {"path": folder / "shuguang_1.bmp", "role": "B", "group": "sg", "id": "sar", "sar": True},
            {"path": folder / "shuguang_gt.bmp", "role": "label", "group": "sg", "id": "gt"},
        ],
        tiling={"size": 256, "stride": 128},
        coregistration={"window": 128, "grid_spacing": 64},
    )
    outcome = _prepare(config, tmp_path)
    record = outcome.coregistration[0]
    assert record["method"] == "structure" and record["shift_m"] is None
    # Structure matching finds consistent tie points on real SAR vs optical imagery.
    assert record["accepted"] and record["model"] == "affine"
    assert record["tiepoints_kept"] >= config.coregistration.min_tiepoints
    change = sum(t.change_pixels for t in outcome.tiles) / sum(t.labelled_pixels for t in outcome.tiles)
    assert 0.01 < change < 0.15  # about 4.6 % of the scene is changed
