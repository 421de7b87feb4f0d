"""Shared fixtures of the product-reader tests: one procedural ground, products written once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import ProductsConfig
from tests.fixtures.products import Scenery, write_gf2_product, write_gf3_product, write_s2_product


@pytest.fixture(scope="session")
def scenery() -> Scenery:
    return Scenery(size_m=3200.0, seed=3)


@pytest.fixture(scope="session")
def delivered(tmp_path_factory, scenery) -> Path:
    """Pristine products (read-only by convention): copy before changing one."""
    root = tmp_path_factory.mktemp("delivered")
    write_gf2_product(root / "gf2", scenery)
    write_gf3_product(root / "gf3", scenery)
    write_gf3_product(root / "gf3slc", scenery, slc=True, size=200, polarisations=("VV",))
    write_s2_product(root / "s2", scenery, cloud_box=(40, 60, 30, 40))
    return root


def only(folder: Path) -> Path:
    (item,) = sorted(folder.iterdir())
    return item


@pytest.fixture
def copy_of(delivered, tmp_path):
    """``copy_of('gf2')``: a writable copy of a delivered product (folder)."""

    copies = []

    def make(kind: str) -> Path:
        source = only(delivered / kind)
        copies.append(kind)
        target = tmp_path / f"in{len(copies)}" / source.name
        shutil.copytree(source, target)
        return target

    return make


@pytest.fixture
def settings(tmp_path) -> ProductsConfig:
    return ProductsConfig(cache=tmp_path / "cache")


@pytest.fixture
def pristine(delivered):
    """``pristine('gf2')``: the delivered product's path (do not modify it)."""
    return lambda kind: only(delivered / kind)
