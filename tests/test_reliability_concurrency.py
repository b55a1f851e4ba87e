"""Several processes extracting into one cache: each sample embedded once, no half-written reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from featx.cache import EmbeddingCache

CHILD = Path(__file__).parent / "helpers" / "extract_child.py"


def reference_digest(tmp_path, start, n):
    subprocess.run([sys.executable, str(CHILD), str(tmp_path / f"ref-{start}-{n}"), str(tmp_path / "ref.json"),
                    "--n", str(n), "--start", str(start), "--chunk", "10"], check=True, timeout=120)
    return json.loads((tmp_path / "ref.json").read_text())["digest"]


@pytest.mark.parametrize("writers, overlap", [(2, "same"), (2, "overlapping"), (4, "same"), (4, "overlapping")])
def test_concurrent_writers(writers, overlap, tmp_path):
    n = 120
    starts = [0] * writers if overlap == "same" else [40 * w for w in range(writers)]
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "cache"), str(tmp_path / f"out{w}.json"),
                               "--n", str(n), "--start", str(start), "--chunk", "10", "--delay", "0.01"],
                              stderr=subprocess.PIPE, text=True)
             for w, start in enumerate(starts)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)  # no deadlock: every writer finishes
        assert proc.returncode == 0, err
    outs = [json.loads((tmp_path / f"out{w}.json").read_text()) for w in range(writers)]
    unique = len({i for start in starts for i in range(start, start + n)})
    assert sum(o["embedded"] for o in outs) == unique  # every sample embedded exactly once, across processes

    (store,) = EmbeddingCache(tmp_path / "cache").stores()
    assert store.verify().ok and not list(store.path.glob(".tmp-*"))
    stored_keys = []
    for shard in store.path.glob("shard-*.h5"):
        with h5py.File(shard, "r") as f:
            stored_keys.extend(f["keys"][...].tolist())
    assert len(stored_keys) == len(set(stored_keys)) == unique  # each sample stored once
    assert not list((store.path / "claims").glob("*.json"))  # every claim released
    for start, out in zip(starts, outs):  # each writer got exactly the vectors a lone run gets
        assert out["digest"] == reference_digest(tmp_path, start, n)


def test_claims_of_a_dead_writer_are_taken_over(tmp_path):
    import os

    from featx.cache import EmbeddingCache as Cache

    store = Cache(tmp_path / "c").store("fp", name="x", dim=2)
    claims = store.path / "claims"
    claims.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    import time

    (claims / "ghost.json").write_text(json.dumps({"owner": "ghost", "host": socket.gethostname(),
                                                   "pid": int(dead.stdout), "time": time.time(), "keys": ["a", "b"]}))
    mine, waiting = store.claim(["a", "b", "c"], 10)
    assert mine == ["a", "b", "c"] and waiting == 0 and not (claims / "ghost.json").exists()
    (claims / "alive.json").write_text(json.dumps({"owner": "alive", "host": socket.gethostname(), "pid": os.getpid(),
                                                   "time": time.time(), "keys": ["d"]}))
    assert store.claim(["d", "e"], 10) == (["e"], 1)
