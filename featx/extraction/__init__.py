"""Extraction: samples -> the cache -> vectors (``pipeline``: ``featx.extract``), misses embedded locally or on a
Ray cluster (``ray_engine``)."""
