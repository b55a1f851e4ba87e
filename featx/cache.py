"""Content-addressed embedding cache: one folder per backbone configuration, append-only HDF5 shards.

    cache_dir/
      <store key>/            store key = digest(backbone fingerprint, storage dtype)
        meta.json             backbone name, fingerprint, dim, dtype, views
        shard-<ns>-<pid>-<rand>.h5   datasets "keys" (n,) S32 and "vectors" (n, dim)

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
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .backbones.base import write_json_atomic
from .errors import CacheError

STORAGE_DTYPES = ("float32", "float16")
KEY_DTYPE = "S32"
CLAIM_TIMEOUT = float(os.environ.get("FEATX_CLAIM_TIMEOUT", 600))  # seconds before another host's claim is stale
TMP_TIMEOUT = 600.0  # seconds before an orphaned temporary shard is garbage


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


class Store:
    """The embeddings of one backbone configuration: look up, read and append by sample key."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self.dim: int = meta["dim"]
        self.dtype: str = meta["dtype"]
        self._index: dict[str, tuple[str, int]] = {}
        self._seen: set[str] = set()
        self._owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def refresh(self) -> None:
        """Index shards committed since the last look (by this or any other process)."""
        import h5py

        for shard in sorted(p.name for p in self.path.glob("shard-*.h5")):
            if shard in self._seen:
                continue
            try:
                with h5py.File(self.path / shard, "r") as f:
                    keys = f["keys"][...]
                    if f["vectors"].shape != (len(keys), self.dim):
                        raise ValueError(f"vectors shape {f['vectors'].shape} for {len(keys)} keys")
            except Exception as exc:
                self._quarantine(shard, f"unreadable ({type(exc).__name__}: {exc})")
                continue
            for row, key in enumerate(keys):
                self._index.setdefault(key.decode(), (shard, row))
            self._seen.add(shard)

    def _quarantine(self, shard: str, reason: str) -> None:
        """Move a damaged shard aside (never delete it) and forget its keys; they will be re-embedded."""
        target = self.path / "quarantine"
        try:
            target.mkdir(exist_ok=True)
            os.replace(self.path / shard, target / shard)
            (target / f"{shard}.reason.txt").write_text(reason + "\n")
        except FileNotFoundError:
            pass  # another process quarantined it first
        except OSError as exc:
            raise CacheError(f"cache shard {str(self.path / shard)!r} is damaged ({reason}) and cannot be moved to "
                             f"quarantine ({exc.strerror}); move it away by hand") from None
        self._index = {k: v for k, v in self._index.items() if v[0] != shard}
        self._seen.discard(shard)
        warnings.warn(f"cache shard {shard} in {str(self.path)!r} is damaged ({reason}); moved to quarantine/, "
                      f"its samples will be embedded again", CacheWarning, stacklevel=3)

    def __len__(self) -> int:
        self.refresh()
        return len(self._index)

    def contains(self, keys: Sequence[str]) -> np.ndarray:
        """Boolean mask: which ``keys`` are already stored."""
        self.refresh()
        return np.fromiter((k in self._index for k in keys), dtype=bool, count=len(keys))

    def get(self, keys: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Vectors for ``keys`` (all must be stored), as float32 ``(len(keys), dim)``, written into
        ``out`` when given (no second copy of a large matrix)."""
        import h5py

        self.refresh()
        out = np.empty((len(keys), self.dim), dtype=np.float32) if out is None else out
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        try:
            for i, key in enumerate(keys):
                shard, row = self._index[key]
                dest, rows = by_shard.setdefault(shard, ([], []))
                dest.append(i)
                rows.append(row)
        except KeyError as exc:
            raise CacheError(f"sample key {exc.args[0]} is not in the cache store {str(self.path)!r}") from None
        for shard, (dest, rows) in by_shard.items():
            rows_arr = np.asarray(rows)
            try:
                with h5py.File(self.path / shard, "r") as f:
                    vectors = f["vectors"]
                    if len(rows_arr) * 4 >= vectors.shape[0]:  # most of the shard: one contiguous read
                        picked, dest_rows = vectors[...][rows_arr], np.asarray(dest)
                    else:
                        order = np.argsort(rows_arr)
                        unique_rows, inverse = np.unique(rows_arr[order], return_inverse=True)
                        picked, dest_rows = vectors[unique_rows][inverse], np.asarray(dest)[order]
            except Exception as exc:
                self._quarantine(shard, f"read failed ({type(exc).__name__}: {exc})")
                raise DamagedShardError(f"cache shard {shard} failed while being read and was quarantined") from None
            if not np.isfinite(picked).all():
                self._quarantine(shard, "vectors contain NaN or infinity")
                raise DamagedShardError(f"cache shard {shard} holds non-finite vectors and was quarantined")
            out[dest_rows] = picked
        return out

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append one shard, atomically: after a crash it is either whole or absent."""
        import h5py

        if len(keys) == 0:
            return
        vectors = np.asarray(vectors)
        if vectors.shape != (len(keys), self.dim):
            raise CacheError(f"put: {len(keys)} keys but vectors of shape {vectors.shape} (dim {self.dim})")
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        tmp = self.path / f".tmp-{name}"
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("keys", data=np.asarray(keys, dtype=KEY_DTYPE))
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

    def _live_claims(self) -> set[str]:
        claimed: set[str] = set()
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
                claimed.update(claim["keys"])
        return claimed

    def claim(self, keys: Iterable[str], limit: int) -> tuple[list[str], int]:
        """Take up to ``limit`` of ``keys`` that are neither stored nor claimed by another live writer.

        Returns ``(claimed, waiting)``: the keys this writer must embed now, and how many of the
        rest are being embedded by others.  Release with ``release()`` after committing.
        """
        with self._locked():
            # claims before shards: a writer commits its shard *then* drops its claim, so a key whose
            # claim is gone by now is already visible to the refresh that follows
            others = self._live_claims()
            self.refresh()
            mine, waiting = [], 0
            for key in keys:
                if key in self._index:
                    continue
                if key in others:
                    waiting += 1
                elif len(mine) < limit:
                    mine.append(key)
            if mine:
                claims = self.path / "claims"
                claims.mkdir(exist_ok=True)
                body = {"owner": self._owner, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "keys": mine}
                write_json_atomic(claims / f"{self._owner}.json", body)
            return mine, waiting

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

    @staticmethod
    def store_key(fingerprint: str, dtype: str = "float32") -> str:
        from .backbones.base import digest

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
