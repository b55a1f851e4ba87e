"""The cache folder's layout: the one module that names its files and folders.

    cache_dir/
      <store key>/                 one store per backbone configuration (``EmbeddingCache.store_key``)
        meta.json                  name, fingerprint, dim, dtype, views, options, created (its mtime: last use)
        index.sqlite               key -> (shard, row), the shards, the work claims (``index``)
        shard-<ns>-<pid>-<rand>.h5 immutable HDF5 files of keys and vectors (``shards``)
        .tmp-shard-...h5           a shard being written, renamed once whole
        quarantine/                damaged shards (each with <name>.reason.txt) and damaged indexes
      results/                     the sweep's cached cross-validation results

A store folder of earlier versions has ``index.bin`` or ``index.npz`` instead of ``index.sqlite``:
its shards are indexed once, then those files are removed.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

META, INDEX, QUARANTINE, RESULTS = "meta.json", "index.sqlite", "quarantine", "results"
FORMER_INDEXES = ("index.bin", "index.npz")
SHARD, TMP = "shard-", ".tmp-"


class StoreFolder:
    """The files of the store at ``path``.

    >>> folder = StoreFolder("cache/0123")
    >>> folder.index.name, folder.quarantine.name
    ('index.sqlite', 'quarantine')
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta, self.index, self.quarantine = self.path / META, self.path / INDEX, self.path / QUARANTINE

    def shards(self) -> set[str]:
        """Names of the committed shard files."""
        return {n for n in os.listdir(self.path) if n.startswith(SHARD) and n.endswith(".h5")}

    def temporaries(self) -> list[Path]:
        """Files being written, or left behind by a writer that died."""
        return sorted(self.path.glob(f"{TMP}*"))

    def former_indexes(self) -> list[Path]:
        return [self.path / name for name in FORMER_INDEXES if (self.path / name).exists()]

    def new_shard(self) -> tuple[Path, Path]:
        """A fresh ``(temporary, final)`` pair of paths for a shard, naming the writer's pid."""
        name = f"{SHARD}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        return self.path / f"{TMP}{name}", self.path / name


def writer_pid(temporary: Path) -> int | None:
    """The pid of the process writing ``temporary`` (named by ``StoreFolder.new_shard``)."""
    parts = temporary.name.split("-")
    return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
