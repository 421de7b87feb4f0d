"""Synthetic scene groups (optical t1, SAR t2, optical t2, change label) for the demo and the benchmarks.

Textures come from the CC0 Landsat image shipped in ``pipeline/synthetic/data/rgb_byte_cc0.tif``.
"""
