"""The training flow: one training run holding the GPU slot (:mod:`flows.gpu`).

Multi-GPU DDP training runs the same ``changeflow train`` under torchrun.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.gpu import gpu_slot, uses_gpu
from flows.progress import progress_bar
from pipeline.config import TrainConfig, load_config
from pipeline.learn.train import train


@flow(name="train", log_prints=True)
def train_flow(
    config_path: str, out_dir: str, resume: bool = False, device: str | None = None, progress: bool = False
) -> dict:
    """Train the configured model on a prepared tile index; returns the test metrics."""
    config = load_config(Path(config_path), TrainConfig)
    if device is not None:
        config = TrainConfig.model_validate({**config.model_dump(), "device": device})
    with gpu_slot(uses_gpu(config.device)), progress_bar("training", progress) as advance:
        result = train(config, Path(out_dir), resume=resume, progress=advance)
    print(f"{result['steps']} steps in {result['epochs_run']} epochs (ended by {result['stopped']}); "
          f"best epoch {result['best_epoch']}, val IoU {result['val_iou']:.4f}, test {result['test']}")
    train_labels = result["labels"]["train"]
    print(f"labels used for training: {train_labels['labelled_pixels']} labelled pixels "
          f"({train_labels['change_pixels']} change) in {train_labels['tiles']} tiles")
    return result
