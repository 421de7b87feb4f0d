"""Reading a local weights file into a plain state dict, the same way for every model and encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

WRAPPER_KEYS = ("model", "state_dict")  # a changeflow checkpoint / a Lightning or timm-style file


def read_state_dict(path: str | Path, *, what: str = "weights") -> dict[str, Tensor]:
    """The state dict stored in ``path``, unwrapped and without a DataParallel/DDP ``module.`` prefix.

    A file holding a dict with a dict-valued ``"model"`` or ``"state_dict"`` entry is unwrapped to that
    entry; anything else must itself be a state dict. Nothing is ever downloaded.

    Args:
        path: a local ``.pt`` / ``.pth`` file.
        what: how the file is named in errors (e.g. ``"encoder weights"``).

    Returns:
        Parameter and buffer names mapped to tensors.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}
