"""Build the LEVIR-style folder of the SegChange-R1 text ablation from ../shared/data/levir-cd-samples.

    .venv/bin/python benchmarks/segchange_text/make_levir_split.py /tmp/segchange_text/levir

train: 8 of the 256² BIT_CD crops (7 LEVIR tiles, train_386 has no change), val: 3 other crops (3 other
tiles), test: the full 1024² tile test_101 (a tile no crop comes from) cut into 16 tiles of 256². The PNGs
are copied byte-for-byte (crops) or cut without resampling (test_101); labels stay 0/255 (binary255).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "levir-cd-samples"
SPLITS = {
    "train": ["train_36_0512_0512", "train_386_0512_0768", "train_412_0512_0768", "test_2_0000_0000",
              "test_2_0000_0512", "test_77_0512_0256", "test_102_0512_0000", "test_121_0768_0256"],
    "val": ["val_27_0000_0256", "test_55_0256_0000", "test_7_0256_0512"],
}
TEST_TILE, SIZE = "test_101", 256


def main(out: Path, samples: Path = SAMPLES) -> None:
    for split, names in SPLITS.items():
        for role in ("A", "B", "label"):
            (out / split / role).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copyfile(samples / "bit_cd_samples" / role / f"{name}.png", out / split / role / f"{name}.png")
    for role in ("A", "B", "label"):
        (out / "test" / role).mkdir(parents=True, exist_ok=True)
        image = np.asarray(Image.open(samples / "full_tile" / role / f"{TEST_TILE}.png"))
        for row in range(0, image.shape[0], SIZE):
            for col in range(0, image.shape[1], SIZE):
                tile = image[row : row + SIZE, col : col + SIZE]
                Image.fromarray(tile).save(out / "test" / role / f"{TEST_TILE}_{row:04d}_{col:04d}.png")
    print(f"{out}: " + ", ".join(f"{s} {len(list((out / s / 'A').iterdir()))}" for s in ("train", "val", "test")))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/segchange_text/levir"))
