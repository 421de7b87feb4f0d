"""Detect: a prepared scene group and a checkpoint in, change rasters, polygons and a report out.

:mod:`~pipeline.detect.sliding` runs sliding-window inference over a whole group with Gaussian blending and
writes COG probability / class rasters; :mod:`~pipeline.detect.vectorize` turns the classes into a
GeoPackage of polygons; :mod:`~pipeline.detect.evaluate` scores them against a label raster and writes the
report and quick look.
"""
