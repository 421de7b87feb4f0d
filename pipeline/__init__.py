"""The geospatial and learning core of changeflow: plain functions, no orchestration."""
