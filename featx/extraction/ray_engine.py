"""Distributed extraction on Ray: Ray Data ``map_batches`` over a pool of stateful actors.

Each actor builds the backbone once (on its own GPU when ``num_gpus`` > 0) and, per batch of
cache misses, claims the keys no other writer holds, embeds them and commits one shard to the same
content-addressed store the local engine uses — so a retried batch (a killed worker) re-embeds only
what was not committed, and a killed driver loses at most the batches in flight.  The driver never
receives vectors: it reads the store afterwards, exactly as the local engine does.

The cache directory must be visible to every node (a shared filesystem) for multi-node runs.
"""

from __future__ import annotations

import numpy as np

from ..backbones.base import Backbone, check_output
from ..cache import Store, as_keys
from ..data.samples import Samples
from ..errors import FeatxError


class EmbedActor:
    """The stateful Ray Data UDF: one backbone per actor, one committed shard per batch."""

    def __init__(self, backbone: Backbone, store_path: str, store_meta: dict, modality: str, batch_size: int,
                 device: str) -> None:
        from pathlib import Path

        self.backbone = backbone.to(device)
        self.store = Store(Path(store_path), store_meta)
        self.modality, self.batch_size = modality, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["key"]]
        items = list(batch["item"])
        errors = [""] * len(keys)
        mine, _ = self.store.claim(keys, len(keys))  # keys a retried attempt already committed are skipped
        try:
            todo = [keys.index(k) for k in mine]
            samples = Samples(self.modality, [items[i] for i in todo], as_keys(mine),
                              [str(batch["name"][i]) for i in todo])
            good, loaded = [], []
            for j in range(len(todo)):
                try:
                    loaded.append(samples.load(j))
                    good.append(j)
                except FeatxError as exc:
                    errors[todo[j]] = str(exc)
            if good:
                vectors = check_output(self.backbone, self.backbone.embed_many(loaded, self.batch_size), len(good))
                self.store.put([mine[j] for j in good], vectors)
        finally:
            self.store.release()
        return {"key": np.asarray(keys, dtype=object), "error": np.asarray(errors, dtype=object),
                "embedded": np.asarray([k in mine and not e for k, e in zip(keys, errors)])}


def embed_with_ray(backbone: Backbone, samples: Samples, todo: np.ndarray, store: Store, *,
                   batch_size: int, chunk_size: int, device: str = "auto", address: str | None = None,
                   num_actors: int | None = None, num_gpus: float = 0, failed: dict[bytes, str]) -> int:
    """Embed the samples at the indices ``todo`` (one per missing key) on Ray; returns how many were embedded."""
    try:
        import ray
    except ImportError:
        raise FeatxError("engine='ray' needs Ray: pip install 'featx[ray]'") from None
    if not len(todo):
        return 0
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    actors = num_actors or max(1, int(ray.available_resources().get("GPU" if num_gpus else "CPU", 1) // max(num_gpus, 1)))
    rows = [{"key": samples.keys[i].decode(), "item": samples.items[i], "name": samples.names[i]} for i in todo.tolist()]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // chunk_size, 4 * actors)))
    results = dataset.map_batches(
        EmbedActor, batch_size=chunk_size, batch_format="numpy", concurrency=actors, num_gpus=num_gpus or None,
        fn_constructor_kwargs={"backbone": backbone, "store_path": str(store.path), "store_meta": store.meta,
                               "modality": samples.modality, "batch_size": batch_size,
                               "device": device if num_gpus else "cpu"},
    )
    embedded = 0
    for row in results.iter_rows():
        if row["error"]:
            failed[row["key"].encode()] = row["error"]
        embedded += bool(row["embedded"])
    return embedded

