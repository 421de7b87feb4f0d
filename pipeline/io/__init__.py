"""Raster input and output shared by every stage: reading with a valid mask, COG writing, atomic writes."""
