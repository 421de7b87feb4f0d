"""Tests of pipeline.io.raster: GDAL cache bound."""

from __future__ import annotations

from rasterio._env import get_gdal_config

from pipeline.io.raster import bounded_gdal_cache


def test_bounded_gdal_cache_is_in_megabytes(monkeypatch) -> None:
    # rasterio passes an integer to GDAL as bytes; 64 must mean 64 MB, not a 64-byte cache.
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with bounded_gdal_cache(64):
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * 1024 * 1024


def test_environment_cachemax_wins(monkeypatch) -> None:
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    with bounded_gdal_cache(64):
        assert get_gdal_config("GDAL_CACHEMAX") != 64 * 1024 * 1024
