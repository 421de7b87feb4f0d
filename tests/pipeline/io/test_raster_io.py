"""Tests of pipeline.io.raster: GDAL cache bound."""

from __future__ import annotations

import os
import subprocess
import sys

import rasterio.env
from rasterio._env import get_gdal_config

from pipeline.io.raster import GDAL_CACHE_MB, bounded_gdal_cache

MB = 1024 * 1024


def test_bounded_gdal_cache_defaults_to_gdal_cache_mb_in_bytes(monkeypatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with bounded_gdal_cache():
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == GDAL_CACHE_MB * MB
        assert get_gdal_config("GDAL_CACHEMAX") == GDAL_CACHE_MB * MB


def test_bounded_gdal_cache_is_in_megabytes(monkeypatch) -> None:
    # rasterio passes an integer to GDAL as bytes; 64 must mean 64 MB, not a 64-byte cache.
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with bounded_gdal_cache(64):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 64 * MB
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * MB


def test_bounded_gdal_cache_ends_with_its_block(monkeypatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with bounded_gdal_cache(3):
        assert get_gdal_config("GDAL_CACHEMAX") == 3 * MB
    assert get_gdal_config("GDAL_CACHEMAX") != 3 * MB


def test_environment_cachemax_wins(monkeypatch) -> None:
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    with bounded_gdal_cache(64):
        assert "GDAL_CACHEMAX" not in rasterio.env.getenv()
        assert get_gdal_config("GDAL_CACHEMAX") != 64 * MB


def test_environment_cachemax_is_the_cache_gdal_uses() -> None:
    # GDAL reads the variable once, at its first use: check in a fresh process. A small number is megabytes.
    probe = (
        "from rasterio._env import get_gdal_config\n"
        "from pipeline.io.raster import bounded_gdal_cache\n"
        "with bounded_gdal_cache(64):\n"
        "    print(get_gdal_config('GDAL_CACHEMAX'))\n"
    )
    env = {**os.environ, "GDAL_CACHEMAX": "512"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == 512 * MB
