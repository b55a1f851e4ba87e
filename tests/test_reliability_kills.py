"""Fault injection: an extraction SIGKILLed anywhere loses nothing committed and resumes exactly.

Each case kills a child process at one point (inside the model call, with a claim held, half-way
through writing a shard, just before or after the atomic rename, with the shard's rows inserted in
the index but not committed, after the commit but before the claim is released, while creating the
store), then checks: verify finds no damaged shard, the resumed run embeds only what was missing (a
renamed shard the index missed is adopted), and the final matrix is byte-identical to an
uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featx.cache import EmbeddingCache

CHILD = Path(__file__).parent / "helpers" / "extract_child.py"
N, CHUNK = 200, 20  # 10 shards when uninterrupted

KILL_POINTS = [f"{phase}:{k}" for phase in ("embed", "claim", "keys", "vectors", "rename", "renamed", "registered",
                                             "committed") for k in (0, 3, 9)] + ["meta:0"]


def child(cache, out, *extra, check=True):
    proc = subprocess.run([sys.executable, str(CHILD), str(cache), str(out), "--n", str(N), "--chunk", str(CHUNK), *extra],
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    child(tmp / "cache", tmp / "out.json")
    return json.loads((tmp / "out.json").read_text())


def committed(cache: Path) -> int:
    stores = EmbeddingCache(cache).stores()
    return len(stores[0]) if stores else 0


def assert_resumes_exactly(cache: Path, tmp_path: Path, reference: dict) -> dict:
    stores = EmbeddingCache(cache).stores()
    survived = committed(cache)
    for store in stores:
        report = store.verify()
        assert report.ok, report.damaged
        store.repair()
        assert not list(store.path.glob(".tmp-*"))
    child(cache, tmp_path / "resumed.json")
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["digest"] == reference["digest"]  # byte-identical vectors
    assert resumed["hits"] == survived and resumed["embedded"] == N - survived  # nothing lost, nothing redone
    (store,) = EmbeddingCache(cache).stores()
    assert store.verify().ok and len(store) == N
    return {"survived": survived, "resumed": resumed["embedded"]}


@pytest.mark.parametrize("kill", KILL_POINTS)
def test_kill_at_a_fixed_point_then_resume(kill, tmp_path, reference):
    proc = child(tmp_path / "cache", tmp_path / "out.json", "--kill", kill, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    outcome = assert_resumes_exactly(tmp_path / "cache", tmp_path, reference)
    phase, _, k = kill.partition(":")
    if phase in ("embed", "claim", "keys", "vectors", "rename", "meta"):
        assert outcome["survived"] == CHUNK * int(k)  # the chunk being written is the only loss
    else:  # the shard was renamed: adopted on the next opening if its commit did not happen
        assert outcome["survived"] == CHUNK * (int(k) + 1)


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3])
def test_kill_at_a_random_moment_then_resume(delay, tmp_path, reference):
    import time

    proc = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "cache"), str(tmp_path / "out.json"),
                             "--n", str(N), "--chunk", str(CHUNK), "--delay", "0.02"])
    time.sleep(0.4 + delay)  # past start-up, somewhere in the extraction
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert_resumes_exactly(tmp_path / "cache", tmp_path, reference)


def test_truncated_shard_is_detected_quarantined_and_re_embedded(tmp_path, reference):
    child(tmp_path / "cache", tmp_path / "out.json")
    (store,) = EmbeddingCache(tmp_path / "cache").stores()
    victim = sorted(store.path.glob("shard-*.h5"))[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    report = store.verify()
    assert list(report.damaged) == [victim.name] and report.healthy == 9
    repaired = EmbeddingCache(tmp_path / "cache").stores()[0].repair()
    assert repaired.quarantined == [victim.name]
    assert (store.path / "quarantine" / victim.name).read_bytes() == data[: len(data) // 2]  # kept, not deleted
    child(tmp_path / "cache", tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["embedded"] == CHUNK and again["digest"] == reference["digest"]


def test_corrupted_shard_is_quarantined_automatically(tmp_path, reference):
    child(tmp_path / "cache", tmp_path / "out.json")
    (store,) = EmbeddingCache(tmp_path / "cache").stores()
    victim = sorted(store.path.glob("shard-*.h5"))[0]
    victim.write_bytes(b"\0" * 100)  # garbage where a shard was
    proc = child(tmp_path / "cache", tmp_path / "again.json")  # found damaged while reading, re-embedded
    assert "CacheWarning" in proc.stderr and "moved to quarantine" in proc.stderr
    assert (store.path / "quarantine" / victim.name).read_bytes() == b"\0" * 100
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["embedded"] == CHUNK and again["digest"] == reference["digest"]
    assert len(store) == N and store.verify().ok
