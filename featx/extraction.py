"""The extraction loop: look samples up in the cache, embed only the misses, commit shard by shard.

Each chunk of misses is committed as its own shard, so an interrupted run keeps everything
finished before the interruption and the next run resumes from there.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backbones.base import Backbone, check_output
from .cache import DamagedShardError, EmbeddingCache, Store
from .datasets import Samples, as_samples
from .errors import BadInputError

POLL_SECONDS = 0.2


@dataclass
class ExtractStats:
    """What one extraction did: ``embedded`` counts samples the backbone actually saw."""

    backbone: str
    store_key: str
    samples: int
    unique: int
    hits: int
    embedded: int
    seconds: float
    failed: list[str] = field(default_factory=list)


@dataclass
class Extraction:
    """Vectors in input order (NaN rows where a sample failed and ``errors="skip"``) and stats."""

    vectors: np.ndarray
    ok: np.ndarray
    stats: ExtractStats


class Progress:
    """A one-line progress meter on stderr (silent when ``enabled`` is False)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.done, self.start = 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled and n:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            print(f"\r{self.label}: {self.done}/{self.total} ({rate:.1f}/s)", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def _as_is(x):
    return x


class _Decode:
    """Picklable per-sample work for DataLoader workers: load, then the backbone's preprocess."""

    def __init__(self, samples: Samples, indices: list[int], preprocess) -> None:
        self.samples, self.indices, self.preprocess = samples, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        try:
            return i, self.preprocess(self.samples.load(i)), None
        except BadInputError as exc:
            return i, None, str(exc)


def _load(samples: Samples, indices: list[int], backbone: Backbone, num_workers: int,
          failed: dict[str, str]) -> tuple[list[int], list]:
    """Decode ``indices`` (recording failures by key); returns the good indices and their items."""
    preprocess = getattr(backbone, "preprocess", None) if num_workers > 0 else None
    work = _Decode(samples, indices, preprocess or _as_is)
    if num_workers > 0 and samples.modality == "image":
        from torch.utils.data import DataLoader

        results = list(DataLoader(work, batch_size=None, num_workers=num_workers, collate_fn=_as_is))
    else:
        results = [work[k] for k in range(len(work))]
    good, items = [], []
    for i, item, error in results:
        if error is None:
            good.append(i)
            items.append(item)
        else:
            failed[samples.keys[i]] = error
    return good, items


def open_store(backbone: Backbone, cache_dir=None, dtype: str = "float32") -> Store:
    """The cache store holding ``backbone``'s embeddings."""
    return EmbeddingCache(cache_dir).store(
        backbone.fingerprint(), name=backbone.name, dim=backbone.dim, dtype=dtype, views=backbone.views
    )


def _fill(store: Store, samples: Samples, keys: list[str], first_index: dict[str, int], backbone: Backbone,
          batch_size: int, chunk_size: int, num_workers: int, failed: dict[str, str], meter: Progress) -> int:
    """Embed and commit every key of ``keys`` that no writer has stored, sharing the work with other
    writers through the store's claims; returns how many samples this process embedded."""
    embedded = 0
    remaining = list(keys)
    while remaining:
        mine, waiting = store.claim(remaining, chunk_size)
        if not mine and not waiting:
            break
        if not mine:  # everything left is being embedded by other writers: wait for their shards
            time.sleep(POLL_SECONDS)
        try:
            if mine:
                chunk, items = _load(samples, [first_index[k] for k in mine], backbone, num_workers, failed)
                if chunk:
                    vectors = check_output(backbone, backbone.embed_many(items, batch_size), len(chunk))
                    store.put([samples.keys[i] for i in chunk], vectors)
                    embedded += len(chunk)
        finally:
            store.release()
        done = set(mine)
        remaining = [k for k in remaining if k not in done and k not in failed]
        meter.update(len(mine))
    return embedded


def extract(
    backbone: Backbone,
    X: Any,
    *,
    cache_dir=None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    chunk_size: int | None = None,
    num_workers: int = 0,
    errors: str = "raise",
    progress: bool = False,
) -> Extraction:
    """Embed ``X`` with ``backbone`` through the cache; only samples never seen before are embedded.

    ``errors="raise"`` (default) commits every healthy sample, then raises one ``BadInputError``
    listing every unreadable one; ``errors="skip"`` returns NaN rows for them and lists them in
    ``stats.failed``.  ``num_workers > 0`` decodes (and, for backbones with a ``preprocess``
    method, preprocesses) images in that many DataLoader worker processes — worth it beside a GPU,
    slower on a 2-core CPU.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors={errors!r}: use 'raise' or 'skip'")
    start = time.perf_counter()
    samples = X if isinstance(X, Samples) else as_samples(X, backbone.modality)
    store = open_store(backbone, cache_dir, dtype)
    present = store.contains(samples.keys)
    first_index: dict[str, int] = {}
    for i in np.flatnonzero(~present):
        first_index.setdefault(samples.keys[i], int(i))

    batch_size = batch_size or backbone.default_batch_size
    chunk_size = chunk_size or max(batch_size * 8, 256)
    failed: dict[str, str] = {}
    meter = Progress(len(first_index), f"embedding with {backbone.name}", progress)
    if first_index:
        backbone.to(device)
    embedded = _fill(store, samples, list(first_index), first_index, backbone, batch_size, chunk_size, num_workers,
                      failed, meter)
    meter.finish()

    ok = np.fromiter((k not in failed for k in samples.keys), dtype=bool, count=len(samples))
    vectors = np.full((len(samples), backbone.dim), np.nan, dtype=np.float32)
    wanted = [k for k, good in zip(samples.keys, ok) if good]
    for attempt in range(3):  # a shard found damaged while reading is quarantined; embed its samples again
        try:
            vectors[ok] = store.get(wanted)
            break
        except DamagedShardError:
            if attempt == 2:
                raise
            lost = [k for k, here in zip(wanted, store.contains(wanted)) if not here]
            position = {k: i for i, k in reversed(list(enumerate(samples.keys)))}
            backbone.to(device)
            embedded += _fill(store, samples, lost, position, backbone, batch_size, chunk_size, num_workers, failed,
                              Progress(len(lost), "re-embedding quarantined samples", progress))
    bad = [
        msg if samples.names[i] in msg else f"{samples.names[i]}: same content as an unreadable sample ({msg})"
        for i in np.flatnonzero(~ok) for msg in [failed[samples.keys[i]]]
    ]
    stats = ExtractStats(
        backbone=backbone.name, store_key=store.path.name, samples=len(samples),
        unique=len(set(samples.keys)), hits=int(present.sum()), embedded=embedded,
        seconds=time.perf_counter() - start, failed=bad,
    )
    if bad and errors == "raise":
        listing = "\n  ".join(bad)
        raise BadInputError(
            f"{len(bad)} of {len(samples)} samples could not be read (the others are cached):\n  {listing}\n"
            f"Fix or remove them, or pass errors='skip' to leave them out."
        )
    return Extraction(vectors, ok, stats)
