"""HDF5 shards: immutable files of ``keys`` (n,) S32 and ``vectors`` (n, dim), written under a
temporary name and fsynced (``write``), then renamed (``publish``): readers see whole shards or none.

Most of a shard is read in one plain ``preadv`` at the offset HDF5 gave its contiguous vectors (an
HDF5 open costs more than reading a 3 MB shard: 98 shards read 2.4x faster); anything else, and
any file changed since it was registered, is read through h5py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._fs import fsync_dir

KEY_DTYPE = "S32"


class Shard(NamedTuple):
    path: Path
    rows: int
    stamp: str  # size:mtime of the file when registered
    offset: int | None  # where its vectors start in the file, if contiguous in native byte order


def _offset(vectors) -> int | None:
    return vectors.id.get_offset() if vectors.chunks is None and vectors.dtype.isnative else None


def write(tmp: Path, keys: np.ndarray, vectors: np.ndarray, fingerprint: str) -> int | None:
    """Write a whole shard to ``tmp``, flushed to disk; returns where its vectors start."""
    import h5py

    with h5py.File(tmp, "w") as f:
        f.create_dataset("keys", data=keys)
        offset = _offset(f.create_dataset("vectors", data=vectors))
        f.attrs["fingerprint"] = fingerprint
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    return offset


def publish(tmp: Path, final: Path) -> None:
    """Rename a written shard to its final name, durably."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def stamp(path: Path) -> str:
    """A file's size and modification time: a rewrite changes them."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def finite(vectors: np.ndarray) -> bool:
    """Whether all values are finite (NaN and ±inf reach the minimum or the maximum)."""
    return not vectors.size or bool(np.isfinite(vectors.min()) and np.isfinite(vectors.max()))


def read(shard: Shard, dtype: str, rows: np.ndarray, out: np.ndarray, dest: np.ndarray, check: bool) -> None:
    """Copy rows ``rows`` (ascending) of ``shard`` (stored as ``dtype``) into ``out[dest]``.  With
    ``check`` (the file changed since it was registered) it is read through h5py and checked finite
    (``ValueError`` if not).  h5py's and the OS's errors are the caller's."""
    most = 4 * len(rows) >= shard.rows
    if most and shard.offset is not None and not check and hasattr(os, "preadv"):
        lo, hi = int(dest[0]), int(dest[-1]) + 1
        if len(rows) == shard.rows == hi - lo and out.dtype == dtype and out.flags.c_contiguous \
                and (rows == np.arange(shard.rows)).all() and (dest == np.arange(lo, hi)).all():
            return _pread(shard.path, shard.offset, out[lo:hi])  # straight into its rows of out
        block = np.empty((shard.rows, out.shape[1]), dtype)
        _pread(shard.path, shard.offset, block)
    else:
        import h5py

        with h5py.File(shard.path, "r") as f:
            if most:
                block = f["vectors"][...]
            else:
                unique, rows = np.unique(rows, return_inverse=True)
                block = f["vectors"][unique]
        if check and not finite(block):
            raise ValueError("vectors contain NaN or infinity")
    out[dest] = block[rows]


def _pread(path: Path, offset: int, block: np.ndarray) -> None:
    """Fill the C-contiguous ``block`` with the bytes of ``path`` from ``offset`` on."""
    view, done = memoryview(block).cast("B"), 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if not n:
                raise OSError(f"{path.name} ends {len(view) - done} bytes early")
            done += n
    finally:
        os.close(fd)


def inspect(path: Path, meta: dict) -> tuple[np.ndarray, int | None]:
    """The keys of a shard found whole and consistent with its store's ``meta``, and where its
    vectors start; ``ValueError`` saying what is wrong otherwise."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys, vectors = f["keys"][...], f["vectors"]
            problem, offset = _problem(keys, vectors, f.attrs.get("fingerprint"), meta), _offset(vectors)
    except Exception as exc:  # h5py reports truncation and corruption as OSError/KeyError/...
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem:
        raise ValueError(problem)
    return keys, offset


def _problem(keys: np.ndarray, vectors, fingerprint: str, meta: dict) -> str | None:
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        return f"keys have dtype {keys.dtype} and shape {keys.shape}"
    if vectors.shape != (len(keys), meta["dim"]):
        return f"vectors have shape {vectors.shape}, expected ({len(keys)}, {meta['dim']})"
    if vectors.dtype.newbyteorder("=") != meta["dtype"]:  # either byte order
        return f"vectors have dtype {vectors.dtype}, expected {meta['dtype']}"
    if fingerprint != meta["fingerprint"]:
        return "written for another backbone fingerprint"
    if not finite(vectors[...]):
        return "vectors contain NaN or infinity"
    if len(np.unique(keys)) != len(keys):
        return "duplicate keys inside the shard"
    return None
