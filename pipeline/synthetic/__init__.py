"""Synthetic scene groups (optical t1, SAR t2, optical t2, change label) for the demo and the benchmarks.

- :mod:`~pipeline.synthetic.scenes`: the demo group, built in memory, each image on its own grid;
- :mod:`~pipeline.synthetic.large`: big groups for the benchmarks, streamed block by block;
- :mod:`~pipeline.synthetic.group`: roles, sensors, dates, file profiles and the scene list;
- :mod:`~pipeline.synthetic.ground`, :mod:`~pipeline.synthetic.buildings`, :mod:`~pipeline.synthetic.textures`:
  the procedural ground both are rendered from;
- :mod:`~pipeline.synthetic.optical`, :mod:`~pipeline.synthetic.sar`, :mod:`~pipeline.synthetic.collar`:
  what each sensor records, and its nodata collar.

Textures come from the CC0 Landsat image shipped in ``pipeline/synthetic/data/rgb_byte_cc0.tif``.
"""
