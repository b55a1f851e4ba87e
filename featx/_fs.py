"""File-system helpers, one copy of each: content digests, atomic writes, the per-user folder.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "settings.json"
>>> write_json_atomic(path, {"batch_size": 16}); path.read_text()
'{"batch_size": 16}'
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def digest(*parts: Any) -> str:
    """A short stable hex digest of JSON-serialisable ``parts`` (use it to build fingerprints).

    >>> digest("timm/tf_efficientnet_lite0", {"pooling": "avg"}) == digest("timm/tf_efficientnet_lite0", {"pooling": "avg"})
    True
    """
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


_file_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """Content digest of a file (memoised on path, size and mtime, so repeated calls are free)."""
    st = os.stat(path)
    memo_key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _file_digests:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _file_digests[memo_key] = h.hexdigest()
    return _file_digests[memo_key]


def user_cache_dir() -> Path:
    """Where featx keeps small per-user memos: ``$XDG_CACHE_HOME/featx`` (default ``~/.cache/featx``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "featx"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (best effort: some systems cannot sync a folder)."""
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


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file to write ``path`` through: a uniquely named temporary file beside it, flushed to disk
    and renamed over ``path`` when the block ends without error, removed when it raises.  Readers
    (in any process) see the old file or the new one, never half of one.  ``OSError`` is the caller's.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, value: Any, indent: int | None = None) -> None:
    """Write ``value`` as JSON to ``path`` with ``atomic_write``."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(value, indent=indent))
