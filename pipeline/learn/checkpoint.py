"""Checkpoints: everything needed to resume training exactly or to run inference.

Saved atomically (temporary name, then rename) and loaded with ``weights_only=True``: a checkpoint
holds tensors, numbers, strings and containers only, so loading one runs no code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path, remove_abandoned_partials

# What resuming and detection read; a checkpoint re-saved without one of them is refused at load.
REQUIRED = ("model", "model_name", "model_options", "normalization", "epoch", "config", "inputs", "bands")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically; partial checkpoints left by killed runs are removed first.

    Args:
        path: the ``.pt`` file to write; its folder is created if missing.
        payload: the checkpoint (tensors, numbers, strings and containers only).

    Returns:
        ``path``.

    Raises:
        OutputError: naming ``path``, when the disk is full or the folder is read-only or not writable
            (the previous checkpoint is kept as it was).
    """
    remove_abandoned_partials(path)
    with atomic_path(path) as partial:
        torch.save(payload, partial)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: loading runs no code).

    Args:
        path: the ``.pt`` file.
        map_location: where tensors are loaded (``torch.load``'s ``map_location``).

    Returns:
        The payload, holding at least the ``REQUIRED`` keys.

    Raises:
        InputError: naming the file, when it is missing, unreadable or unsafe, or not a changeflow
            checkpoint (a required key is missing).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise InputError(path, f"not a readable changeflow checkpoint ({type(exc).__name__}: {exc})") from None
    missing = [key for key in REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise InputError(path, f"not a changeflow checkpoint (missing {', '.join(missing)})")
    return payload


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.

    Raises:
        OSError: when the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
