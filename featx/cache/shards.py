"""HDF5 shards: immutable files of ``keys`` (n,) S32 and ``vectors`` (n, dim), written under a
temporary name and fsynced (``write``), then renamed (``publish``): readers see whole shards or none."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

KEY_DTYPE = "S32"
OPEN = 16  # read handles kept open per process (an open HDF5 file holds ~0.5 MB)
_open: dict[int, OrderedDict] = {}  # pid -> {path: (file, its vectors)}
_open_lock = threading.Lock()


def write(tmp: Path, keys: np.ndarray, vectors: np.ndarray, fingerprint: str) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        f.create_dataset("keys", data=keys)
        f.create_dataset("vectors", data=vectors)
        f.attrs["fingerprint"] = fingerprint
        f.flush()
        os.fsync(f.id.get_vfd_handle())


def publish(tmp: Path, final: Path) -> None:
    """Rename a written shard to its final name, durably (the folder is fsynced too)."""
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stamp(path: Path) -> str:
    """A file's size and modification time: a rewrite changes them."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def finite(vectors: np.ndarray) -> bool:
    """Whether all values are finite (NaN and ±inf reach the minimum or the maximum)."""
    return not vectors.size or bool(np.isfinite(vectors.min()) and np.isfinite(vectors.max()))


def _vectors(path: Path):
    """The ``vectors`` of the shard at ``path``, through one of the handles kept open in this process."""
    import h5py

    with _open_lock:
        kept = _open.setdefault(os.getpid(), OrderedDict())
        if path not in kept:
            f = h5py.File(path, "r")
            kept[path] = f, f["vectors"]
        kept.move_to_end(path)
        while len(kept) > OPEN:
            kept.popitem(last=False)[1][0].close()
        return kept[path][1]


def close(path: Path) -> None:
    """Close the kept handle of ``path``, if any (before the file is moved away)."""
    with _open_lock:
        f, _ = _open.get(os.getpid(), {}).pop(path, (None, None))
    if f is not None:
        f.close()


def read(path: Path, rows: np.ndarray, total: int, out: np.ndarray, dest: np.ndarray, check: bool) -> None:
    """Copy rows ``rows`` (ascending) of the shard at ``path`` (of ``total`` rows) into ``out[dest]``:
    a whole shard bound for consecutive rows of ``out`` straight into them, most of a shard in one
    read, a few rows by selection.  ``check``: ``ValueError`` if a value read is not finite."""
    from h5py import h5s

    if check:
        close(path)  # the file changed: nothing read through the old handle is to be trusted
    vectors = _vectors(path)
    lo, hi = int(dest[0]), int(dest[-1]) + 1
    if len(rows) == total == hi - lo and vectors.dtype == out.dtype and out.flags.c_contiguous \
            and (rows == np.arange(total)).all():
        block, rows = out[lo:hi], None
        vectors.id.read(h5s.ALL, h5s.ALL, block)
    elif 4 * len(rows) >= total:
        block = vectors[...]
    else:
        unique, rows = np.unique(rows, return_inverse=True)
        block = vectors[unique]
    if check and not finite(block):
        raise ValueError("vectors contain NaN or infinity")
    if rows is not None:
        out[dest] = block[rows]


def inspect(path: Path, meta: dict) -> np.ndarray:
    """The keys of a shard found whole and consistent with its store's ``meta``; ``ValueError``
    saying what is wrong otherwise."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys, vectors = f["keys"][...], f["vectors"]
            problem = _problem(keys, vectors, f.attrs.get("fingerprint"), meta)
    except Exception as exc:  # h5py reports truncation and corruption as OSError/KeyError/...
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem:
        raise ValueError(problem)
    return keys


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
