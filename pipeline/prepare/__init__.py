"""Prepare: raw scenes in, a tiled, split, indexed training set out.

Stages in data-flow order: :mod:`~pipeline.prepare.catalog` (scene records and valid-data footprints),
:mod:`~pipeline.prepare.overlap` (groups of overlapping scenes), :mod:`~pipeline.prepare.grid` (one reference
grid per group, every image warped once to a COG), :mod:`~pipeline.prepare.coregistration` (shift / tie-point
correction gated by RMSE), :mod:`~pipeline.prepare.tiling` (windows, black/nodata filter, GeoTIFF tiles),
:mod:`~pipeline.prepare.split` (spatially blocked train/val/test) and :mod:`~pipeline.prepare.tile_index`
(the GeoPackage index). :mod:`~pipeline.prepare.group_build` runs grid, co-registration and tiling for one
group into a folder that a rerun skips, and :mod:`~pipeline.prepare.assembly` de-duplicates the groups' tiles,
splits them and links them into the training set with its index. :mod:`~pipeline.prepare.inbox` claims new
scenes dropped into an inbox.
"""
