"""Fixtures of the review tests: a small prepared group with its detection, its store and the app."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from pipeline.review.app import TOKEN_HEADER, create_app
from pipeline.review.candidates import open_store
from pipeline.review.group import open_review_group
from pipeline.review.tiles import TileSource
from tests.pipeline.review.scene import Scene, write_scene


@pytest.fixture(scope="session")
def scene_template(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("review-scene"))


@pytest.fixture
def scene(scene_template, tmp_path):
    """A fresh copy of the scene per test (tests may break it)."""
    root = scene_template.prepared.parent
    shutil.copytree(root, tmp_path / "scene")
    return Scene(tmp_path / "scene" / "prepared", tmp_path / "scene" / "detect", scene_template.group)


@pytest.fixture
def group(scene):
    return open_review_group(scene.prepared, scene.detections, scene.group)


@pytest.fixture
def store(group, tmp_path):
    return open_store(group, tmp_path / "review")


@pytest.fixture
def client(group, store):
    app = create_app(group, store, TileSource(group), token="secret-token", reviewer="ann")
    with TestClient(app) as test_client:
        yield test_client


WRITE = {TOKEN_HEADER: "secret-token"}
