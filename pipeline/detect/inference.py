"""The model side of detection: rebuilt from its checkpoint, prompted, and run over batches of windows.

A process keeps the models it rebuilt (:func:`cached_model`, keyed by the checkpoint's SHA-256 and the
device), so a Dask worker or a notebook that detects group after group loads a checkpoint once; a task
graph then carries only the checkpoint's path, never the weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from pipeline.config import TextConfig
from pipeline.errors import ChangeflowError, ConfigError, InputError
from pipeline.learn.checkpoint import load_checkpoint

MAX_TRANSITION_CLASSES = 15  # 1 + K·from + to must fit uint8 below the nodata value
CACHED_MODELS = 2  # models kept per process: a worker switching checkpoints does not pile them up

TextTensors = dict[str, torch.Tensor]


def build_model(checkpoint_path: Path, checkpoint: dict, device: torch.device) -> nn.Module:
    """The checkpoint's model with its weights, on ``device``, in eval mode.

    Args:
        checkpoint_path: the checkpoint file, named in errors.
        checkpoint: its loaded payload.
        device: where the model runs.

    Returns:
        The model.

    Raises:
        InputError: if the model cannot be rebuilt or the weights do not fit it.
    """
    name = checkpoint["model_name"]
    try:
        model = models.build(name, **checkpoint["model_options"])
    except (TypeError, ValueError) as exc:
        raise InputError(checkpoint_path, f"cannot rebuild model '{name}': {exc}") from None
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise InputError(checkpoint_path, f"weights do not fit model '{name}': {exc}") from None
    return model.to(device).eval()


class _ModelCache:
    """The last few (checkpoint payload without weights, model) rebuilt in this process, newest last."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loads = 0  # checkpoints loaded and rebuilt by this process (observable on cluster workers)
        self._entries: OrderedDict[tuple[str, str], tuple[dict[str, Any], nn.Module]] = OrderedDict()
        self._lock = threading.Lock()  # a worker with several threads loads a checkpoint once

    def get(self, path: Path, sha256: str, device: torch.device) -> tuple[dict[str, Any], nn.Module]:
        key = (sha256, str(device))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            payload = load_checkpoint(path)
            model = build_model(path, payload, device)
            self.loads += 1
            self._entries[key] = ({k: v for k, v in payload.items() if k != "model"}, model)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return self._entries[key]


_MODELS = _ModelCache(CACHED_MODELS)


def cached_model(path: Path, sha256: str, device: torch.device) -> tuple[dict[str, Any], nn.Module]:
    """A checkpoint's payload (without its weights) and model, loaded once per process and device.

    Args:
        path: the checkpoint file, read on the first call for its hash and device.
        sha256: the file's SHA-256 (:func:`~pipeline.learn.checkpoint.file_sha256`): a replaced file
            with the same path is loaded again.
        device: where the model runs.

    Returns:
        The payload without the ``model`` weights, and the model in eval mode. Callers must not change
        the model (it is shared by later calls).

    Raises:
        InputError: naming the file, when it is missing, unreadable or its weights do not fit the model.
    """
    return _MODELS.get(Path(path), sha256, device)


def model_loads() -> int:
    """How many checkpoints this process has loaded and rebuilt (cache misses of :func:`cached_model`).

    Returns:
        The count since the process started.
    """
    return _MODELS.loads


def semantic_classes(checkpoint_path: Path, checkpoint: dict) -> int:
    """The number of land-cover classes of a semantic change checkpoint (0 for binary change).

    Args:
        checkpoint_path: the checkpoint file, named in errors.
        checkpoint: its loaded payload.

    Returns:
        K, the classes per date.

    Raises:
        InputError: if the from→to transition codes would not fit a uint8 raster.
    """
    classes = int(checkpoint.get("semantic_classes") or 0)
    if classes > MAX_TRANSITION_CLASSES:
        raise InputError(checkpoint_path,
                         f"has {classes} semantic classes; detection handles up to {MAX_TRANSITION_CLASSES}")
    return classes


def prompt_embedding(
    checkpoint_path: Path, checkpoint: dict, group: str, prompt: str | None, device: torch.device, model: nn.Module
) -> tuple[TextTensors | None, str | None]:
    """Prompt embedding of a text-guided model for one group (batch of 1) and the prompt used.

    The checkpoint's training text config says which encoder; ``prompt`` overrides its prompt table
    (looked up by group name, else its default prompt).

    Args:
        checkpoint_path: the checkpoint file (its folder holds the prompt cache).
        checkpoint: its loaded payload.
        group: the group name, the key of the prompt table.
        prompt: a prompt for this run, or None for the checkpoint's.
        device: where the model runs.
        model: the rebuilt model.

    Returns:
        ({"text", "text_mask"} tensors, the prompt), or (None, None) for a model without text.

    Raises:
        ConfigError: if a prompt is given for a model without text.
        InputError: if the prompt cannot be embedded.
    """
    text = (checkpoint.get("config") or {}).get("text")
    if not getattr(model, "text_conditioned", False) or not text or text.get("source") == "none":
        if prompt is not None:
            raise ConfigError(f"a prompt was given but {checkpoint_path.name} is not a text-guided checkpoint")
        return None, None
    from pipeline.learn.prompts import embeddings_from_config  # the text extra only when text is used

    config = TextConfig.model_validate(text)
    if prompt is not None:
        config = config.model_copy(update={"prompt": prompt, "prompts": None})
    try:
        embeddings = embeddings_from_config(config, checkpoint_path.parent / "prompt_cache", model.text_dim)
        used = embeddings.prompt_for(group, group)
        values, mask = embeddings.lookup(group, group)
    except (ValueError, OSError) as exc:
        raise InputError(checkpoint_path, f"cannot embed the prompt: {exc}") from None
    tensors = {"text": torch.from_numpy(values)[None].to(device), "text_mask": torch.from_numpy(mask)[None].to(device)}
    return tensors, used


def predict(
    model: nn.Module, t1: torch.Tensor, t2: torch.Tensor, tta: bool, text: TextTensors | None = None
) -> torch.Tensor:
    """Probabilities of a batch of windows, averaged over the identity and h / v / hv flips with TTA.

    Args:
        model: a change model returning ``{"logits": (N, 2, h, w), ...}``.
        t1: normalised t1 windows (N, C1, h, w).
        t2: normalised t2 windows (N, C2, h, w).
        tta: also run the three flips and average.
        text: prompt embeddings (batch of 1), broadcast over the batch.

    Returns:
        (N, 1 + 2K, h, w): channel 0 is the change probability; semantic change models (K classes)
        add the class posteriors at t1 (channels 1..K) and t2 (K+1..2K).

    Raises:
        ChangeflowError: if the model has other than two change classes.
    """
    flips: list[tuple[int, ...]] = [()] + ([(-1,), (-2,), (-2, -1)] if tta else [])
    extra = {}
    if text is not None:
        extra = {key: value.expand(t1.shape[0], *value.shape[1:]) for key, value in text.items()}
    total = None
    for dims in flips:
        a, b = (t1.flip(dims), t2.flip(dims)) if dims else (t1, t2)
        outputs = model(a, b, **extra)
        logits = outputs["logits"].float()
        if logits.shape[1] != 2:
            raise ChangeflowError(f"model returns {logits.shape[1]} classes; detection handles binary change (2)")
        parts = [torch.softmax(logits, dim=1)[:, 1:]]
        if "semantic_t1" in outputs:
            parts += [torch.softmax(outputs[key].float(), dim=1) for key in ("semantic_t1", "semantic_t2")]
        p = torch.cat(parts, dim=1)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(flips)
