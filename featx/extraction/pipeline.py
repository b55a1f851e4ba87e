"""The extraction loop: look samples up in the cache, embed only the misses, commit shard by shard.

Each chunk of misses is committed as its own shard, so an interrupted run keeps everything
finished before the interruption and the next run resumes from there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import digest, user_cache_dir, write_json_atomic
from ..backbones.base import Backbone, TorchBackbone, check_output, resolve_device
from ..cache import FREE, MINE, WAITING, DamagedShardError, EmbeddingCache, Store
from ..data.samples import Samples, as_samples
from ..errors import BadInputError, CacheError
from ..plugins.registry import resolve_backbone

POLL_SECONDS = 0.2
TUNE_CANDIDATES = {"cpu": (1, 2, 4, 8, 16, 32), "gpu": (8, 16, 32, 64, 128, 256)}
TEXT_CHUNK = 1024  # samples per committed shard: a few seconds of work, few files to open when reading back
BLOCK = 1 << 14  # samples hashed, looked up, embedded and read back at a time: a few MB of working arrays
TUNE_VERSION = 2  # bump when the inference path changes speed: remembered sizes are then tuned again


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
    """The extraction's progress bar on stderr (silent when ``enabled`` is False): samples done out
    of ``total``, how many of them the cache had and how many were embedded; the rate and the ETA
    are the embedding's (cached samples count as done before the start, like a resumed download)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        from ..progress import progress_bar

        self.bar = progress_bar(total, label, unit="sample", enabled=enabled and total > 0)
        self.cached = 0

    def update(self, n: int, cached: bool = False) -> None:
        if self.bar.disable:
            return
        if cached:
            self.cached += n
            self.bar.initial += n
        self.bar.set_postfix_str(f"{self.cached} cached, {self.bar.n + n - self.cached} embedded", refresh=False)
        self.bar.update(n)

    def finish(self) -> None:
        self.bar.close()


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
          failed: dict[bytes, str]) -> tuple[list[int], list]:
    """Decode ``indices`` (recording failures by key); returns the good indices and their items."""
    preprocess = getattr(backbone, "preprocess", None)  # a chunk holds model-sized pixels, not whole photos
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
        backbone.fingerprint(), name=backbone.name, dim=backbone.dim, dtype=dtype, views=backbone.views,
        options=backbone.options,
    )


def _memo_path() -> Path:
    return user_cache_dir() / "batch-sizes.json"


def _memo_key(backbone: Backbone) -> str:
    import torch

    return digest(TUNE_VERSION, backbone.fingerprint(), getattr(backbone, "device", "cpu"), torch.get_num_threads())


def remembered_batch_size(backbone: Backbone) -> int | None:
    """The batch size an earlier autotune chose for this backbone, device and thread count."""
    try:
        return json.loads(_memo_path().read_text()).get(_memo_key(backbone))
    except (OSError, ValueError):
        return None


def autotune(backbone: Backbone, items: list, candidates: tuple[int, ...] | None = None) -> tuple[int, np.ndarray]:
    """Embed ``items`` while timing growing batch sizes on real work (nothing is wasted); stops once
    a size is clearly slower than the best so far.  Returns the fastest size and the vectors; the
    choice is remembered per backbone/device/threads."""
    if candidates is None:
        on_gpu = str(getattr(backbone, "device", "cpu")).startswith(("cuda", "mps"))
        candidates = TUNE_CANDIDATES["gpu" if on_gpu else "cpu"]
    outputs, speed, pos = [], {}, 0
    for size in candidates:
        if speed and speed[max(speed)] < 0.8 * max(speed.values()):
            break  # throughput fell off: larger batches will not come back
        count = max(2 * size, 8)
        if pos + count > len(items):
            break
        timed, seconds = 0, 0.0
        for lo in range(pos, pos + count, size):
            t0 = time.perf_counter()
            outputs.append(check_output(backbone, backbone.embed_batch(items[lo:lo + size]), len(items[lo:lo + size])))
            if lo > pos:  # the first batch of each size pays one-off costs
                timed, seconds = timed + size, seconds + time.perf_counter() - t0
        speed[size] = timed / max(seconds, 1e-9)
        pos += count
    best = max(speed, key=speed.get) if speed else backbone.default_batch_size
    if pos < len(items):
        outputs.append(backbone.embed_many(items[pos:], best))
    if speed:
        try:
            memo = _memo_path()
            memo.parent.mkdir(parents=True, exist_ok=True)
            known = json.loads(memo.read_text()) if memo.exists() else {}
            known[_memo_key(backbone)] = best
            write_json_atomic(memo, known)
        except (OSError, ValueError):
            pass  # the memo only saves the next run a few batches of tuning
    return best, np.concatenate(outputs) if outputs else np.zeros((0, backbone.dim), np.float32)


def _fill(store: Store, samples: Samples, todo: np.ndarray, backbone: Backbone, batch_size: int | None,
          chunk_size: int, num_workers: int, failed: dict[bytes, str], meter: Progress) -> tuple[int, int | None]:
    """Embed and commit every sample at the indices ``todo`` whose key no writer has stored,
    sharing the work with other writers through the store's claims; returns how many samples this
    process embedded, and the batch size (``batch_size=None`` autotunes it on the first chunk).

    Each round looks at a window of the remaining samples only (cost per round independent of the
    dataset size); keys another writer holds go to the back and are looked at again later.
    """
    embedded = 0
    remaining = np.asarray(todo, dtype=np.int64)
    while len(remaining):
        window, rest = remaining[:4 * chunk_size], remaining[4 * chunk_size:]
        status = store.claim_status(samples.keys[window], chunk_size)
        mine = window[status == MINE]
        try:
            if len(mine):
                chunk, items = _load(samples, mine.tolist(), backbone, num_workers, failed)
                if chunk:
                    if batch_size is None:
                        batch_size, raw = autotune(backbone, items)
                    else:
                        raw = backbone.embed_many(items, batch_size)
                    store.put(samples.keys[chunk], check_output(backbone, raw, len(chunk)))
                    embedded += len(chunk)
        finally:
            store.release()
        if not len(mine) and (status == WAITING).all():
            time.sleep(POLL_SECONDS)  # other writers are embedding all of these: give them time to commit
        remaining = np.concatenate([window[status == FREE], rest, window[status == WAITING]])
        meter.update(len(mine))
    return embedded, batch_size


def _read_stored(store: Store, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``store.read``, again after each shard found damaged (it is quarantined, and its samples
    count as missing, to be embedded again)."""
    while True:  # each retry has one shard fewer to read
        try:
            return store.read(keys, out)
        except DamagedShardError:
            continue


def _read_back(store: Store, keys: np.ndarray, rows: np.ndarray, out: np.ndarray, chunk_size: int) -> np.ndarray:
    """Copy the stored vectors of ``keys[rows]`` into ``out[rows]``, ``chunk_size`` rows at a time
    (no second matrix of them), and return their entry numbers in the store."""
    entries = np.empty(len(rows), np.int64)
    for at in range(0, len(rows), chunk_size):
        part = rows[at:at + chunk_size]
        fresh = np.empty((len(part), out.shape[1]), np.float32)
        entries[at:at + len(part)] = store.read(keys[part], fresh)
        out[part] = fresh
    if (entries < 0).any():
        raise CacheError(f"sample key {keys[rows[np.argmin(entries)]].decode()} vanished from the cache store "
                         f"{str(store.path)!r} while being extracted; run the extraction again")
    return entries


class _Distinct:
    """Counts the distinct store entries met, block after block: one flag per row of each shard
    met, so the count costs memory in proportion to the store, not to the input."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def add(self, entries: np.ndarray) -> None:
        entries = np.sort(entries)
        shards = entries >> 32
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(entries) else []
        for lo, hi in zip(starts, [*starts[1:], len(entries)]):
            rows = entries[lo:hi] & 0xFFFFFFFF  # ascending
            seen = self.rows.get(int(shards[lo]), np.zeros(0, bool))
            if len(seen) <= rows[-1]:
                seen = np.concatenate([seen, np.zeros(int(rows[-1]) + 1 - len(seen), bool)])
            seen[rows] = True
            self.rows[int(shards[lo])] = seen

    def __len__(self) -> int:
        return sum(int(np.count_nonzero(seen)) for seen in self.rows.values())


def _to_embed(samples: Samples, present: np.ndarray) -> np.ndarray:
    """Indices of the first sample of each missing key, in input order — texts longest first, so
    similar lengths share a chunk and each batch pads little."""
    misses = np.flatnonzero(~present)
    todo = misses[np.sort(np.unique(samples.keys[misses], return_index=True)[1])]
    if samples.modality == "text":
        lengths = np.fromiter((len(samples.items[i]) for i in todo), dtype=np.int64, count=len(todo))
        todo = todo[np.argsort(-lengths, kind="stable")]
    return todo


def check_errors(errors: str) -> None:
    """``errors`` is one of the two policies for unreadable samples (``extract``, ``sweep`` and ``finetune`` take it).

    Parameters
    ----------
    errors : str
        ``"raise"`` or ``"skip"``.

    >>> check_errors("skip")
    """
    if errors not in ("raise", "skip"):
        raise BadInputError(f"errors={errors!r}: use 'raise' or 'skip'")


def extract(
    backbone: Backbone | str,
    X: Any,
    *,
    cache_dir=None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    chunk_size: int | None = None,
    num_workers: int = 0,
    engine: str = "local",
    address: str | None = None,
    num_actors: int | None = None,
    num_gpus: float = 0,
    errors: str = "raise",
    progress: bool = False,
    input: str = "auto",
) -> Extraction:
    """Embed ``X`` with ``backbone`` through the cache; only samples never seen before are embedded.

    The input is handled ``BLOCK`` samples at a time (hash, look up, embed the misses, read them
    back): beyond the returned matrix, memory does not grow with ``len(X)``.

    Parameters
    ----------
    backbone : Backbone or str
        A ``featx.Backbone`` or a registered name (``"hf/all-MiniLM-L6-v2"``; see ``list_backbones``).
    X : list of samples
        Texts (``str``), or image paths, PIL images or uint8 arrays (an ``(n, H, W[, C])`` array too).
    cache_dir : str or path, optional
        The embedding cache (default ``$FEATX_CACHE_DIR`` or ``./cache``).
    batch_size : int, optional
        Samples per forward pass (>= 1); default: tuned on the first chunk of images and
        remembered per backbone and machine, else the backbone's own.
    device : str, default "auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    dtype : {"float32", "float16"}, default "float32"
        How the vectors are stored in the cache.
    chunk_size : int, optional
        Samples committed per shard (an interrupted run keeps every committed shard).
    num_workers : int, default 0
        DataLoader processes decoding (and preprocessing) images: worth it beside a GPU, slower
        on a 2-core CPU.
    engine : {"local", "ray"}, default "local"
        ``"ray"`` embeds the misses on a Ray cluster into the same store.
    address : str, optional
        The Ray cluster (engine ``"ray"``; a local one if None).
    num_actors : int, optional
        Ray actors, one backbone each.
    num_gpus : float, default 0
        GPUs per Ray actor.
    errors : {"raise", "skip"}, default "raise"
        ``"raise"`` commits every healthy sample, then raises one ``BadInputError`` listing every
        unreadable one; ``"skip"`` returns NaN rows for them and lists them in ``stats.failed``.
    progress : bool, default False
        A progress meter on stderr.
    input : {"auto", "text", "image"}, default "auto"
        What X holds; ``"auto"`` refuses image file paths given to a text backbone and text given
        to an image backbone, ``"text"`` embeds strings as texts even if they name files.

    Returns
    -------
    Extraction
        ``vectors`` (float32, ``(len(X), dim)``, input order), ``ok`` (False where a sample was
        skipped) and ``stats`` (an ``ExtractStats``: samples, cache hits, embedded, seconds, failed).
    """
    backbone = resolve_backbone(backbone)
    check_errors(errors)
    if engine not in ("local", "ray"):
        raise BadInputError(f"engine={engine!r}: use 'local' or 'ray'")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1):
        raise BadInputError(f"batch_size={batch_size!r}: use a positive int (samples per forward pass), or None to pick one")
    if engine == "local" and isinstance(backbone, TorchBackbone):
        device = resolve_device(device)  # a device this machine lacks fails here, not after hashing every sample
    start = time.perf_counter()
    samples = X if isinstance(X, Samples) else as_samples(X, backbone.modality, input=input, backbone=backbone.name)
    store = open_store(backbone, cache_dir, dtype)
    if batch_size is None and isinstance(backbone, TorchBackbone) and samples.modality == "image":
        batch_size = remembered_batch_size(backbone)  # None: autotune on the first chunk
    else:
        batch_size = batch_size or backbone.default_batch_size
    chunk_size = chunk_size or (TEXT_CHUNK if samples.modality == "text" else max((batch_size or 32) * 8, 256))
    block = BLOCK if engine == "local" else max(len(samples), 1)  # Ray streams its own batches to one actor pool
    meter = Progress(len(samples), backbone.name, progress and engine == "local")
    failed: dict[bytes, str] = {}
    listed: set[bytes] = set()  # the unreadable contents already in ``bad``

    def embed(part: Samples, todo: np.ndarray) -> int:
        nonlocal batch_size
        backbone.to(device)
        if engine == "ray":
            from .ray_engine import embed_with_ray

            return embed_with_ray(backbone, part, todo, store, batch_size=batch_size or backbone.default_batch_size,
                                  chunk_size=chunk_size, device=device, address=address, num_actors=num_actors,
                                  num_gpus=num_gpus, failed=failed)
        done, batch_size = _fill(store, part, todo, backbone, batch_size, chunk_size, num_workers, failed, meter)
        return done

    vectors = np.empty((len(samples), backbone.dim), dtype=np.float32)  # every row is written below
    ok = np.ones(len(samples), bool)
    distinct, hits, embedded, bad = _Distinct(), 0, 0, []
    for lo, part in samples.blocks(block):  # a key met in an earlier block is found stored by then
        keys, out = part.keys, vectors[lo:lo + len(part)]
        entries = _read_stored(store, keys, out)
        present = entries >= 0
        distinct.add(entries[present])
        hits += int(present.sum())
        todo = _to_embed(part, present)
        meter.update(len(part) - len(todo), cached=True)  # hits, and repeats of a missing key
        if len(todo):
            embedded += embed(part, todo)
        good = ~np.isin(keys, np.asarray(list(failed), dtype=keys.dtype)) if failed else np.ones(len(keys), bool)
        new = np.flatnonzero(good & ~present)  # embedded just now, by this process or another writer
        for attempt in range(3):  # a shard found damaged while reading is quarantined; embed its samples again
            try:
                distinct.add(_read_back(store, keys, new, out, chunk_size))
                break
            except DamagedShardError:
                if attempt == 2:
                    raise
                embedded += embed(part, new[~store.contains(keys[new])])
        out[~good] = np.nan
        ok[lo:lo + len(part)] = good
        for i in np.flatnonzero(~good):  # the first sample of a content is the one that failed; repeats say so
            name, msg = part.names[i], failed[keys[i]]
            bad.append(msg if name in msg else f"{name}: {msg}" if keys[i] not in listed else
                       f"{name}: same content as an unreadable sample ({msg})")
            listed.add(keys[i])
    meter.finish()
    stats = ExtractStats(
        backbone=backbone.name, store_key=store.path.name, samples=len(samples), unique=len(distinct) + len(failed),
        hits=hits, embedded=embedded, seconds=time.perf_counter() - start, failed=bad,
    )
    if bad and errors == "raise":
        listing = "\n  ".join(bad)
        raise BadInputError(
            f"{len(bad)} of {len(samples)} samples could not be read (the others are cached):\n  {listing}\n"
            f"Fix or remove them, or pass errors='skip' to leave them out."
        )
    return Extraction(vectors, ok, stats)
