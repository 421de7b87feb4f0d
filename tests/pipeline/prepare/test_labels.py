"""Change labels: value counts streamed over blocks, identical bands, encodings resolved and checked."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import PrepareConfig, SceneEntry
from pipeline.errors import InputError
from pipeline.prepare import labels
from pipeline.prepare.labels import (
    LabelSummary,
    change_fraction,
    chunk_windows,
    inspect_label,
    label_values,
    refused_label_groups,
    resolve_encoding,
)
from tests.conftest import write_raster


def mask_0_255(height: int = 40, width: int = 30) -> np.ndarray:
    label = np.zeros((height, width), np.uint8)
    label[5:15, 4:24] = 255  # 200 change pixels
    return label


def test_the_config_default_is_auto_and_explicit_encodings_stay():
    assert PrepareConfig(inbox="x").label_encoding == "auto"
    assert PrepareConfig(inbox="x", label_encoding="binary255").label_encoding == "binary255"
    with pytest.raises(ValueError, match="label_encoding"):
        PrepareConfig(inbox="x", label_encoding="percent")


def test_chunk_windows_cover_the_raster_once_within_the_pixel_budget():
    windows = list(chunk_windows(30, 41, pixels=100))
    assert {(w.col_off, w.width, w.height) for w in windows[:-1]} == {(0, 30, 3)}
    assert windows[-1].row_off == 39 and windows[-1].height == 2
    covered = np.zeros(41, int)
    for w in windows:
        covered[w.row_off : w.row_off + w.height] += 1
    assert (covered == 1).all()
    assert [w.height for w in chunk_windows(500, 3, pixels=100)] == [1, 1, 1]  # a row wider than the budget


def test_values_are_counted_block_by_block(tmp_path, monkeypatch):
    label = mask_0_255()
    label[30:40, 0:3] = 1
    path = write_raster(tmp_path / "label.tif", label)
    reads = []
    original = labels.read_window
    monkeypatch.setattr(labels, "read_window", lambda ds, w: reads.append(w.height) or original(ds, w))
    monkeypatch.setattr(labels, "CHUNK_PIXELS", 300)
    counts, nodata, bands = label_values(path)
    assert dict(counts) == {0: 1200 - 230, 1: 30, 255: 200}
    assert list(counts) == [0, 1, 255]
    assert (nodata, bands) == (0, 1)
    assert reads == [10, 10, 10, 10]  # never the whole 40-row label at once


def test_identical_bands_count_as_one_and_nodata_is_not_counted(tmp_path):
    label = mask_0_255()
    label[0, :] = 7  # the label's nodata value
    path = write_raster(tmp_path / "rgb.tif", np.stack([label] * 3), nodata=7)
    counts, nodata, bands = label_values(path)
    assert dict(counts) == {0: 1200 - 200 - 30, 255: 200}
    assert (nodata, bands) == (30, 3)


def test_a_label_whose_bands_differ_is_refused_naming_the_file(tmp_path):
    label = mask_0_255()
    blue = label.copy()
    blue[20:22, 0:5] = 255  # a colour-coded mask: change marked in one band only
    path = write_raster(tmp_path / "colour.tif", np.stack([label, label, blue]))
    with pytest.raises(InputError) as error:
        label_values(path)
    assert str(error.value) == (
        f"{path}: its 3 bands differ at 10 pixels of rows 0..39; a label needs one band, or identical bands "
        "(e.g. an RGB 0/255 mask)"
    )


@pytest.mark.parametrize(
    ("values", "setting", "expected"),
    [
        ({0, 255}, "auto", "binary255"),
        ({255}, "auto", "binary255"),
        ({0, 1}, "auto", "change01"),
        ({0, 1, 255}, "auto", "change01"),
        ({0}, "auto", "change01"),
        ({0, 1, 2, 128}, "auto", None),
        ({0, 0.5}, "auto", None),
        ({0, 255}, "change01", "change01"),  # an explicit setting is kept (and checked by inspect_label)
        ({0, 3}, "classes", "classes"),
    ],
)
def test_resolve_encoding(values, setting, expected):
    assert resolve_encoding(values, setting) == expected


def test_change_fraction_per_encoding():
    assert change_fraction({0: 90, 255: 10}, "binary255") == pytest.approx(0.1)
    assert change_fraction({0: 60, 100: 20, 200: 20}, "binary255") == pytest.approx(0.2)  # lossy masks: > 127
    assert change_fraction({0: 60, 1: 20, 255: 1000}, "change01") == pytest.approx(0.25)  # 255 is ignore
    assert change_fraction({255: 5}, "change01") is None
    assert change_fraction({0: 5, 3: 2}, "classes") is None


def test_a_0_255_mask_without_setting_reads_as_binary255(tmp_path):
    path = write_raster(tmp_path / "gold.tif", mask_0_255())
    summary = inspect_label(path, "auto")
    assert summary == LabelSummary(path, 1, "auto", "binary255", {0: 1000, 255: 200}, 0, 200 / 1200)
    assert summary.as_json() == {
        "file": str(path), "bands": 1, "label_encoding": "auto", "encoding": "binary255",
        "counts": {"0": 1000, "255": 200}, "nodata_pixels": 0, "change_fraction": 200 / 1200,
    }


def test_values_fitting_no_encoding_are_refused_with_their_counts(tmp_path):
    label = np.zeros((10, 10), np.uint8)
    label[0, :6] = 1
    label[1, :2] = 2
    label[2, :2] = 128
    path = write_raster(tmp_path / "odd.tif", label)
    with pytest.raises(InputError) as error:
        inspect_label(path, "auto")
    assert str(error.value) == (
        f"{path}: label values 0 (90 px), 1 (6 px), 2 (2 px), 128 (2 px) fit no label encoding (label_encoding "
        "'auto' reads 0/255 as binary255 and 0/1/255 as change01); fix the label, or set label_encoding: binary255 "
        "to read values > 127 as change"
    )
    with pytest.raises(InputError) as error:
        inspect_label(path, "change01")
    assert str(error.value) == (
        f"{path}: label values 2 (2 px), 128 (2 px) are outside label_encoding 'change01' (0 no change, 1 change, "
        "255 ignore); fix the label or set label_encoding ('auto' reads 0/255 and 0/1/255 labels)"
    )


def test_many_odd_values_are_listed_in_one_short_line(tmp_path):
    path = write_raster(tmp_path / "jpeg.tif", np.arange(100, dtype=np.uint8).reshape(10, 10))
    with pytest.raises(InputError, match=r"label values 0 \(1 px\), 1 \(1 px\).*7 \(1 px\) and 92 more values fit"):
        inspect_label(path, "auto")


def test_explicit_binary255_thresholds_a_lossy_mask_as_today(tmp_path):
    path = write_raster(tmp_path / "lossy.tif", np.array([[0, 3, 126, 128], [250, 255, 0, 0]], np.uint8))
    summary = inspect_label(path, "binary255")
    assert summary.encoding == "binary255"
    assert summary.change_fraction == pytest.approx(3 / 8)


def test_class_rasters_keep_ids_and_refuse_values_past_uint8(tmp_path):
    classes = np.array([[0, 1, 4, 255]], np.uint16)
    summary = inspect_label(write_raster(tmp_path / "cls.tif", classes), "classes")
    assert (summary.encoding, summary.counts, summary.change_fraction) == ("classes", {0: 1, 1: 1, 4: 1, 255: 1}, None)
    path = write_raster(tmp_path / "wide.tif", np.array([[0, 300]], np.uint16))
    with pytest.raises(InputError, match=r"wide.tif: label values 300 \(1 px\) are outside .*fix the class raster"):
        inspect_label(path, "classes")


def test_float_labels_count_integral_values_as_ints_and_skip_nan(tmp_path):
    data = np.array([[0.0, 1.0, np.nan, 1.0]], np.float32)
    summary = inspect_label(write_raster(tmp_path / "float.tif", data), "auto")
    assert (summary.encoding, summary.counts, summary.nodata_pixels) == ("change01", {0: 1, 1: 2}, 1)


def test_a_missing_label_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing.tif: file not found"):
        inspect_label(tmp_path / "missing.tif", "auto")



def test_groups_whose_label_the_catalog_refused_are_named(tmp_path):
    entries = [
        SceneEntry(path=tmp_path / "x_label.tif", role="label", group="x"),
        SceneEntry(path=tmp_path / "y_A.tif", role="A", group="y"),
        SceneEntry(path=tmp_path / "loose_label.tif", role="label"),  # grouped by overlap: no group to fail
        SceneEntry(path=tmp_path / "z_cls.tif", role="semantic_t1", group="z"),
    ]
    failures = [(entry, f"{entry.path}: file not found") for entry in entries]
    assert refused_label_groups(failures) == {
        "x": f"label refused: {tmp_path / 'x_label.tif'}: file not found",
        "z": f"label refused: {tmp_path / 'z_cls.tif'}: file not found",
    }
