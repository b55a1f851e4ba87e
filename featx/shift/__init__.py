"""Domain shift: is new data drawn from the reference distribution?  ``featx.detect_shift`` tests
two sets of cached embeddings (MMD, a classifier two-sample test, per-dimension KS); ``report``
renders the verdict as an HTML page."""
