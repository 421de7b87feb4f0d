"""Build the LEVIR-style folders of the SegChange-R1 text ablation from ../shared/data/levir-cd-samples.

    .venv/bin/python benchmarks/segchange_text/make_levir_split.py /tmp/segchange_text/levir          # split 1
    .venv/bin/python benchmarks/segchange_text/make_levir_split.py /tmp/segchange_text/levir_b --split 2

The samples are 11 BIT_CD crops of 256² (from 9 LEVIR-CD tiles; test_2 gives two, train_386 has no change) and
one full 1024² tile, test_101 (no crop comes from it), cut here into 16 tiles of 256². Both splits keep the
same 3 validation crops (3 other tiles) and put test_101 on one side only:

- split 1: train 8 crops, test = test_101 (16 tiles: a held-out tile, also run through `changeflow detect`);
- split 2: train = test_101 (16 tiles) + the 3 train_* crops, test = the 5 other test_* crops.

The crops are copied byte-for-byte and test_101 is cut without resampling; labels stay 0/255 (binary255).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "levir-cd-samples"
VAL = ["val_27_0000_0256", "test_55_0256_0000", "test_7_0256_0512"]
TRAIN_CROPS = ["train_36_0512_0512", "train_386_0512_0768", "train_412_0512_0768"]
OTHER_CROPS = ["test_2_0000_0000", "test_2_0000_0512", "test_77_0512_0256", "test_102_0512_0000",
               "test_121_0768_0256"]
# split → {folder split: (crops, whether test_101's tiles go there)}
SPLITS = {
    1: {"train": (TRAIN_CROPS + OTHER_CROPS, False), "val": (VAL, False), "test": ([], True)},
    2: {"train": (TRAIN_CROPS, True), "val": (VAL, False), "test": (OTHER_CROPS, False)},
}
TEST_TILE, SIZE = "test_101", 256


def main(out: Path, split: int = 1, samples: Path = SAMPLES) -> None:
    for folder, (crops, full_tile) in SPLITS[split].items():
        for role in ("A", "B", "label"):
            (out / folder / role).mkdir(parents=True, exist_ok=True)
            for name in crops:
                shutil.copyfile(samples / "bit_cd_samples" / role / f"{name}.png", out / folder / role / f"{name}.png")
            if not full_tile:
                continue
            image = np.asarray(Image.open(samples / "full_tile" / role / f"{TEST_TILE}.png"))
            for row in range(0, image.shape[0], SIZE):
                for col in range(0, image.shape[1], SIZE):
                    tile = image[row : row + SIZE, col : col + SIZE]
                    Image.fromarray(tile).save(out / folder / role / f"{TEST_TILE}_{row:04d}_{col:04d}.png")
    print(f"{out}: " + ", ".join(f"{s} {len(list((out / s / 'A').iterdir()))}" for s in ("train", "val", "test")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("/tmp/segchange_text/levir"))
    parser.add_argument("--split", type=int, choices=sorted(SPLITS), default=1)
    args = parser.parse_args()
    main(args.out, args.split)
