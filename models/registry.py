"""Model registry: build a network by name from a plain config dict.

Why: configs (YAML, validated elsewhere) name a model as a string; one place maps that string to a class,
checks the options before any weights are allocated, and gives a clear error that lists what exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from models.weights import read_state_dict

_REGISTRY: dict[str, type[nn.Module]] = {}

M = TypeVar("M", bound=type[nn.Module])


def normalise_name(name: str) -> str:
    """Canonical registry key: lower case, '-' and spaces as '_' (so "FC-Siam-diff" finds "fc_siam_diff")."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a model to the registry under ``name``."""

    def deco(cls: M) -> M:
        key = normalise_name(name)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"model name {key!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; ValueError listing the available names if unknown."""
    key = normalise_name(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return _REGISTRY[key]


def check_options(cls: type, cfg: dict[str, Any], what: str) -> None:
    """Raise ValueError naming the bad keys (and the accepted ones) if ``cfg`` does not fit ``cls``."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(cfg) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) for {what}: {', '.join(unknown)}; accepted: {', '.join(accepted)}")


def load_state(module: nn.Module, path: str | Path) -> None:
    """Load a whole-module state dict from a local file (raw state dict or a dict with a "model" entry).

    A missing file is an error (nothing is ever downloaded). A DataParallel/DDP ``module.`` prefix is removed.
    The load is strict: a checkpoint for another architecture fails loudly instead of half-loading.
    """
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {type(module).__name__}: {exc}") from exc


def build(name: str, *, weights: str | Path | None = None, **cfg: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword options ``cfg``.

    ``weights``: optional local path of a whole-model state dict to load after construction.
    Raises ValueError for an unknown name (listing the available ones) or an unknown option.
    """
    cls = model_class(name)
    check_options(cls, cfg, f"model {normalise_name(name)!r}")
    model = cls(**cfg)
    if weights is not None:
        load_state(model, weights)
    return model
