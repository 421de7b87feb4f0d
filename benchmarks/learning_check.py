"""Does training learn for real? Train on one spatial half of a real scene, test on the other.

For each scene of ../shared/data named on the command line, the left half (minus a gap) becomes
train (top 80 %) and val (bottom 20 %), the right half becomes test, written as a LEVIR-style tile
folder and trained with `pipeline.learn.train.train`. The test half is also scored with two trivial
baselines: "everything changed" and an unsupervised difference + Otsu threshold.

    python benchmarks/learning_check.py --scenes levir shuguang taizhou --epochs 30 --device cuda
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from skimage.filters import threshold_otsu

from pipeline.config import TrainConfig
from pipeline.learn.metrics import as_floats, change_metrics
from pipeline.learn.train import train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GAP = 16


@dataclass(frozen=True)
class Scene:
    name: str
    t1: np.ndarray  # (bands, H, W)
    t2: np.ndarray
    label: np.ndarray  # (H, W) 0 / 1 / 255
    modalities: tuple[str, str]


def _read(path: Path, bands: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            data = dataset.read()
    return data[:bands] if bands else data


def load_scene(name: str, data: Path) -> Scene:
    if name == "levir":
        root = data / "levir-cd-samples" / "full_tile"
        label = (_read(root / "label" / "test_101.png")[0] > 127).astype(np.uint8)
        return Scene(name, _read(root / "A" / "test_101.png", 3), _read(root / "B" / "test_101.png", 3), label, ("optical", "optical"))
    if name == "shuguang":
        root = data / "hcd-shuguang"
        label = (_read(root / "shuguang_gt.bmp")[0] > 127).astype(np.uint8)
        return Scene(name, _read(root / "shuguang_1.bmp", 1), _read(root / "shuguang_2.bmp", 3), label, ("sar", "optical"))
    if name == "taizhou":
        root = data / "landsat-taizhou-nanjing" / "Taizhou"
        changed = _read(root / "change.bmp")[0] > 127
        unchanged = _read(root / "unchanged.bmp")[0] > 127
        label = np.full(changed.shape, 255, np.uint8)
        label[unchanged] = 0
        label[changed] = 1
        return Scene(name, _read(root / "2000TM"), _read(root / "2003TM"), label, ("optical", "optical"))
    raise SystemExit(f"unknown scene '{name}'")


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2],
                       count=data.shape[0], dtype=data.dtype) as dst:
        dst.write(data)


def _windows(x0: int, x1: int, y0: int, y1: int, size: int, stride: int):
    def axis(start: int, stop: int) -> list[int]:
        if stop - start < size:
            return []
        positions = list(range(start, stop - size + 1, stride))
        return positions if positions[-1] == stop - size else positions + [stop - size]

    for row in axis(y0, y1):
        for col in axis(x0, x1):
            yield row, col


def write_halves(scene: Scene, root: Path, size: int) -> None:
    """Left half → train (top 80 %, at least one tile left for val) and val; right half → test."""
    _, height, width = scene.t1.shape
    middle = width // 2
    val_top = min(int(height * 0.8), height - size)
    regions = {
        "train": (0, middle - GAP, 0, val_top - GAP, size // 2),
        "val": (0, middle - GAP, val_top, height, size),
        "test": (middle + GAP, width, 0, height, size),
    }
    for split, (x0, x1, y0, y1, stride) in regions.items():
        for row, col in _windows(x0, x1, y0, y1, size, stride):
            window = (slice(row, row + size), slice(col, col + size))
            name = f"{scene.name}_x{col}_y{row}.tif"
            _write(root / split / "A" / name, scene.t1[(slice(None), *window)])
            _write(root / split / "B" / name, scene.t2[(slice(None), *window)])
            _write(root / split / "label" / name, scene.label[window][None])


def _metrics(probability: np.ndarray, label: np.ndarray) -> dict[str, float]:
    metrics = change_metrics()
    metrics.update(torch.from_numpy(probability.astype(np.float32)), torch.from_numpy(label.astype(np.int64)))
    return as_floats(metrics.compute())


def baselines(scene: Scene) -> dict[str, dict[str, float]]:
    """Trivial predictions on the test half: all changed, and |standardised difference| + Otsu."""
    middle = scene.t1.shape[2] // 2 + GAP
    label = scene.label[:, middle:]

    def standardise(image: np.ndarray) -> np.ndarray:
        image = image[:, :, middle:].astype(np.float64).mean(axis=0)
        return (image - image.mean()) / (image.std() + 1e-9)

    difference = np.abs(standardise(scene.t2) - standardise(scene.t1))
    otsu = (difference > threshold_otsu(difference)).astype(np.float32)
    return {
        "all_change": _metrics(np.ones_like(label, np.float32), label),
        "difference_otsu": _metrics(otsu, label),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["levir", "shuguang", "taizhou"])
    parser.add_argument("--models", nargs="+", default=["fc_siam_diff"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("learning-check"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="The shared data folder.")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"real data folder {args.data} is missing")
    results = {}
    for name in args.scenes:
        scene = load_scene(name, args.data)
        folder = args.out / name / "tiles"
        write_halves(scene, folder, args.size)
        results[name] = {"baselines": baselines(scene)}
        for model in args.models:
            config = TrainConfig(
                data=folder, model=model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                modalities={"A": scene.modalities[0], "B": scene.modalities[1]}, device=args.device,
                folder_labels="change01",
                workers=2, seed=0,
            )
            results[name][model] = train(config, args.out / name / model)["test"]
        print(json.dumps({name: results[name]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
