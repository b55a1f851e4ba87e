"""Content-addressed embedding cache: one folder per backbone configuration, append-only HDF5 shards.

    cache_dir/
      <store key>/            store key = digest(backbone fingerprint, storage dtype)
        meta.json             backbone name, fingerprint, dim, dtype, views
        shard-<ns>-<pid>-<rand>.h5   datasets "keys" (n,) S32 and "vectors" (n, dim)
        index.bin             the shards' keys as last indexed, searched on disk page by page (a
                              process holds only its first key per page and what was indexed since):
                                records   (key S32, shard int32, row int32) x n, sorted by key, one per key
                                shards    JSON table: name, rows, vectors offset, stamp, checked finite
                                trailer   magic, n, table bytes, CRC-32 of records and table
                              a new process reads this one file instead of opening every shard (any
                              shard it does not describe as it is now is read from the shard itself;
                              a damaged index.bin is ignored)
      texts/<digest>.npz      keys of recently seen lists of short texts (see datasets.as_samples)

A shard is written to a temporary name, flushed to disk, then renamed: readers see whole shards or
none, and writers in several processes (or machines on a shared filesystem) never touch each
other's files.  The same key in two shards holds the same vector; the first one found wins.

>>> import tempfile, numpy as np
>>> store = EmbeddingCache(tempfile.mkdtemp()).store("fp0", name="demo", dim=2)
>>> store.put(["k1"], np.ones((1, 2), np.float32))
>>> store.get(["k1"]).tolist(), store.contains(["k1", "k2"]).tolist()
([[1.0, 1.0]], [True, False])
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import uuid
import warnings
import weakref
import zlib
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._fs import write_json_atomic
from .errors import CacheError

STORAGE_DTYPES = ("float32", "float16")
KEY_DTYPE = "S32"
STORED, MINE, WAITING, FREE = 0, 1, 2, 3  # a key's status in Store.claim_status
CLAIM_TIMEOUT = float(os.environ.get("FEATX_CLAIM_TIMEOUT", 600))  # seconds before another host's claim is stale
TMP_TIMEOUT = 600.0  # seconds before an orphaned temporary shard is garbage
OPEN_SHARDS = 16  # read handles kept open per store
LOCATE_BLOCK = 1 << 16  # keys looked up at a time
SNAPSHOT = "index.bin"  # the index as last saved, searched on disk: see _Base
FORMER_SNAPSHOT = "index.npz"  # the whole-index snapshot of earlier versions: removed once SNAPSHOT is written
RECORD = np.dtype([("key", KEY_DTYPE), ("shard", "<i4"), ("row", "<i4")])  # one entry of the saved index
PAGE = 512  # records per page of the saved index (20 kB): the unit a look-up reads
READ_PAGES = 32  # pages read at a time by a look-up, a check or a rewrite of the saved index
DELTA_MIN, DELTA_MAX = 1 << 15, 1 << 20  # entries held in memory before the saved index is rewritten
MAGIC = b"featxix1"
TRAILER = struct.Struct("<8sQQI")  # MAGIC, records, bytes of the shard table, CRC-32 of both


class CacheWarning(UserWarning):
    """A damaged shard was quarantined; its samples will be embedded again."""


class DamagedShardError(CacheError):
    """A shard failed while being read; it has been quarantined."""


def check_shard(path: Path, meta: dict) -> str | None:
    """What is wrong with one shard file (``None`` if it is whole and consistent with its store)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys, vectors = f["keys"], f["vectors"]
            if keys.dtype != np.dtype(KEY_DTYPE) or keys.ndim != 1:
                return f"keys have dtype {keys.dtype} and shape {keys.shape}"
            if vectors.shape != (keys.shape[0], meta["dim"]):
                return f"vectors have shape {vectors.shape}, expected ({keys.shape[0]}, {meta['dim']})"
            if vectors.dtype != np.dtype(meta["dtype"]):
                return f"vectors have dtype {vectors.dtype}, expected {meta['dtype']}"
            if f.attrs.get("fingerprint") != meta["fingerprint"]:
                return "written for another backbone fingerprint"
            if not np.isfinite(vectors[...]).all():
                return "vectors contain NaN or infinity"
            if len({k for k in keys[...]}) != keys.shape[0]:
                return "duplicate keys inside the shard"
    except Exception as exc:  # h5py reports truncation and corruption as OSError/KeyError/…
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class VerifyReport:
    """``featx cache verify``: healthy shards, damaged ones (with the reason) and leftover temporaries."""

    store: str
    healthy: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    temporary: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


def default_cache_dir() -> Path:
    """``$FEATX_CACHE_DIR`` if set, else ``./cache``."""
    return Path(os.environ.get("FEATX_CACHE_DIR") or "cache")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _writable_or_raise(path: Path, exc: OSError) -> CacheError:
    import errno

    hint = {
        errno.ENOSPC: "the disk is full; free space or pass another cache_dir",
        errno.EACCES: "it is not writable; fix its permissions or pass another cache_dir",
        errno.EROFS: "it is on a read-only filesystem; pass another cache_dir",
    }.get(exc.errno, "pass another cache_dir")
    return CacheError(f"cannot write to the embedding cache {str(path)!r}: {exc.strerror or exc} — {hint}")


@dataclass
class StoreInfo:
    """What ``featx cache ls`` shows for one store."""

    key: str
    name: str
    fingerprint: str
    dim: int
    dtype: str
    count: int
    shards: int
    bytes: int
    path: Path


def as_keys(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """Sample keys (hex ``str`` or an ``S32`` array, as ``Samples.keys`` holds them) as an ``S32`` array."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.dtype(KEY_DTYPE):
        return keys
    arr = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys)
    if arr.size == 0:
        return np.zeros(0, dtype=KEY_DTYPE)
    if arr.dtype.kind not in "US" or arr.dtype.itemsize > (4 if arr.dtype.kind == "U" else 1) * 32:
        raise CacheError(f"sample keys must be strings of at most 32 ASCII characters, got {arr.dtype} keys")
    return arr.astype(KEY_DTYPE)


def _heads(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each ``S32`` key as an unsigned integer: ordered like the keys themselves,
    and far quicker to search than 32-byte strings."""
    return np.ascontiguousarray(keys).view(">u8")[::4].astype(np.uint64)


@dataclass
class _Run:
    """One sorted run of the index: ``keys`` ascending (with their ``heads``), and the shard number
    and row of each."""

    keys: np.ndarray
    heads: np.ndarray
    shard: np.ndarray
    row: np.ndarray

    def find(self, keys: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in this run of ``keys`` (with their ``heads``; sorted needles search fastest)
        and which of them are present."""
        if not len(self.keys):
            return np.zeros(len(keys), np.intp), np.zeros(len(keys), bool)
        pos = np.searchsorted(self.heads, heads)
        pos[pos == len(self.keys)] = 0
        here = self.keys[pos] == keys
        tied = np.flatnonzero(~here & (self.heads[pos] == heads))  # another key starts with the same 8 bytes
        if len(tied):
            exact = np.searchsorted(self.keys, keys[tied])
            exact[exact == len(self.keys)] = 0
            pos[tied], here[tied] = exact, self.keys[exact] == keys[tied]
        return pos, here

    def part(self, lo: int, hi: int) -> "_Run":
        """Entries ``lo:hi``."""
        return _Run(self.keys[lo:hi], self.heads[lo:hi], self.shard[lo:hi], self.row[lo:hi])

    @staticmethod
    def build(keys: np.ndarray, shard: np.ndarray, row: np.ndarray) -> "_Run":
        """A run of unsorted entries; where a key repeats, its first entry wins."""
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        order, keys = order[first], keys[first]
        return _Run(keys, _heads(keys), shard[order], row[order])

    @staticmethod
    def merge(older: "_Run", newer: "_Run") -> "_Run":
        """One run holding both; where a key is in both, the older entry wins.  Each of ``newer``'s
        keys goes where a binary search puts it: no sort, and no copy beyond the merged run."""
        _, known = older.find(newer.keys, newer.heads)
        keep = np.flatnonzero(~known)
        heads = newer.heads[keep]
        at = np.searchsorted(older.heads, heads)
        tied = np.flatnonzero(older.heads[np.minimum(at, len(older.heads) - 1)] == heads) if len(older.keys) else []
        at[tied] = np.searchsorted(older.keys, newer.keys[keep[tied]])  # among equal heads, by the whole key
        at += np.arange(len(keep))  # places in the merged run
        new = np.zeros(len(older.keys) + len(keep), bool)
        new[at] = True
        kept = np.flatnonzero(~new)  # places of older's entries
        fields = []
        for a, b in [(older.keys, newer.keys), (older.heads, newer.heads), (older.shard, newer.shard),
                     (older.row, newer.row)]:
            merged = np.empty(len(new), a.dtype)
            merged[at], merged[kept] = b[keep], a
            fields.append(merged)
        return _Run(*fields)


@dataclass
class _Shard:
    """A committed shard as the index knows it: file ``name``, number of ``rows``, and the byte
    ``offset`` of its vectors when they lie contiguously in the file in native byte order (read
    then with one ``preadv``, without HDF5), else ``None``."""

    name: str
    rows: int
    offset: int | None
    stamp: tuple  # (inode, size, mtime) of the file when it was indexed
    checked: tuple | None = None  # the same when its vectors were last found finite


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    """A file's version: (inode, size, mtime), which change if it is ever rewritten."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _layout(vectors) -> int | None:
    """Where an h5py dataset's data starts in its file, when one plain read can fetch it."""
    if vectors.chunks is not None or not vectors.dtype.isnative or not hasattr(os, "preadv"):
        return None
    return vectors.id.get_offset()


def _pread_into(fd: int, offset: int, out: np.ndarray) -> None:
    """Fill the C-contiguous ``out`` with the bytes at ``offset`` of the open file ``fd`` (straight
    into ``out`` where the platform has ``os.preadv``, else through a copy)."""
    view, done = memoryview(out).cast("B"), 0
    while done < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[done:]], offset + done)
        else:
            chunk = os.pread(fd, len(view) - done, offset + done)
            n = len(chunk)
            view[done:done + n] = chunk
        if n == 0:
            raise OSError(f"file ends {len(view) - done} bytes early")
        done += n


def _pread(path: Path, offset: int, out: np.ndarray) -> tuple[int, int, int]:
    """Fill the C-contiguous ``out`` with the bytes at ``offset`` of ``path``; returns the file's
    ``_stamp`` as read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        stamp = _stamp(os.fstat(fd))
        _pread_into(fd, offset, out)
    finally:
        os.close(fd)
    return stamp


def _run_of(records: np.ndarray) -> _Run:
    """The entries of saved-index ``records`` as a ``_Run``."""
    keys = np.ascontiguousarray(records["key"])
    return _Run(keys, _heads(keys), records["shard"], records["row"])


def _records_of(run: _Run) -> np.ndarray:
    """The entries of ``run`` as saved-index records."""
    records = np.empty(len(run.keys), RECORD)
    records["key"], records["shard"], records["row"] = run.keys, run.shard, run.row
    return records


@dataclass
class _Tally:
    """What a process keeps in memory of a saved index, gathered as its records stream past: the
    first key of every page (``fences``) and the number of entries of each shard (``counts``)."""

    page: int
    counts: np.ndarray
    fences: list[np.ndarray] = field(default_factory=list)
    records: int = 0

    def add(self, records: np.ndarray) -> None:
        self.fences.append(records["key"][-self.records % self.page::self.page].copy())
        self.counts += np.bincount(records["shard"], minlength=len(self.counts))
        self.records += len(records)


class _Base:
    """The index as last saved (``SNAPSHOT``), searched on disk through an open descriptor (a newer
    snapshot renamed over the path leaves it as it was): ``count`` records sorted by key, one per
    key, read a page of ``page`` records at a time.  In memory: the ``fences`` (first key of each
    page) and ``counts`` (entries of each shard number)."""

    def __init__(self, fd: int, tally: _Tally) -> None:
        self.fd, self.count, self.page, self.counts = fd, tally.records, tally.page, tally.counts
        self.fences = np.concatenate(tally.fences) if tally.fences else np.zeros(0, KEY_DTYPE)
        self.fence_heads = _heads(self.fences)
        weakref.finalize(self, os.close, fd)

    @staticmethod
    def open(fd: int) -> tuple["_Base", list[_Shard]]:
        """The saved index in ``fd`` and the shards it describes (by number), checked whole
        against its checksum; raises if it is not a whole index as written."""
        size = os.fstat(fd).st_size
        if size < TRAILER.size:
            raise ValueError("too short")
        magic, count, table_size, crc = TRAILER.unpack(os.pread(fd, TRAILER.size, size - TRAILER.size))
        if magic != MAGIC or count * RECORD.itemsize + table_size + TRAILER.size != size:
            raise ValueError("not a featx index, or truncated")
        raw_table = os.pread(fd, table_size, count * RECORD.itemsize)
        shards = [_Shard(name, rows, offset, tuple(stamp), tuple(stamp) if checked else None)
                  for name, rows, offset, stamp, checked in json.loads(raw_table)]
        checksum, tally = 0, _Tally(PAGE, np.zeros(len(shards), np.int64))
        for lo in range(0, count, PAGE * READ_PAGES):
            records = np.empty(min(PAGE * READ_PAGES, count - lo), RECORD)
            _pread_into(fd, lo * RECORD.itemsize, records)
            checksum = zlib.crc32(records, checksum)
            tally.add(records)
        if zlib.crc32(raw_table, checksum) != crc:
            raise ValueError("checksum mismatch")
        return _Base(fd, tally), shards

    def records(self, lo: int, hi: int) -> np.ndarray:
        """Records ``lo:hi``."""
        out = np.empty(hi - lo, RECORD)
        _pread_into(self.fd, lo * RECORD.itemsize, out)
        return out

    def find(self, keys: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shard number and row of each of ``keys`` (with their ``heads``), and which are here:
        each needle's page from the fences, then ``READ_PAGES`` touched pages read at a time."""
        shard, row = np.full(len(keys), -1, np.int32), np.zeros(len(keys), np.int32)
        found = np.zeros(len(keys), bool)
        if not self.count:
            return shard, row, found
        page = np.searchsorted(self.fence_heads, heads, "right") - 1
        tied = np.flatnonzero(self.fence_heads[np.maximum(page, 0)] == heads)  # pages may start with these 8 bytes
        page[tied] = np.searchsorted(self.fences, keys[tied], "right") - 1
        page = np.maximum(page, 0)  # a key before the first fence is not here; page 0 tells so
        order = np.argsort(page, kind="stable")  # already in order but for keys sharing their first 8 bytes
        page = page[order]
        starts = np.append(np.flatnonzero(np.diff(page, prepend=-1)), len(order))  # each touched page's needles
        pages = page[starts[:-1]]
        for g in range(0, len(pages), READ_PAGES):
            needles = order[starts[g]:starts[min(g + READ_PAGES, len(pages))]]
            records = self._pages(pages[g:g + READ_PAGES])
            pos, here = _run_of(records).find(keys[needles], heads[needles])
            hits, pos = needles[here], pos[here]
            shard[hits], row[hits], found[hits] = records["shard"][pos], records["row"][pos], True
        return shard, row, found

    def _pages(self, pages: np.ndarray) -> np.ndarray:
        """The records of ``pages`` (ascending), one after the other: sorted like the base."""
        bounds = np.minimum(np.stack([pages, pages + 1]) * self.page, self.count)
        out = np.empty(int((bounds[1] - bounds[0]).sum()), RECORD)
        spans = np.split(np.arange(len(pages)), np.flatnonzero(np.diff(pages) != 1) + 1)
        at = 0
        for span in spans:  # consecutive pages: one read
            lo, hi = bounds[0, span[0]], bounds[1, span[-1]]
            _pread_into(self.fd, int(lo) * RECORD.itemsize, out[at:at + hi - lo])
            at += hi - lo
        return out


class _Index:
    """Where each stored key lives: the ``base`` saved on disk (``_Base``) and, in memory, the
    ``runs`` of entries indexed since (the delta: sorted numpy runs of key, its first 8 bytes, shard
    number and row, 48 bytes per entry, merged like a binary counter as shards arrive).  The oldest
    entry of a key wins.  Once the delta is full (``delta_full``: at most ``DELTA_MAX`` entries) it
    is merged with the base into a new saved base, so the memory held stays bounded whatever the
    size of the store.

    One per store folder and process, shared by its ``Store`` objects, so a second extraction
    reads only the shards committed since the first.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.base: _Base | None = None
        self.runs: list[_Run] = []
        self.shards: list[_Shard] = []  # by shard number
        self.dead = np.zeros(0, bool)  # by shard number: quarantined or removed (their base entries are skipped)
        self.seen: set[str] = set()
        self.unsaved = 0  # shards indexed from their own files, or checked, since the index was last saved
        self.retry_at = 0  # delta entries beyond which to try saving again after a save failed
        self.lock = threading.RLock()
        self.handles: OrderedDict[str, Any] = OrderedDict()  # the most recently used open shards

    def open(self, name: str):
        """An open read-only handle on shard ``name`` (shards never change once committed, so
        handles are kept, up to ``OPEN_SHARDS``, sparing the reopening on every read)."""
        import h5py

        handle = self.handles.pop(name, None) or h5py.File(self.folder / name, "r")
        self.handles[name] = handle
        while len(self.handles) > OPEN_SHARDS:
            self.handles.popitem(last=False)[1].close()
        return handle

    def close(self, names: set[str]) -> None:
        for name in names & set(self.handles):
            self.handles.pop(name).close()

    def add(self, shards: list[tuple[_Shard, np.ndarray]]) -> None:
        """Index newly read shards: ``(shard, its keys)`` pairs."""
        if not shards:
            return
        number = [np.full(len(keys), len(self.shards) + i, dtype=np.int32) for i, (_, keys) in enumerate(shards)]
        run = _Run.build(np.concatenate([keys for _, keys in shards]), np.concatenate(number),
                         np.concatenate([np.arange(len(keys), dtype=np.int32) for _, keys in shards]))
        for shard, _ in shards:
            self.shards.append(shard)
            self.seen.add(shard.name)
        self.dead = np.append(self.dead, np.zeros(len(shards), bool))
        self.unsaved += len(shards)
        self.runs.append(run)
        while len(self.runs) > 1 and len(self.runs[-2].keys) <= 2 * len(self.runs[-1].keys):
            newer = self.runs.pop()
            self.runs[-1] = _Run.merge(self.runs[-1], newer)

    def delta(self) -> int:
        """Entries held in memory."""
        return sum(len(run.keys) for run in self.runs)

    def delta_full(self) -> bool:
        """Whether the delta outgrew an eighth of the base (at least ``DELTA_MIN``, at most
        ``DELTA_MAX`` entries): rewriting the base then costs little next to what it indexes."""
        limit = min(max(DELTA_MIN, (self.base.count if self.base else 0) // 8), DELTA_MAX)
        return self.delta() > max(limit, self.retry_at)

    def save(self) -> None:
        """Write the base and the delta, merged, as the new base in ``SNAPSHOT`` (atomically) and
        search it from now on; where it cannot be written, the delta stays in memory."""
        self.merge()
        path = self.folder / SNAPSHOT
        tmp = path.with_name(f".tmp-index-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.bin")
        self.unsaved = 0
        try:
            with open(tmp, "xb") as out:
                tally = self._write(out)
            fd = os.open(tmp, os.O_RDONLY)  # kept: the new base, whatever is renamed over the path later
            try:
                os.replace(tmp, path)
            except OSError:
                os.close(fd)
                raise
        except OSError:
            with suppress(OSError):
                tmp.unlink()
            self.retry_at = 2 * self.delta()  # a full disk is not tried again at every look-up
            return
        self.base, self.runs, self.retry_at = _Base(fd, tally), [], 0
        with suppress(OSError):
            (self.folder / FORMER_SNAPSHOT).unlink(missing_ok=True)

    def _write(self, out) -> _Tally:
        """Stream the merged base and delta to ``out`` as records, then the shard table and the
        trailer; a page-sized piece of the base at a time is in memory, never the whole."""
        crc, tally = 0, _Tally(PAGE, np.zeros(len(self.shards), np.int64))

        def emit(records: np.ndarray) -> None:
            nonlocal crc
            out.write(memoryview(records).cast("B"))
            crc = zlib.crc32(records, crc)
            tally.add(records)

        delta = self.runs[0] if self.runs else _Run.build(*(np.zeros(0, t) for t in (KEY_DTYPE, np.int32, np.int32)))
        taken, step, count = 0, PAGE * READ_PAGES, self.base.count if self.base else 0
        for lo in range(0, count, step):
            records = self.base.records(lo, min(lo + step, count))
            upto = len(delta.keys) if lo + step >= count else np.searchsorted(delta.keys, records["key"][-1], "right")
            live = _run_of(records[~self.dead[records["shard"]]])  # dead shards' entries are dropped here
            emit(_records_of(_Run.merge(live, delta.part(taken, upto))))
            taken = upto
        for lo in range(taken, len(delta.keys), step):
            emit(_records_of(delta.part(lo, lo + step)))
        table = json.dumps([[sh.name, sh.rows, sh.offset, list(sh.stamp), sh.checked == sh.stamp]
                            for sh in self.shards]).encode()
        out.write(table)
        out.write(TRAILER.pack(MAGIC, tally.records, len(table), zlib.crc32(table, crc)))
        return tally

    def save_if_due(self) -> None:
        """``save`` once an eighth of the shards were indexed or checked since the last save (so
        all rewrites together cost a few times the final size of the index), or the delta is full."""
        if (self.unsaved and 8 * self.unsaved >= len(self.shards)) or self.delta_full():
            self.save()

    def restore(self, names: set[str]) -> None:
        """Take the index saved in ``SNAPSHOT`` as the base, keeping only shards still there as they
        were then (anything else, or a damaged file, is left for ``Store.refresh`` to read from the
        shards)."""
        try:
            fd = os.open(self.folder / SNAPSHOT, os.O_RDONLY)
        except OSError:
            return
        try:
            base, shards = _Base.open(fd)
        except Exception:  # torn, damaged or foreign: the shards themselves are the truth
            os.close(fd)
            return
        dead = np.ones(len(shards), bool)
        for number, shard in enumerate(shards):
            with suppress(OSError):
                dead[number] = shard.name not in names or _stamp(os.stat(self.folder / shard.name)) != shard.stamp
        self.base, self.shards, self.dead = base, shards, dead
        self.seen = {shard.name for shard, gone in zip(shards, dead) if not gone}

    def compact(self, queries: int) -> None:
        """Merge all delta runs into one when that costs little next to looking up ``queries`` keys
        (reads come after writes: the runs a write built up are merged once, and every later
        look-up searches one run)."""
        if self.delta() <= 4 * queries:
            self.merge()

    def merge(self) -> None:
        """All delta runs into one."""
        if len(self.runs) > 1:
            merged = self.runs[0]
            for run in self.runs[1:]:
                merged = _Run.merge(merged, run)
            self.runs = [merged]

    def forget(self, names: set[str]) -> None:
        """Drop the keys of shards that were quarantined or removed."""
        self.close(names)
        numbers = [i for i, shard in enumerate(self.shards) if shard.name in names]
        if numbers:
            self.dead[numbers] = True
            self.runs = [_Run(r.keys[keep], r.heads[keep], r.shard[keep], r.row[keep]) for r in self.runs
                         for keep in [~np.isin(r.shard, numbers)]]
        self.seen -= names

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shard number and row of each key, and which keys are stored (in blocks: the working
        arrays stay small however many keys are asked for)."""
        if len(keys) <= LOCATE_BLOCK:
            return self._locate_block(keys)
        shard, row, found = (np.empty(len(keys), dtype) for dtype in (np.int32, np.int32, bool))
        for lo in range(0, len(keys), LOCATE_BLOCK):
            hi = lo + LOCATE_BLOCK
            shard[lo:hi], row[lo:hi], found[lo:hi] = self._locate_block(keys[lo:hi])
        return shard, row, found

    def _locate_block(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        heads = _heads(keys)
        order = np.argsort(heads)  # searched in order: each run is walked front to back once
        keys, heads = keys[order], heads[order]
        if self.base:
            shard, row, found = self._find_in_base(keys, heads)
        else:
            shard, row, found = np.full(len(keys), -1, np.int32), np.zeros(len(keys), np.int32), np.zeros(len(keys), bool)
        for run in self.runs:
            pos, here = run.find(keys, heads)
            here &= ~found
            shard[here], row[here] = run.shard[pos[here]], run.row[pos[here]]
            found |= here
        unsorted = np.empty_like(order)
        unsorted[order] = np.arange(len(order))
        return shard[unsorted], row[unsorted], found[unsorted]

    def __len__(self) -> int:
        """Distinct keys stored: the base's entries in live shards, and the delta's keys not among them."""
        self.merge()  # two writers may have raced on a key
        delta = self.runs[0].keys if self.runs else np.zeros(0, KEY_DTYPE)
        if not self.base:
            return len(delta)
        count = int(self.base.counts[~self.dead[:len(self.base.counts)]].sum()) + len(delta)
        for lo in range(0, len(delta), LOCATE_BLOCK):
            block = delta[lo:lo + LOCATE_BLOCK]
            count -= int(self._find_in_base(block, _heads(block))[2].sum())
        return count

    def _find_in_base(self, keys: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_Base.find``, where an entry of a dead shard is not found (and hides no newer one in the delta)."""
        shard, row, found = self.base.find(keys, heads)
        found[found] = ~self.dead[shard[found]]
        return shard, row, found


_indexes: dict[str, _Index] = {}
_indexes_lock = threading.Lock()


class Store:
    """The embeddings of one backbone configuration: look up, read and append by sample key."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self.dim: int = meta["dim"]
        self.dtype: str = meta["dtype"]
        with _indexes_lock:
            folder = os.path.realpath(path)
            self._index = _indexes.setdefault(folder, _Index(Path(folder)))
        self._owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def refresh(self) -> None:
        """Index shards committed since the last look (by this or any other process), and forget
        shards that are gone."""
        try:
            names = {n for n in os.listdir(self.path) if n.startswith("shard-") and n.endswith(".h5")}
        except FileNotFoundError:
            names = set()
        with self._index.lock:
            if not self._index.shards and names:
                self._index.restore(names)
            self._index.forget(self._index.seen - names)
            read, pending = [], 0
            for name in sorted(names - self._index.seen):
                try:
                    f = self._index.open(name)
                    keys, vectors = f["keys"][...], f["vectors"]
                    if vectors.shape != (len(keys), self.dim) or keys.dtype != np.dtype(KEY_DTYPE):
                        raise ValueError(f"vectors shape {vectors.shape} for {len(keys)} {keys.dtype} keys")
                    offset = _layout(vectors)
                    stamp = _stamp(os.stat(self.path / name))
                except Exception as exc:
                    self._quarantine(name, f"unreadable ({type(exc).__name__}: {exc})")
                    continue
                read.append((_Shard(name, len(keys), offset, stamp), keys))
                pending += len(keys)
                if pending >= DELTA_MIN:  # many shards to read (no saved index): a piece at a time
                    self._index.add(read)
                    read, pending = [], 0
                    if self._index.delta_full():
                        self._index.save()
            self._index.add(read)
            self._index.save_if_due()

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._index.lock:
            return self._index.locate(keys)

    def _quarantine(self, shard: str, reason: str) -> None:
        """Move a damaged shard aside (never delete it) and forget its keys; they will be re-embedded."""
        target = self.path / "quarantine"
        with self._index.lock:
            self._index.close({shard})
        try:
            target.mkdir(exist_ok=True)
            os.replace(self.path / shard, target / shard)
            (target / f"{shard}.reason.txt").write_text(reason + "\n")
        except FileNotFoundError:
            pass  # another process quarantined it first
        except OSError as exc:
            raise CacheError(f"cache shard {str(self.path / shard)!r} is damaged ({reason}) and cannot be moved to "
                             f"quarantine ({exc.strerror}); move it away by hand") from None
        with self._index.lock:
            self._index.forget({shard})
        warnings.warn(f"cache shard {shard} in {str(self.path)!r} is damaged ({reason}); moved to quarantine/, "
                      f"its samples will be embedded again", CacheWarning, stacklevel=3)

    def __len__(self) -> int:
        self.refresh()
        with self._index.lock:
            return len(self._index)

    def contains(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Boolean mask: which ``keys`` are already stored."""
        self.refresh()
        return self._locate(as_keys(keys))[2]

    def get(self, keys: Sequence[str] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Vectors for ``keys`` (all must be stored), as float32 ``(len(keys), dim)``, written into
        ``out`` when given (no second copy of a large matrix)."""
        keys = as_keys(keys)
        out = np.empty((len(keys), self.dim), dtype=np.float32) if out is None else out
        entries = self.read(keys, out)
        if (entries < 0).any():
            missing = keys[np.argmin(entries)].decode()
            raise CacheError(f"sample key {missing} is not in the cache store {str(self.path)!r}")
        return out

    def read(self, keys: Sequence[str] | np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the vectors of whichever ``keys`` are stored into their rows of ``out`` (float32
        ``(len(keys), dim)``; other rows are left as they are) and return each key's entry number
        in the store: equal keys, equal numbers; -1 for keys not stored.

        >>> import tempfile, numpy as np
        >>> store = EmbeddingCache(tempfile.mkdtemp()).store("fp0", name="demo", dim=2)
        >>> store.put(["k1"], np.ones((1, 2), np.float32))
        >>> out = np.zeros((3, 2), np.float32)
        >>> (store.read(["k1", "k2", "k1"], out) >= 0).tolist(), out[:, 0].tolist()
        ([True, False, True], [1.0, 0.0, 1.0])
        """
        keys = as_keys(keys)
        if out.shape != (len(keys), self.dim):
            raise CacheError(f"read: out has shape {out.shape}; pass an array of shape ({len(keys)}, {self.dim}), "
                             f"one row per key")
        self.refresh()
        with self._index.lock:
            self._index.compact(len(keys))
            shard, row, found = self._index.locate(keys)
        hits = np.flatnonzero(found)
        order = hits[np.argsort(shard[hits], kind="stable")]
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        for dest in np.split(order, bounds) if len(order) else []:
            self._read(self._index.shards[shard[dest[0]]], row[dest], out, dest)
        with self._index.lock:
            self._index.save_if_due()
        return np.where(found, shard.astype(np.int64) << 32 | row, -1)

    def _read(self, shard: _Shard, rows: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        """Copy rows ``rows`` of ``shard`` into ``out[dest]`` (``dest`` ascending); a shard that
        fails to read or holds non-finite vectors is quarantined and ``DamagedShardError`` raised."""
        whole = len(rows) * 4 >= shard.rows  # most of the shard: read all of it in one go
        in_place = (shard.offset is not None and len(rows) == shard.rows and dest[-1] - dest[0] == len(dest) - 1
                    and out.dtype == self.dtype and out.flags.c_contiguous and (rows == np.arange(len(rows))).all())
        stamp = None  # the file as read, when read whole without HDF5
        try:
            if whole and shard.offset is not None:
                block = out[dest[0]:dest[-1] + 1] if in_place else np.empty((shard.rows, self.dim), self.dtype)
                stamp = _pread(self.path / shard.name, shard.offset, block)
            elif whole:
                with self._index.lock:
                    block = self._index.open(shard.name)["vectors"][...]
            else:
                unique_rows, inverse = np.unique(rows, return_inverse=True)
                with self._index.lock:
                    block, rows = self._index.open(shard.name)["vectors"][unique_rows], inverse
        except Exception as exc:
            self._quarantine(shard.name, f"read failed ({type(exc).__name__}: {exc})")
            raise DamagedShardError(f"cache shard {shard.name} failed while being read and was quarantined") from None
        if stamp is None or stamp != shard.checked:  # a file checked whole is checked again only if rewritten
            if not (np.isfinite(block.min()) and np.isfinite(block.max())):  # NaN and ±inf reach min or max
                self._quarantine(shard.name, "vectors contain NaN or infinity")
                raise DamagedShardError(f"cache shard {shard.name} holds non-finite vectors and was quarantined")
            if stamp is not None:
                shard.checked = stamp
                self._index.unsaved += 1
        if not in_place:
            out[dest] = block[rows]

    def put(self, keys: Sequence[str] | np.ndarray, vectors: np.ndarray) -> None:
        """Append one shard, atomically: after a crash it is either whole or absent."""
        import h5py

        keys = as_keys(keys)
        if len(keys) == 0:
            return
        vectors = np.asarray(vectors)
        if vectors.shape != (len(keys), self.dim):
            raise CacheError(f"put: {len(keys)} keys but vectors of shape {vectors.shape} (dim {self.dim})")
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        tmp = self.path / f".tmp-{name}"
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("keys", data=keys)
                f.create_dataset("vectors", data=vectors.astype(self.dtype, copy=False))
                f.attrs["fingerprint"] = self.meta["fingerprint"]
                f.flush()
                os.fsync(f.id.get_vfd_handle())
            os.replace(tmp, self.path / name)
            _fsync_dir(self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _writable_or_raise(self.path, exc) from None

    def verify(self) -> VerifyReport:
        """Check every shard completely (read-only)."""
        report = VerifyReport(self.path.name)
        for shard in sorted(self.path.glob("shard-*.h5")):
            problem = check_shard(shard, self.meta)
            if problem:
                report.damaged[shard.name] = problem
            else:
                report.healthy += 1
        report.temporary = sorted(p.name for p in self.path.glob(".tmp-*") if self._orphaned(p))
        return report

    def repair(self) -> VerifyReport:
        """Quarantine damaged shards and delete orphaned temporary files; healthy shards stay as they are."""
        report = self.verify()
        for shard, problem in report.damaged.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheWarning)
                self._quarantine(shard, problem)
            report.quarantined.append(shard)
        for name in report.temporary:
            (self.path / name).unlink(missing_ok=True)
        return report

    @staticmethod
    def _orphaned(tmp: Path) -> bool:
        """A temporary file whose writer is gone: its pid is dead here, or it is too old to be in use."""
        try:
            age = time.time() - tmp.stat().st_mtime
        except FileNotFoundError:
            return False
        parts = tmp.name.split("-")
        pid = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
        return age > TMP_TIMEOUT or (pid is not None and not _pid_alive(pid))

    # -- work claims: several writers (processes, machines on a shared filesystem) split the misses --
    @contextmanager
    def _locked(self):
        import fcntl

        try:
            handle = open(self.path / ".lock", "a+")
        except OSError as exc:
            raise _writable_or_raise(self.path, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def _live_claims(self) -> np.ndarray:
        claimed: list[str] = []
        host = socket.gethostname()
        for path in (self.path / "claims").glob("*.json"):
            try:
                claim = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written or removed right now
            stale = (claim.get("host") == host and not _pid_alive(claim["pid"])) or \
                time.time() - claim.get("time", 0) > CLAIM_TIMEOUT
            if stale:
                path.unlink(missing_ok=True)
            elif claim.get("owner") != self._owner:
                claimed.extend(claim["keys"])
        return as_keys(claimed)

    def claim(self, keys: Sequence[str] | np.ndarray, limit: int) -> tuple[list[str], int]:
        """Take up to ``limit`` of ``keys`` that are neither stored nor claimed by another live writer.

        Returns ``(claimed, waiting)``: the keys this writer must embed now, and how many of the
        rest are being embedded by others.  Release with ``release()`` after committing.
        """
        keys = as_keys(keys)
        status = self.claim_status(keys, limit)
        return [k.decode() for k in keys[status == MINE]], int((status == WAITING).sum())

    def claim_status(self, keys: np.ndarray, limit: int) -> np.ndarray:
        """``claim`` for an ``S32`` key array: each key's status, ``STORED``, ``MINE`` (claimed now,
        at most ``limit``), ``WAITING`` (another writer holds it) or ``FREE`` (beyond the limit)."""
        with self._locked():
            # claims before shards: a writer commits its shard *then* drops its claim, so a key whose
            # claim is gone by now is already visible to the refresh that follows
            others = self._live_claims()
            self.refresh()
            status = np.full(len(keys), FREE, dtype=np.int8)
            status[self._locate(keys)[2]] = STORED
            status[(status == FREE) & np.isin(keys, others)] = WAITING
            free = np.flatnonzero(status == FREE)
            _, first = np.unique(keys[free], return_index=True)  # a key listed twice is claimed once
            status[free[np.sort(first)][:limit]] = MINE
            mine = keys[status == MINE]
            if len(mine):
                claims = self.path / "claims"
                claims.mkdir(exist_ok=True)
                body = {"owner": self._owner, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                        "keys": [k.decode() for k in mine]}
                write_json_atomic(claims / f"{self._owner}.json", body)
            return status

    def release(self) -> None:
        """Drop this writer's claim (after its shard is committed, or on failure)."""
        (self.path / "claims" / f"{self._owner}.json").unlink(missing_ok=True)

    def info(self) -> StoreInfo:
        shards = list(self.path.glob("shard-*.h5"))
        return StoreInfo(
            key=self.path.name, name=self.meta.get("name", ""), fingerprint=self.meta["fingerprint"],
            dim=self.dim, dtype=self.dtype, count=len(self), shards=len(shards),
            bytes=sum(p.stat().st_size for p in shards), path=self.path,
        )


class EmbeddingCache:
    """A cache directory holding one ``Store`` per backbone configuration."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    @property
    def keys_dir(self) -> Path:
        """Where the keys of recently seen lists of short texts are kept (``datasets.as_samples``)."""
        return self.root / "texts"

    @staticmethod
    def store_key(fingerprint: str, dtype: str = "float32") -> str:
        from ._fs import digest

        return digest("featx-store-v1", fingerprint, dtype)

    def store(self, fingerprint: str, *, name: str, dim: int, dtype: str = "float32",
              views: dict[str, slice] | None = None) -> Store:
        """The store for a backbone ``fingerprint`` (created on first use)."""
        if dtype not in STORAGE_DTYPES:
            raise CacheError(f"storage dtype {dtype!r} is not supported; use one of {STORAGE_DTYPES}")
        path = self.root / self.store_key(fingerprint, dtype)
        meta_path = path / "meta.json"
        if meta_path.exists():
            return Store(path, self._read_meta(meta_path))
        meta = {
            "format": "featx-store-v1", "name": name, "fingerprint": fingerprint, "dim": int(dim),
            "dtype": dtype, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "views": {k: [s.start, s.stop] for k, s in (views or {"all": slice(0, dim)}).items()},
        }
        try:
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(meta_path, meta, indent=2)
        except OSError as exc:
            raise _writable_or_raise(self.root, exc) from None
        return Store(path, meta)

    @staticmethod
    def _read_meta(meta_path: Path) -> dict:
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"cache metadata {str(meta_path)!r} is unreadable ({exc}); run `featx cache verify`") from None

    def stores(self) -> list[Store]:
        """Every store in the cache directory."""
        if not self.root.is_dir():
            return []
        return [Store(p.parent, self._read_meta(p)) for p in sorted(self.root.glob("*/meta.json"))]

    def find(self, prefix: str) -> Store:
        """The store whose key, fingerprint or backbone name starts with / equals ``prefix``."""
        matches = [s for s in self.stores()
                   if s.path.name.startswith(prefix) or s.meta["fingerprint"].startswith(prefix)
                   or s.meta.get("name") == prefix]
        if len(matches) != 1:
            what = "no store" if not matches else f"{len(matches)} stores"
            raise CacheError(f"{what} in {str(self.root)!r} match {prefix!r}; see `featx cache ls`")
        return matches[0]
