"""Every path of every config resolves against the config file's folder, whatever the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import DetectConfig, IngestConfig, PrepareConfig, RunConfig, SceneEntry, TrainConfig, load_config
from pipeline.errors import ConfigError


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """The config lives in tmp_path/cfg; the command runs from tmp_path/elsewhere."""
    (tmp_path / "cfg").mkdir()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path / "cfg"


def _write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_run_train_text_paths_resolve_next_to_the_run_config_not_in_out(elsewhere, tmp_path):
    config = load_config(_write(elsewhere / "run.yaml", {
        "prepare": {"scene_list": "scenes.yaml", "products": {"dem": "dem/dem.tif", "cache": "cache"}},
        "train": {"model": "segchange_r1", "text": {"source": "file", "prompts": "prompts.yaml",
                                                     "embeddings": "emb/prompts.pt"}},
        "detect": {"threshold": 0.4},
    }), RunConfig)
    out = tmp_path / "out"
    train = config.train_config(out / "prepared")
    assert train.text.prompts == elsewhere / "prompts.yaml"
    assert train.text.embeddings == elsewhere / "emb" / "prompts.pt"
    assert train.data == out / "prepared"
    assert config.prepare.scene_list == elsewhere / "scenes.yaml"
    assert config.prepare.products.dem == elsewhere / "dem" / "dem.tif"
    assert config.prepare.products.cache == elsewhere / "cache"

    # `changeflow run` writes the stage configs into OUT and reads them back: the paths must survive that.
    out.mkdir()
    stage = _write(out / "train.yaml", train.model_dump(mode="json"))
    reread = load_config(stage, TrainConfig)
    assert reread.text.prompts == elsewhere / "prompts.yaml"
    assert reread.text.embeddings == elsewhere / "emb" / "prompts.pt"


def test_run_detect_section_keeps_the_paths_the_run_fills_in(elsewhere, tmp_path):
    config = load_config(_write(elsewhere / "run.yaml", {"prepare": {"inbox": "inbox"}, "detect": {"tta": True}}),
                         RunConfig)
    detect = config.detect_config(tmp_path / "out" / "prepared", tmp_path / "out" / "model" / "best.pt")
    assert detect.prepared == tmp_path / "out" / "prepared"
    assert detect.checkpoint == tmp_path / "out" / "model" / "best.pt"
    assert detect.tta is True
    assert config.prepare.inbox == elsewhere / "inbox"


def test_ingest_prepare_products_paths_resolve_next_to_the_ingest_config(elsewhere, tmp_path):
    config = load_config(_write(elsewhere / "ingest.yaml", {
        "inbox": "inbox", "workspace": "ws", "checkpoint": "model/best.pt",
        "prepare": {"products": {"dem": "dem.tif", "cache": "product-cache"}, "tiling": {"size": 64, "stride": 64}},
        "detect": {"threshold": 0.3},
    }), IngestConfig)
    assert (config.inbox, config.workspace, config.checkpoint) == (
        elsewhere / "inbox", elsewhere / "ws", elsewhere / "model" / "best.pt")
    scene = SceneEntry(path=tmp_path / "claims" / "x_A.tif", role="A", group="x")
    prepare = config.prepare_config([scene])
    assert prepare.products.dem == elsewhere / "dem.tif"
    assert prepare.products.cache == elsewhere / "product-cache"
    assert prepare.scenes[0].path == tmp_path / "claims" / "x_A.tif"
    detect = config.detect_config()
    assert (detect.prepared, detect.checkpoint) == (elsewhere / "ws" / "prepared", elsewhere / "model" / "best.pt")


def test_ingest_default_product_cache_is_in_the_resolved_workspace(elsewhere, tmp_path):
    config = load_config(_write(elsewhere / "ingest.yaml", {
        "inbox": "inbox", "workspace": "ws", "checkpoint": "best.pt", "prepare": {"products": {"dem": "dem.tif"}},
    }), IngestConfig)
    prepare = config.prepare_config([SceneEntry(path=tmp_path / "x_A.tif", role="A", group="x")])
    assert prepare.products.cache == elsewhere / "ws" / "cache"
    assert prepare.products.dem == elsewhere / "dem.tif"


def test_every_path_of_prepare_train_and_detect_configs_resolves(elsewhere, tmp_path):
    prepare = load_config(_write(elsewhere / "prepare.yaml", {
        "scenes": [{"path": "a.tif", "role": "A", "group": "g"}, {"path": str(tmp_path / "b.tif"), "role": "B",
                                                                   "group": "g"}],
        "products": {"dem": "dem.tif"},
    }), PrepareConfig)
    assert [s.path for s in prepare.scenes] == [elsewhere / "a.tif", tmp_path / "b.tif"]
    assert prepare.products.dem == elsewhere / "dem.tif"
    assert prepare.products.cache is None  # unset stays unset (prepare's default is OUT/cache)
    train = load_config(_write(elsewhere / "train.yaml", {"data": "prepared", "text": {"prompt": "new buildings"}}),
                        TrainConfig)
    assert train.data == elsewhere / "prepared"
    assert train.text.prompts is None
    detect = load_config(_write(elsewhere / "detect.yaml", {"prepared": "p", "checkpoint": "m/best.pt"}), DetectConfig)
    assert (detect.prepared, detect.checkpoint) == (elsewhere / "p", elsewhere / "m" / "best.pt")


def test_a_bad_value_in_a_section_is_still_reported_by_key(elsewhere):
    config = load_config(_write(elsewhere / "ingest.yaml", {
        "inbox": "inbox", "workspace": "ws", "checkpoint": "best.pt", "prepare": {"products": {"dem": 5}},
    }), IngestConfig)
    with pytest.raises(ConfigError, match=r"^prepare: invalid config: 'products.dem'"):
        config.prepare_config([SceneEntry(path=elsewhere / "x_A.tif", role="A", group="x")])
