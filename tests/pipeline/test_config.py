"""Config validation: unknown keys and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import DetectConfig, PrepareConfig, RunConfig, TrainConfig, load_config
from pipeline.errors import ConfigError


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, "inbox: in\ntiling:\n  size: 512\n  strid: 256\n")
    with pytest.raises(ConfigError, match=r"run.yaml: invalid config: unknown config key 'tiling.strid'"):
        load_config(path)


def test_bad_value_is_named(tmp_path):
    path = _write(tmp_path, "inbox: in\nsplit:\n  train: 0.9\n")
    with pytest.raises(ConfigError, match="split ratios must sum to 1"):
        load_config(path)
    path = _write(tmp_path, "inbox: in\nmin_overlap: 1.5\n")
    with pytest.raises(ConfigError, match="'min_overlap'"):
        load_config(path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    path = _write(tmp_path, "scenes:\n  - {path: a.tif, role: A}\n")
    config = load_config(path)
    assert isinstance(config, PrepareConfig)
    assert config.scenes[0].path == tmp_path / "a.tif"
    assert config.tiling.size == 512 and config.tiling.stride == 256 and config.min_overlap == 0.8


def test_reference_config_lists_the_defaults():
    raw = yaml.safe_load((Path(__file__).parents[2] / "configs" / "prepare.yaml").read_text())
    assert PrepareConfig.model_validate({**raw, "inbox": "x"}) == PrepareConfig(inbox="x")


CONFIG_MODELS = {"prepare": PrepareConfig, "train": TrainConfig, "detect": DetectConfig, "demo": RunConfig}


CONFIGS = Path(__file__).parents[2] / "configs"


# configs/prepare.yaml lists the defaults without any input (tested above).
@pytest.mark.parametrize(
    "path", sorted(set(CONFIGS.rglob("*.yaml")) - {CONFIGS / "prepare.yaml"}), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_shipped_config_validates(path):
    kind = next(k for k in CONFIG_MODELS if path.stem.startswith(k))
    config = load_config(path, CONFIG_MODELS[kind])
    assert isinstance(config, CONFIG_MODELS[kind])
