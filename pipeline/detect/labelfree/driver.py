"""The streaming driver of the label-free methods: fit → score pass → histogram pass → output pass.

1. ``fit``: the method's own passes over the scene for scene-wide statistics (band means, IR-MAD's
   canonical weights, normalisation ranges), block by block;
2. score pass: each block is read with the method's halo and scored; scores are staged on disk and
   their range kept;
3. histogram pass: the staged scores are counted into a histogram over that range → Otsu's threshold
   and the logistic probability (:mod:`~pipeline.detect.labelfree.calibrate`);
4. output pass: scores → probabilities → the same probability / class blocks as a model's detection
   (:func:`~pipeline.detect.accumulate.finalise`, one change rule), written as COGs by
   :func:`~pipeline.detect.output.write_rasters` with the method's name in the provenance tags.

Memory is bounded by one block with its halo; no scene is read whole.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.detect.accumulate import ProbabilityDtype, finalise
from pipeline.detect.labelfree.calibrate import Calibration, ScoreHistogram
from pipeline.detect.labelfree.scene import PairScene, Rect
from pipeline.detect.output import OutputPaths, existing_run, write_rasters
from pipeline.detect.sliding import DetectionResult, Progress
from pipeline.detect.staging import Staging, fingerprint
from pipeline.detect.windows import block_id, plan

PARTIAL_DIR = ".labelfree-partial"


class ScoreMethod(Protocol):
    """What the driver needs of a method: its name, halo and block cap, a fit and a score."""

    name: str
    kind: str  # "optical", "sar" or "heterogeneous": which grid rasters it compares
    halo: int  # pixels of context a scored pixel depends on, each side
    max_block: int  # largest block side the method's memory allows
    block_multiple: int  # block sides are a multiple of this (keeps a method's pixel lattice aligned)

    def fit(self, scene: PairScene) -> None:
        """Scene-wide statistics, from passes over the scene's blocks."""

    def score(self, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        """Change scores (H, W) of a block and its halo, NaN where either date is invalid."""


def score_block(method: ScoreMethod, scene: PairScene, rect: Rect) -> np.ndarray:
    """The scores of one block's own pixels (its halo read and cropped off).

    Args:
        method: a fitted method.
        scene: the pair.
        rect: the block.

    Returns:
        float32 (rows, cols) scores, NaN = nodata.
    """
    h = method.halo
    t1, t2 = (scene.read(role, rect, h) for role in scene.roles)
    score = method.score(t1, t2)
    return score[h:score.shape[0] - h, h:score.shape[1] - h].astype(np.float32)


def calibrate_scores(staged: list[Path]) -> Calibration:
    """Otsu's threshold and the logistic of staged score blocks (two reads: range, then histogram).

    Args:
        staged: the ``.npy`` score blocks.

    Returns:
        The calibration.
    """
    low, high = np.inf, -np.inf
    for path in staged:
        score = np.load(path)
        if np.isfinite(score).any():
            low, high = min(low, float(np.nanmin(score))), max(high, float(np.nanmax(score)))
    if not np.isfinite(low):
        return Calibration(0.0, 0.0, 0.0, 0.0, 0.0)
    histogram = ScoreHistogram(low, high)
    for path in staged:
        histogram.add(np.load(path))
    return histogram.calibration()


def encode_block(score: np.ndarray, calibration: Calibration, dtype: ProbabilityDtype,
                 threshold: float) -> dict[str, np.ndarray]:
    """A block's scores as detection's probability and class rasters (NaN score → nodata).

    Args:
        score: (rows, cols) scores.
        calibration: the scene's calibration.
        dtype: "uint8" or "float32" probabilities.
        threshold: change where the written probability exceeds it.

    Returns:
        (1, rows, cols) "probability" and "classes", as :func:`~pipeline.detect.accumulate.finalise` writes them.
    """
    valid = np.isfinite(score)
    probability = np.where(valid, calibration.probability(np.where(valid, score, 0.0)), 0.0)
    # finalise takes (weighted sum, weight): weight 1 on valid pixels, 0 (nodata) elsewhere.
    core = torch.from_numpy(np.stack([probability, valid.astype(np.float64)]))
    return finalise(core, dtype, threshold)


def _tags(scene: PairScene, method: ScoreMethod, settings: dict, provenance: dict[str, str]) -> dict[str, str]:
    """Provenance and settings tags of the outputs (the method's name where a model's checkpoint would be)."""
    run_fingerprint = fingerprint(f"labelfree:{method.name}", scene.inputs, settings)
    return {**provenance, "GROUP": scene.inputs.group, "MODEL": method.name, "METHOD": method.name,
            "CHECKPOINT": "", "CHECKPOINT_SHA256": "", "DETECT_SETTINGS": json.dumps(settings, sort_keys=True),
            "DETECT_FINGERPRINT": run_fingerprint}


def detect_labelfree(
    scene: PairScene,
    method: ScoreMethod,
    out_dir: Path,
    *,
    block_size: int = 2048,
    probability_dtype: ProbabilityDtype = "uint8",
    threshold: float = 0.5,
    provenance: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> DetectionResult:
    """A label-free method over a whole group, streamed, into detection's rasters.

    Finished outputs of the same method, inputs and settings are kept (a rerun is a no-op).

    Args:
        scene: the group's pair of grid rasters.
        method: the method, not yet fitted.
        out_dir: where ``change_probability.tif`` and ``change_class.tif`` go.
        block_size: block side in pixels (capped by the method's ``max_block``).
        probability_dtype: "uint8" (p × 254, 255 nodata) or "float32" (NaN nodata).
        threshold: change where the written probability exceeds it (0.5 = Otsu's threshold of the score).
        provenance: tags for the outputs (scene ids, dates, sensors).
        progress: called as ``progress(description, blocks_finished, blocks_total)``.

    Returns:
        The rasters' paths and what the call did; ``blocks_total`` counts the score and output passes.
    """
    started = time.perf_counter()
    size = min(block_size, method.max_block)
    size -= size % method.block_multiple
    layout = plan(*scene.shape, size, 0.0, size)  # windows = blocks: the layout write_rasters reads
    blocks = layout.blocks()
    settings = {"method": method.name, "block_size": size, "probability_dtype": probability_dtype,
                "threshold": threshold, "inputs": list(scene.roles)}
    tags = _tags(scene, method, settings, provenance or {})
    paths = OutputPaths.in_folder(Path(out_dir), 0)
    megapixels = scene.shape[0] * scene.shape[1] / 1e6
    previous = existing_run(paths, tags)
    if previous is not None:
        return DetectionResult(paths.probability, paths.classes, 0, 2 * len(blocks), time.perf_counter() - started,
                               megapixels, 2 * len(blocks), previous)
    staging = Staging(Path(out_dir) / PARTIAL_DIR)
    shutil.rmtree(staging.root, ignore_errors=True)  # scores are cheap to redo: no resume
    _, run_id = staging.open(tags["DETECT_FINGERPRINT"], None, [block_id(i, j) for i, j in blocks])
    method.fit(scene)
    staged = []
    for k, (i, j) in enumerate(blocks):
        staged.append(staging.root / f"score_{block_id(i, j)}.npy")
        np.save(staged[-1], score_block(method, scene, layout.core(i, j)))
        if progress is not None:
            progress(f"{method.name} {scene.inputs.group}", k + 1, 2 * len(blocks))
    calibration = calibrate_scores(staged)
    for k, ((i, j), path) in enumerate(zip(blocks, staged)):
        staging.finish_block(block_id(i, j), encode_block(np.load(path), calibration, probability_dtype, threshold))
        if progress is not None:
            progress(f"{method.name} {scene.inputs.group}", len(blocks) + k + 1, 2 * len(blocks))
    tags.update(RUN_ID=run_id, SCORE_THRESHOLD=repr(calibration.threshold), SCORE_SLOPE=repr(calibration.slope),
                SCORE_OTSU=repr(calibration.otsu))
    write_rasters(paths, staging, layout, scene.inputs, tags, (probability_dtype, threshold), 0)
    shutil.rmtree(staging.root, ignore_errors=True)
    return DetectionResult(paths.probability, paths.classes, 2 * len(blocks), 2 * len(blocks),
                           time.perf_counter() - started, megapixels, 0, run_id)
