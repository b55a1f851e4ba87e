"""Content-addressed embedding cache: one store per backbone configuration, HDF5 shards, a SQLite index.

``put`` writes one immutable shard (``shards``) and registers it in the store's index after its
rename (``index``); ``layout`` names the folder's files.  Opening a store adopts the shards on disk
that its index does not know (a writer killed between rename and commit, or a folder of an earlier
featx) and forgets those whose file is gone; a damaged shard is quarantined, its samples missing.

>>> import tempfile, numpy as np
>>> store = EmbeddingCache(tempfile.mkdtemp()).store("fp0", name="demo", dim=2)
>>> store.put(["k1"], np.ones((1, 2), np.float32))
>>> out = np.zeros((3, 2), np.float32)
>>> (store.read(["k1", "k2", "k1"], out) >= 0).tolist(), out[:, 0].tolist(), len(store)
([True, False, True], [1.0, 0.0, 1.0], 1)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._fs import digest, write_json_atomic
from ..errors import CacheError
from . import shards
from .index import CLAIM_TIMEOUT, FREE, HOST, MINE, STORED, WAITING, Index, pid_alive
from .layout import META, RESULTS, StoreFolder, writer_pid

__all__ = ["EmbeddingCache", "Store", "StoreInfo", "VerifyReport", "CacheWarning", "DamagedShardError", "as_keys",
           "default_cache_dir", "STORED", "MINE", "WAITING", "FREE", "CLAIM_TIMEOUT", "TMP_TIMEOUT"]
STORAGE_DTYPES = ("float32", "float16")
TMP_TIMEOUT = 600.0  # seconds before a temporary file whose writer cannot be told dead is garbage
_indexes: dict[str, Index] = {}  # one per store folder and process, shared by its Store objects
_indexes_lock = threading.Lock()


class CacheWarning(UserWarning):
    """A damaged shard was quarantined; its samples will be embedded again."""


class DamagedShardError(CacheError):
    """A shard failed while being read; it has been quarantined."""


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


@dataclass
class StoreInfo:
    """What ``featx cache ls`` shows for one store (``bytes``: all of its folder)."""

    key: str
    name: str
    fingerprint: str
    dim: int
    dtype: str
    count: int
    shards: int
    bytes: int
    path: Path
    options: dict | None
    created: str  # ISO 8601, UTC
    last_used: float  # epoch seconds of the last read or write


def default_cache_dir() -> Path:
    """``$FEATX_CACHE_DIR`` if set, else ``./cache``."""
    return Path(os.environ.get("FEATX_CACHE_DIR") or "cache")


def as_keys(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """Sample keys (``str``, or an ``S32`` array as ``Samples.keys`` holds them) as an ``S32`` array."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.dtype(shards.KEY_DTYPE):
        return keys
    arr = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys))
    if arr.size == 0:
        return np.zeros(0, shards.KEY_DTYPE)
    if arr.dtype.kind in "US" and arr.dtype.itemsize <= (4 if arr.dtype.kind == "U" else 1) * 32:
        with suppress(UnicodeError):
            raw = (arr := arr.astype(shards.KEY_DTYPE)).view(np.uint8)
            if not ((raw > 126) | ((raw < 32) & (raw != 0)) | (raw == ord('"')) | (raw == ord("\\"))).any():
                return arr
    raise CacheError(f"sample keys must be strings of at most 32 printable ASCII characters other than quotes and "
                     f"backslashes; got {arr.dtype} keys such as {arr.flat[0]!r}")


@contextmanager
def _writing_to(path: Path) -> Iterator[None]:
    """OS and SQLite errors inside as a ``CacheError`` naming ``path`` and the fix."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        code = exc.errno if isinstance(exc, OSError) else {13: errno.ENOSPC, 8: errno.EACCES, 3: errno.EACCES}.get(
            getattr(exc, "sqlite_errorcode", 0) & 0xFF)  # SQLITE_FULL, SQLITE_READONLY, SQLITE_PERM
        hint = {errno.ENOSPC: "the disk is full; free space or pass another cache_dir",
                errno.EACCES: "it is not writable; fix its permissions or pass another cache_dir",
                errno.EPERM: "it is not writable; fix its permissions or pass another cache_dir",
                errno.EROFS: "it is on a read-only filesystem; pass another cache_dir"}.get(code, "pass another cache_dir")
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CacheError(f"cannot write to the embedding cache {str(path)!r}: {reason} — {hint}") from None


class Store:
    """The embeddings of one backbone configuration: look up, read and append by sample key."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.folder, self.path, self.meta = StoreFolder(path), Path(path), meta
        self.dim: int = meta["dim"]
        self.dtype: str = meta["dtype"]
        with _indexes_lock:
            self.index = _indexes.setdefault(os.path.realpath(path), Index(self.folder.index, self.folder.quarantine))
        self._token = uuid.uuid4().hex[:8]
        with _writing_to(self.path):
            self._sync()

    def _sync(self) -> None:
        """Adopt the shards on disk that the index does not know; forget those whose file is gone."""
        known = {shard[0] for shard in self.index.shards().values()}  # connects: a read-only index is known then
        if self.index.read_only or self.folder.shards() == known:
            return
        damaged = {}
        with self.index.writing() as db:  # shards are renamed and registered with this lock held: look again
            on_disk, known = self.folder.shards(), {shard[0] for shard in self.index.shards().values()}
            for name in known - on_disk:
                Index.drop(db, name, None)
            for name in sorted(on_disk - known):
                try:
                    keys, offset = shards.inspect(self.path / name, self.meta)
                except ValueError as exc:
                    damaged[name] = str(exc)
                else:
                    Index.register(db, name, keys, shards.stamp(self.path / name), offset)
        for name, problem in damaged.items():
            self._quarantine(name, problem)
        for former in self.folder.former_indexes():
            former.unlink()

    def _quarantine(self, name: str, reason: str) -> None:
        """Move a damaged shard aside (never delete it), with the reason beside it, and forget its keys."""
        try:
            self.folder.quarantine.mkdir(exist_ok=True)
            os.replace(self.path / name, self.folder.quarantine / name)
            (self.folder.quarantine / f"{name}.reason.txt").write_text(reason + "\n")
        except FileNotFoundError:
            pass  # another process quarantined it first
        except OSError as exc:
            raise CacheError(f"cache shard {str(self.path / name)!r} is damaged ({reason}) and cannot be moved to "
                             f"quarantine ({exc.strerror}); move it away by hand") from None
        with _writing_to(self.path), self.index.writing() as db:
            Index.drop(db, name, reason)
        warnings.warn(f"cache shard {name} in {str(self.path)!r} is damaged ({reason}); moved to quarantine/, "
                      f"its samples will be embedded again", CacheWarning, stacklevel=4)

    def __len__(self) -> int:
        return self.index.count()

    def contains(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Boolean mask: which ``keys`` are stored."""
        return self.index.lookup(as_keys(keys)) >= 0

    def get(self, keys: Sequence[str] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Vectors for ``keys`` (all must be stored), as float32 ``(len(keys), dim)``, written into
        ``out`` when given (no second copy of a large matrix)."""
        keys = as_keys(keys)
        out = np.empty((len(keys), self.dim), dtype=np.float32) if out is None else out
        entries = self.read(keys, out)
        if (entries < 0).any():
            raise CacheError(f"sample key {keys[np.argmin(entries)].decode()} is not in the cache store {str(self.path)!r}")
        return out

    def read(self, keys: Sequence[str] | np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the vectors of whichever ``keys`` are stored into their rows of ``out``.

        Parameters
        ----------
        keys : sequence of str or ``S32`` array
            Sample keys (see ``as_keys``).
        out : float32 array of shape ``(len(keys), dim)``
            Receives the stored vectors; the rows of keys not stored stay as they are.

        Returns
        -------
        int64 array
            Each key's entry number in the store, ``shard << 32 | row`` (equal keys, equal numbers),
            -1 where not stored.  A shard found damaged is quarantined and ``DamagedShardError``
            raised (read again: its samples are then missing); one whose file is gone is forgotten.
        """
        keys = as_keys(keys)
        if out.shape != (len(keys), self.dim):
            raise CacheError(f"read: out has shape {out.shape}; pass an array of shape ({len(keys)}, {self.dim}), "
                             f"one row per key")
        entries = self.index.lookup(keys)
        found = np.flatnonzero(entries >= 0)
        order = found[np.argsort(entries[found], kind="stable")]  # by shard, then row
        ids = entries[order] >> 32
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(order) else np.zeros(0, int)
        live = {i: shards.Shard(self.path / name, *rest) for i, (name, *rest) in self.index.shards(ids[starts]).items()}
        for dest in np.split(order, starts[1:]) if len(order) else []:
            shard = live.get(int(entries[dest[0]] >> 32))  # None: quarantined by another process since
            if shard is None or not self._read(shard, entries[dest] & 0xFFFFFFFF, out, dest):
                entries[dest] = -1
        with suppress(OSError):
            os.utime(self.folder.meta)  # the store's last use
        return entries

    def _read(self, shard: shards.Shard, rows: np.ndarray, out: np.ndarray, dest: np.ndarray) -> bool:
        """Rows of ``shard`` into ``out[dest]``, checked finite if its file changed since it was
        registered; ``False`` if its file is gone."""
        name = shard.path.name
        try:
            shards.read(shard, self.dtype, rows, out, dest, check=shards.stamp(shard.path) != shard.stamp)
            return True
        except FileNotFoundError:
            with _writing_to(self.path), self.index.writing() as db:
                Index.drop(db, name, None)
            return False
        except Exception as exc:  # h5py reports truncation and corruption as OSError/KeyError/...
            reason = str(exc) if isinstance(exc, ValueError) else f"read failed ({type(exc).__name__}: {exc})"
            self._quarantine(name, reason)
            raise DamagedShardError(f"cache shard {name} in {str(self.path)!r} was damaged ({reason}) and is "
                                    f"quarantined: read again to find its samples missing") from None

    def put(self, keys: Sequence[str] | np.ndarray, vectors: np.ndarray) -> None:
        """Append one shard: written whole under a temporary name, renamed, registered in the index
        (a kill between the last two leaves a whole shard that the next opening adopts)."""
        keys, vectors = as_keys(keys), np.asarray(vectors)
        if not len(keys):
            return
        if vectors.shape != (len(keys), self.dim):
            raise CacheError(f"put: {len(keys)} keys but vectors of shape {vectors.shape} (dim {self.dim})")
        if not shards.finite(vectors):
            raise CacheError("put: the vectors hold NaN or infinity; the cache stores finite vectors only")
        tmp, final = self.folder.new_shard()
        with _writing_to(self.path):
            try:
                offset = shards.write(tmp, keys, vectors.astype(self.dtype, copy=False), self.meta["fingerprint"])
                with self.index.writing() as db:
                    shards.publish(tmp, final)
                    Index.register(db, final.name, keys, shards.stamp(final), offset)
            finally:
                tmp.unlink(missing_ok=True)
        with suppress(OSError):
            os.utime(self.folder.meta)  # the store's last use

    # -- work claims: writers (processes, Ray actors) split the misses; each embeds what it claimed --
    @property
    def _owner(self) -> str:
        return f"{HOST}-{os.getpid()}-{self._token}"  # a forked child is another writer

    def claim_status(self, keys: np.ndarray, limit: int) -> np.ndarray:
        """Each key's status: ``STORED``, ``MINE`` (claimed now by this writer, at most ``limit``),
        ``WAITING`` (another live writer embeds it) or ``FREE`` (beyond the limit).  ``release()``
        once the shard is committed."""
        with _writing_to(self.path):
            return self.index.claim(as_keys(keys), limit, self._owner)

    def claim(self, keys: Sequence[str] | np.ndarray, limit: int) -> tuple[list[str], int]:
        """``claim_status`` as ``(keys this writer must embed now, how many others are embedding)``."""
        keys = as_keys(keys)
        status = self.claim_status(keys, limit)
        return [k.decode() for k in keys[status == MINE]], int((status == WAITING).sum())

    def release(self) -> None:
        """Drop this writer's claims (after its shard is committed, or on failure)."""
        with _writing_to(self.path):
            self.index.release(self._owner)

    def verify(self) -> VerifyReport:
        """Check every shard completely (read-only)."""
        report = VerifyReport(self.path.name)
        for name in sorted(self.folder.shards()):
            try:
                shards.inspect(self.path / name, self.meta)
                report.healthy += 1
            except ValueError as exc:
                report.damaged[name] = str(exc)
        report.temporary = [p.name for p in self.folder.temporaries() if _orphaned(p)]
        return report

    def repair(self) -> VerifyReport:
        """Quarantine damaged shards and delete orphaned temporaries; healthy shards stay as they are."""
        report = self.verify()
        for name, problem in report.damaged.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheWarning)
                self._quarantine(name, problem)
            report.quarantined.append(name)
        for name in report.temporary:
            (self.path / name).unlink(missing_ok=True)
        return report

    def info(self) -> StoreInfo:
        m = self.meta
        return StoreInfo(self.path.name, m.get("name", ""), m["fingerprint"], self.dim, self.dtype, len(self),
                         len(self.folder.shards()), sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()),
                         self.path, m.get("options"), m.get("created", ""), self.folder.meta.stat().st_mtime)


def _orphaned(tmp: Path) -> bool:
    """A temporary file whose writer is gone: its pid is dead here, or it is too old to be in use."""
    with suppress(FileNotFoundError):
        pid = writer_pid(tmp)
        return time.time() - tmp.stat().st_mtime > TMP_TIMEOUT or (pid is not None and not pid_alive(pid))
    return False


class EmbeddingCache:
    """A cache directory holding one ``Store`` per backbone configuration (see ``layout``)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.results_dir = self.root / RESULTS  # the sweep's cached cross-validation results

    @staticmethod
    def store_key(fingerprint: str, dtype: str = "float32") -> str:
        return digest("featx-store-v1", fingerprint, dtype)

    def store(self, fingerprint: str, *, name: str, dim: int, dtype: str = "float32",
              views: dict[str, slice] | None = None, options: dict | None = None) -> Store:
        """The store of one backbone configuration, created on first use.

        Parameters
        ----------
        fingerprint : str
            The backbone's fingerprint (``Backbone.fingerprint()``); with ``dtype``, the store's key.
        name, dim, views, options
            The backbone's name, output width, named column ranges and settings (``Backbone.options``),
            recorded in the new store's metadata for display.
        dtype : {"float32", "float16"}
            How the vectors are stored.

        Returns
        -------
        Store
        """
        if dtype not in STORAGE_DTYPES:
            raise CacheError(f"storage dtype {dtype!r} is not supported; use one of {STORAGE_DTYPES}")
        folder = StoreFolder(self.root / self.store_key(fingerprint, dtype))
        if folder.meta.exists():
            return Store(folder.path, _read_meta(folder.meta))
        meta = {"format": "featx-store-v1", "name": name, "fingerprint": fingerprint, "dim": int(dim), "dtype": dtype,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "options": options,
                "views": {k: [s.start, s.stop] for k, s in (views or {"all": slice(0, dim)}).items()}}
        with _writing_to(self.root):
            folder.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder.meta, meta, indent=2)
        return Store(folder.path, meta)

    def stores(self) -> list[Store]:
        """Every store in the cache directory."""
        return [Store(p.parent, _read_meta(p)) for p in sorted(self.root.glob(f"*/{META}"))]

    def find(self, prefix: str) -> Store:
        """The store whose key, fingerprint or backbone name starts with / equals ``prefix``."""
        matches = [s for s in self.stores() if s.path.name.startswith(prefix)
                   or s.meta["fingerprint"].startswith(prefix) or s.meta.get("name") == prefix]
        if len(matches) != 1:
            what = "no store" if not matches else f"{len(matches)} stores"
            raise CacheError(f"{what} in {str(self.root)!r} match {prefix!r}; see `featx cache ls`")
        return matches[0]

    def remove(self, prefix: str) -> StoreInfo:
        """Delete one store with all its files (its metadata first: a removal cut short leaves files
        but no store).

        Parameters
        ----------
        prefix : str
            Names the store as ``find`` does: a prefix of its key or fingerprint, or its backbone name.

        Returns
        -------
        StoreInfo
            What the store held.
        """
        store = self.find(prefix)
        info = store.info()
        with _indexes_lock:
            _indexes.pop(os.path.realpath(store.path), None)
        with _writing_to(store.path):
            store.folder.meta.unlink()
            shutil.rmtree(store.path)
        return info

    def prune(self, older_than: float) -> list[StoreInfo]:
        """Delete the stores not read or written for ``older_than`` seconds.

        Parameters
        ----------
        older_than : float
            Seconds since a store's last use (``StoreInfo.last_used``).

        Returns
        -------
        list of StoreInfo
            What the removed stores held.
        """
        now = time.time()
        return [self.remove(s.path.name) for s in self.stores() if now - s.folder.meta.stat().st_mtime > older_than]


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"cache metadata {str(path)!r} is unreadable ({exc}); run `featx cache verify`") from None
