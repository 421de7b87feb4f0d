"""Detect: a prepared scene group and a checkpoint in, change rasters, polygons and a report out.

One group end to end:

- :mod:`~pipeline.detect.group_run`: a prepared group folder and a ``DetectConfig`` → the rasters,
  the polygons and (with a label) the report; returns the group's summary.

Sliding-window detection (:mod:`~pipeline.detect.sliding`, ``detect_group``: a group folder, a
checkpoint and ``DetectSettings`` → COG rasters in an output folder, as a ``DetectionResult``) is
built from:

- :mod:`~pipeline.detect.inputs`: group folder + checkpoint → the checked grid rasters (``GroupInputs``);
- :mod:`~pipeline.detect.windows`: scene size, window, overlap, block size → window offsets,
  Gaussian / uniform blending weights and the block layout (which block owns which windows);
- :mod:`~pipeline.detect.inference`: checkpoint → the model and its prompt embedding; a batch of
  windows → blended-ready probabilities (with TTA);
- :mod:`~pipeline.detect.reading`: window offsets → normalised batches, read ahead in threads;
- :mod:`~pipeline.detect.accumulate`: batches → weighted sums per block, carried across block
  edges → finished blocks' probability / class (and semantic) arrays;
- :mod:`~pipeline.detect.staging`: finished blocks, carries and the journal on disk, so a killed
  run resumes to identical rasters; run ids and the resume fingerprint;
- :mod:`~pipeline.detect.output`: staged blocks → COGs with georeferencing and provenance tags.

Scale-out (the same rasters, bit for bit, as one process with the same torch thread count):

- :mod:`~pipeline.detect.setup`: settings, and the checks and model (process cache) every process
  computing blocks sets up alike;
- :mod:`~pipeline.detect.blocks`: one block as a task (own sums + carries staged), one writer completing them;
- :mod:`~pipeline.detect.cluster`: a Dask cluster: reaching it, the ``GPU`` resource, worker checks, block tasks;
- :mod:`~pipeline.detect.shard`: torchrun ranks sharing a scene's blocks through the staging folder.

For notebooks, :mod:`~pipeline.detect.results`: ``open_results(DET)`` → ``{group: xarray.Dataset}``
(``from pipeline.detect import open_results``).

After detection:

- :mod:`~pipeline.detect.vectorize`: class (+ probability) raster → GeoPackage of change polygons;
- :mod:`~pipeline.detect.evaluate`: class raster / polygons + label → pixel, semantic and object metrics;
- :mod:`~pipeline.detect.quicklook`: input, prediction and label rasters → a 2×2 PNG mosaic;
- :mod:`~pipeline.detect.report`: metrics, timings, config (+ quick-look rasters) → ``report.md`` /
  ``report.json`` / ``quicklook.png``.
"""


def __getattr__(name: str):
    """``open_results`` and ``open_group_results`` (:mod:`~pipeline.detect.results`), imported on first use
    so that detection itself does not load xarray."""
    if name in ("open_results", "open_group_results"):
        from pipeline.detect import results

        return getattr(results, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
