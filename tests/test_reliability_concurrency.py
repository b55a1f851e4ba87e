"""Several processes extracting into one cache: each sample embedded once, no half-written reads."""

from __future__ import annotations

import json
import os
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
    for start, out in zip(starts, outs):  # each writer got exactly the vectors a lone run gets
        assert out["digest"] == reference_digest(tmp_path, start, n)


CLAIMER = """
import sys, time
from featx.cache import EmbeddingCache
store = EmbeddingCache(sys.argv[1]).store("fp", name="x", dim=2)
print(store.claim(sys.argv[2].split(","), 10), flush=True)
time.sleep(float(sys.argv[3]))
"""


def other_writer(cache, keys, *, lives: float = 0, lease: float = 600):
    """Another process that claims ``keys``, then lives ``lives`` seconds (lease: its claim timeout)."""
    env = {**os.environ, "FEATX_CLAIM_TIMEOUT": str(lease)}
    proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(cache), ",".join(keys), str(lives)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == str((keys, 0))
    return proc


def test_claims_of_a_dead_writer_are_taken_over_and_live_ones_respected(tmp_path):
    store = EmbeddingCache(tmp_path / "c").store("fp", name="x", dim=2)
    other_writer(tmp_path / "c", ["a", "b"]).wait()  # exits without releasing its claim
    assert store.claim(["a", "b", "c"], 10) == (["a", "b", "c"], 0)
    alive = other_writer(tmp_path / "c", ["d"], lives=30)
    try:
        assert store.claim(["d", "e"], 10) == (["e"], 1)  # "d" is being embedded by a live writer
    finally:
        alive.kill()
    store.release()
    assert EmbeddingCache(tmp_path / "c").store("fp", name="x", dim=2).claim(["a", "e"], 10) == (["a", "e"], 0)


def test_an_expired_lease_frees_the_claims_of_a_writer_still_running(tmp_path):
    store = EmbeddingCache(tmp_path / "c").store("fp", name="x", dim=2)
    slow = other_writer(tmp_path / "c", ["a", "b"], lives=30, lease=0)  # a lease of 0 s: expired at once
    try:
        assert store.claim(["a", "b"], 10) == (["a", "b"], 0)
    finally:
        slow.kill()
