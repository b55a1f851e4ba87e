"""A conformance kit for backbone authors: run it in your plugin's own tests.

>>> from featx.testing import check_backbone
>>> check_backbone(featx.create_backbone("acme/colorhist"))   # doctest: +SKIP

Each check raises ``AssertionError`` naming the backbone and what to fix.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .backbones.base import MODALITIES, Backbone


def sample_inputs(modality: str, n: int = 6) -> list:
    """Small varied inputs: RGB images of different sizes, or texts of different lengths."""
    if modality == "text":
        words = "the quick brown fox jumps over a lazy dog near the river bank today".split()
        return [" ".join(words[: 2 + 2 * i]) for i in range(n)]
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 32 + 4 * i, 3), dtype=np.uint8)) for i in range(n)]


def check_backbone(backbone: Backbone, samples: Sequence[Any] | None = None, *, atol: float = 1e-4) -> None:
    """Shape, dtype, finiteness, determinism, fingerprint stability and batch-size invariance."""
    who = f"backbone {getattr(backbone, 'name', '?')!r} ({type(backbone).__name__})"
    assert isinstance(backbone, Backbone), f"{who} must subclass featx.Backbone"
    assert isinstance(backbone.name, str) and backbone.name, f"{who}: set a non-empty str `name`"
    assert backbone.modality in MODALITIES, f"{who}: modality {backbone.modality!r} must be one of {MODALITIES}"
    assert isinstance(backbone.dim, (int, np.integer)) and backbone.dim > 0, f"{who}: `dim` must be a positive int"
    fingerprint = backbone.fingerprint()
    assert isinstance(fingerprint, str) and fingerprint, f"{who}: fingerprint() must return a non-empty str"
    samples = list(samples) if samples is not None else sample_inputs(backbone.modality)
    assert len(samples) >= 2, "check_backbone needs at least two samples"

    out = backbone.embed_batch(samples)
    assert isinstance(out, np.ndarray), f"{who}: embed_batch returned {type(out).__name__}, not a numpy array"
    assert out.shape == (len(samples), backbone.dim), \
        f"{who}: embed_batch returned shape {out.shape}, expected ({len(samples)}, {backbone.dim})"
    assert out.dtype == np.float32, f"{who}: embed_batch returned {out.dtype}; return float32"
    assert np.isfinite(out).all(), f"{who}: embed_batch returned NaN or infinite values"

    again = backbone.embed_batch(samples)
    assert np.allclose(out, again, atol=atol), f"{who}: two calls on the same samples differ (not deterministic; eval mode?)"
    one_by_one = np.concatenate([backbone.embed_batch([s]) for s in samples])
    assert np.allclose(out, one_by_one, atol=atol, rtol=1e-4), \
        f"{who}: a sample's vector depends on the rest of its batch (batch-size invariance; BatchNorm in train mode?)"
    reversed_out = backbone.embed_batch(samples[::-1])[::-1]
    assert np.allclose(out, reversed_out, atol=atol, rtol=1e-4), f"{who}: vectors depend on the order of the batch"
    assert backbone.fingerprint() == fingerprint, f"{who}: fingerprint() changed after embedding; it must be stable"
    views = backbone.views
    covered = sorted((s.start, s.stop) for s in views.values())
    assert covered and covered[0][0] == 0 and covered[-1][1] == backbone.dim, \
        f"{who}: views {views} must cover columns 0..{backbone.dim}"
