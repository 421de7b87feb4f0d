"""Review of detections and drawing of change labels: store, tiles, geometry checks, export, web app.

``changeflow review`` serves :mod:`pipeline.review.app` over one prepared group and its detection;
the reviewer's work lives in a SQLite store (:mod:`pipeline.review.store`) and is exported as a
GeoPackage plus a label GeoTIFF on the group grid (:mod:`pipeline.review.export`), which
``changeflow prepare`` reads as role ``label``.
"""
