"""A third-party featx backbone in one module: per-channel colour histograms of RGB images.

Installed through the ``featx`` entry point (see pyproject.toml); core featx never imports it.

>>> import featx
>>> featx.create_backbone("acme/colorhist", bins=4).dim
12
"""

from __future__ import annotations

import numpy as np

import featx

VERSION = 1  # bump when the computation changes: it is part of the fingerprint


class ColorHistogram(featx.Backbone):
    """Normalised ``bins``-bin histograms of the R, G and B channels, concatenated."""

    modality = "image"

    def __init__(self, bins: int = 8) -> None:
        if not isinstance(bins, int) or not 1 <= bins <= 256:
            raise ValueError(f"bins={bins!r}: use an int between 1 and 256")
        self.name = "acme/colorhist"
        self.bins = bins
        self.dim = 3 * bins

    def fingerprint(self) -> str:
        return featx.digest("acme/colorhist", VERSION, self.bins)

    def embed_batch(self, items) -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for row, image in enumerate(items):
            pixels = np.asarray(image, dtype=np.int64).reshape(-1, 3)
            counts = [np.bincount(pixels[:, c] * self.bins // 256, minlength=self.bins) for c in range(3)]
            out[row] = np.concatenate(counts) / max(len(pixels), 1)
        return out


@featx.hookimpl
def featx_register_backbones(register):
    register("acme/colorhist", ColorHistogram, description="RGB colour histogram (pure numpy example plugin)")
