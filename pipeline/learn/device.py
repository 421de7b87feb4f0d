"""The torch device a run uses, from the config's ``device`` setting."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """The device for ``choice``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Args:
        choice: the configured device; ``auto`` takes CUDA when available, else the CPU.
        local_rank: the process's GPU under torchrun (used for ``auto`` and a bare ``cuda``).

    Returns:
        The device.

    Raises:
        ConfigError: a CUDA device is asked for but none is available.
    """
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    elif choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{choice}' requested but no CUDA device is available")
    if choice == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(choice)
