"""A child process for fault-injection and concurrency tests: extracts texts into a cache.

    python extract_child.py CACHE_DIR OUT_JSON --n 200 --start 0 --chunk 20 [--kill PHASE:K] [--delay S]

``--kill PHASE:K`` SIGKILLs this process at the K-th occurrence (0-based) of PHASE:
  embed       inside the backbone call (nothing of that chunk written yet)
  claim       right after the work claim was committed, before embedding
  keys        while h5py writes the shard's keys (temporary file half written)
  vectors     while h5py writes the shard's vectors
  rename      the temporary shard complete, the index's write transaction open, just before the rename
  renamed     right after the rename, before the shard is registered in the index
  registered  mid-transaction: the shard's rows inserted in the index, not committed
  committed   right after the index commit, before the claim is released
  meta        while the store's meta.json is being committed (only K=0 exists)
Writes {"embedded": …, "digest": sha256 of the vectors' bytes} to OUT_JSON when it finishes.
"""

import argparse
import hashlib
import json
import os
import signal
import time

import numpy as np

import featx
from featx.extraction.pipeline import extract

parser = argparse.ArgumentParser()
parser.add_argument("cache_dir")
parser.add_argument("out")
parser.add_argument("--n", type=int, default=200)
parser.add_argument("--start", type=int, default=0)
parser.add_argument("--chunk", type=int, default=20)
parser.add_argument("--kill", default="")
parser.add_argument("--delay", type=float, default=0.0, help="seconds of work per backbone call")
args = parser.parse_args()
phase, _, when = args.kill.partition(":")
counts: dict[str, int] = {}


def point(name: str) -> None:
    if name == phase:
        if counts.get(name, 0) == int(when):
            os.kill(os.getpid(), signal.SIGKILL)
        counts[name] = counts.get(name, 0) + 1


class HashBackbone(featx.Backbone):
    """Deterministic 16-d vectors from a hash of the text."""

    modality, name, dim = "text", "test/hash", 16

    def fingerprint(self):
        return featx.digest("test/hash", 1)

    def embed_batch(self, items):
        point("embed")
        time.sleep(args.delay)
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], dtype=np.uint8) for t in items]
        return (np.asarray(rows, dtype=np.float32) / 255.0).astype(np.float32)


import h5py  # noqa: E402

from featx.cache import MINE, Store  # noqa: E402
from featx.cache.index import Index  # noqa: E402

create_dataset, replace, register = h5py.Group.create_dataset, os.replace, Index.register
claim_status, put = Store.claim_status, Store.put


def create_dataset_with_kill(self, name, *a, **k):
    point(name)  # "keys" or "vectors"
    return create_dataset(self, name, *a, **k)


def replace_with_kill(src, dst):
    base = os.path.basename(os.fspath(dst))
    if base.startswith("shard-"):
        point("rename")
        replace(src, dst)
        point("renamed")
        return
    if base == "meta.json":
        point("meta")
    replace(src, dst)


def register_with_kill(db, *args):
    register(db, *args)
    point("registered")


def claim_with_kill(self, keys, limit):
    status = claim_status(self, keys, limit)
    if (status == MINE).any():
        point("claim")
    return status


def put_with_kill(self, keys, vectors):
    put(self, keys, vectors)
    point("committed")


h5py.Group.create_dataset = create_dataset_with_kill
os.replace = replace_with_kill
Index.register = staticmethod(register_with_kill)
Store.claim_status, Store.put = claim_with_kill, put_with_kill

texts = [f"sample text number {i}" for i in range(args.start, args.start + args.n)]
result = extract(HashBackbone(), texts, cache_dir=args.cache_dir, chunk_size=args.chunk, batch_size=args.chunk)
with open(args.out, "w") as f:
    json.dump({"embedded": result.stats.embedded, "hits": result.stats.hits,
               "digest": hashlib.sha256(result.vectors.tobytes()).hexdigest()}, f)
