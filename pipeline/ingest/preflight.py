"""Refuse an ingest configuration that would fail every group, before a pass claims anything."""

from __future__ import annotations

from pipeline.config import IngestConfig, Role, SceneEntry
from pipeline.errors import InputError
from pipeline.io.write_errors import folder_or_creatable
from pipeline.learn.checkpoint import load_checkpoint


def check_ingest_config(config: IngestConfig) -> None:
    """Check what every group of a pass depends on: the inbox, the prepare and detect settings, the checkpoint.

    A label-free ``method`` replaces the checkpoint (exactly one of the two is required).

    A problem here would fail each group in turn and use up its attempts, so the pass is refused
    instead and the inbox is left as it is.

    Args:
        config: the validated ingest config.

    Raises:
        InputError: the inbox is not a folder, the workspace (or a path above it) is a file, or the checkpoint is missing, unreadable or not a
            changeflow checkpoint (the message names the file).
        ConfigError: a ``prepare`` or ``detect`` key is unknown or has a bad value, or not exactly one of
            ``checkpoint`` and ``method`` is given.
    """
    if not config.inbox.is_dir():
        raise InputError(config.inbox, "inbox folder not found")
    folder_or_creatable(config.workspace, "workspace")
    # prepare settings need a scene to validate against; no file is read here
    config.prepare_config([SceneEntry(path=config.inbox / "preflight_A.tif", role=Role.A)])
    detect = config.detect_config()
    if detect.checkpoint is not None:
        load_checkpoint(detect.checkpoint)
