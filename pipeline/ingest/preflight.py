"""Refuse an ingest configuration that would fail every group, before a pass claims anything."""

from __future__ import annotations

from pipeline.config import IngestConfig, Role, SceneEntry
from pipeline.errors import InputError
from pipeline.learn.checkpoint import load_checkpoint


def check_ingest_config(config: IngestConfig) -> None:
    """Check what every group of a pass depends on: the inbox, the prepare and detect settings, the checkpoint.

    A problem here would fail each group in turn and use up its attempts, so the pass is refused
    instead and the inbox is left as it is.

    Args:
        config: the validated ingest config.

    Raises:
        InputError: the inbox is not a folder, or the checkpoint is missing, unreadable or not a
            changeflow checkpoint (the message names the file).
        ConfigError: a ``prepare`` or ``detect`` key is unknown or has a bad value.
    """
    if not config.inbox.is_dir():
        raise InputError(config.inbox, "inbox folder not found")
    # prepare settings need a scene to validate against; no file is read here
    config.prepare_config([SceneEntry(path=config.inbox / "preflight_A.tif", role=Role.A)])
    config.detect_config()
    load_checkpoint(config.checkpoint)
