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

After detection:

- :mod:`~pipeline.detect.vectorize`: class (+ probability) raster → GeoPackage of change polygons;
- :mod:`~pipeline.detect.evaluate`: class raster / polygons + label → pixel, semantic and object metrics;
- :mod:`~pipeline.detect.quicklook`: input, prediction and label rasters → a 2×2 PNG mosaic;
- :mod:`~pipeline.detect.report`: metrics, timings, config (+ quick-look rasters) → ``report.md`` /
  ``report.json`` / ``quicklook.png``.
"""
