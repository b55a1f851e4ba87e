"""The cache is content-addressed: hits, misses, dedup and invalidation are counted exactly; the store
keeps every committed shard, adopts what its index missed and quarantines what is damaged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest

import featx
from featx.cache import CacheWarning, DamagedShardError, EmbeddingCache
from featx.data.samples import as_samples
from featx.errors import CacheError
from featx.extraction.pipeline import extract

from conftest import CountingTextBackbone


def texts(n, start=0):
    return [f"sample number {i}" for i in range(start, start + n)]


def test_second_run_calls_backbone_not_at_all(counting, cache_dir):
    first = extract(counting, texts(50), cache_dir=cache_dir, batch_size=16)
    assert counting.calls == 4 and len(counting.embedded) == 50
    assert (first.stats.hits, first.stats.embedded) == (0, 50)

    again = extract(counting, texts(50), cache_dir=cache_dir, batch_size=16)
    assert counting.calls == 4  # not called at all
    assert (again.stats.hits, again.stats.embedded) == (50, 0)
    np.testing.assert_array_equal(first.vectors, again.vectors)


def test_adding_ten_samples_embeds_exactly_those_ten(counting, cache_dir):
    extract(counting, texts(1000), cache_dir=cache_dir)
    counting.embedded.clear()
    result = extract(counting, texts(1000) + texts(10, start=1000), cache_dir=cache_dir)
    assert sorted(counting.embedded) == sorted(texts(10, start=1000))
    assert result.stats.hits == 1000 and result.stats.embedded == 10
    assert result.vectors.shape == (1010, 8)


def test_duplicates_within_and_across_datasets_are_embedded_once(counting, cache_dir):
    result = extract(counting, ["a", "b", "a", "a"], cache_dir=cache_dir)
    assert counting.embedded == ["a", "b"]
    np.testing.assert_array_equal(result.vectors[0], result.vectors[2])
    extract(counting, ["b", "c"], cache_dir=cache_dir)  # another "dataset" sharing "b"
    assert counting.embedded == ["a", "b", "c"]


def test_same_image_under_two_names_is_embedded_once(image_folder, tmp_path, cache_dir):
    import shutil

    from featx_colorhist import ColorHistogram

    class Counting(ColorHistogram):
        seen = 0

        def embed_batch(self, items):
            Counting.seen += len(items)
            return super().embed_batch(items)

    original = image_folder / "red" / "0.png"
    copy = tmp_path / "renamed.png"
    shutil.copy(original, copy)
    result = extract(Counting(), [str(original), str(copy)], cache_dir=cache_dir)
    assert Counting.seen == 1
    np.testing.assert_array_equal(result.vectors[0], result.vectors[1])


def test_pil_and_array_of_same_pixels_share_a_key(image_folder):
    from PIL import Image

    from featx.data.samples import as_samples

    im = Image.open(image_folder / "red" / "1.png")
    s = as_samples([im, np.asarray(im.convert("RGB"))], "image")
    assert s.keys[0] == s.keys[1]


def test_changed_fingerprint_gets_new_vectors_never_stale(cache_dir):
    old = CountingTextBackbone(salt="weights-1")
    new = CountingTextBackbone(salt="weights-2")
    a = extract(old, texts(5), cache_dir=cache_dir).vectors
    b = extract(new, texts(5), cache_dir=cache_dir).vectors
    assert new.calls == 1 and len(new.embedded) == 5
    assert not np.allclose(a, b)
    assert len(EmbeddingCache(cache_dir).stores()) == 2


def test_float16_storage_is_a_separate_store(counting, cache_dir):
    full = extract(counting, texts(4), cache_dir=cache_dir).vectors
    half = extract(counting, texts(4), cache_dir=cache_dir, dtype="float16").vectors
    assert counting.calls == 2
    np.testing.assert_allclose(full, half, atol=1e-2)
    assert {s.dtype for s in EmbeddingCache(cache_dir).stores()} == {"float32", "float16"}


def test_each_chunk_is_its_own_committed_shard(counting, cache_dir):
    extract(counting, texts(100), cache_dir=cache_dir, batch_size=10, chunk_size=30)
    (store,) = EmbeddingCache(cache_dir).stores()
    info = store.info()
    assert (info.count, info.shards, info.dim) == (100, 4, 8)
    assert not list(store.path.glob(".tmp-*"))


def test_interrupted_run_keeps_committed_chunks_and_resumes(cache_dir):
    class Dies(CountingTextBackbone):
        def embed_batch(self, items):
            if self.calls == 2:
                raise RuntimeError("killed")
            return super().embed_batch(items)

    dying = Dies()
    with pytest.raises(RuntimeError):
        extract(dying, texts(100), cache_dir=cache_dir, batch_size=10, chunk_size=10)
    survivor = CountingTextBackbone()
    result = extract(survivor, texts(100), cache_dir=cache_dir, batch_size=10, chunk_size=10)
    assert result.stats.hits == 20 and len(survivor.embedded) == 80
    np.testing.assert_array_equal(result.vectors, extract(CountingTextBackbone(), texts(100), cache_dir=cache_dir / "x").vectors)


def test_cache_dir_defaults_to_env_then_cwd(counting, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_CACHE_DIR", raising=False)
    extract(counting, ["x"])
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "elsewhere"))
    extract(counting, ["x"])
    assert len(list((tmp_path / "elsewhere").glob("*/meta.json"))) == 1


def test_reads_back_in_any_order(counting, cache_dir):
    data = texts(300)
    base = extract(counting, data, cache_dir=cache_dir, chunk_size=64).vectors
    order = np.random.default_rng(1).permutation(300)[:37]
    again = extract(counting, [data[i] for i in order], cache_dir=cache_dir).vectors
    np.testing.assert_array_equal(again, base[order])


def test_unusable_cache_dir_gives_clear_error(counting, tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(CacheError, match="file.txt.*pass another cache_dir"):
        extract(counting, ["x"], cache_dir=not_a_dir)


def test_bad_backbone_output_names_the_backbone(cache_dir):
    class Broken(CountingTextBackbone):
        def embed_batch(self, items):
            return np.zeros((len(items), self.dim + 1), dtype=np.float32)

    with pytest.raises(featx.PluginError, match="test/counting.*shape"):
        extract(Broken(), ["a"], cache_dir=cache_dir)


def test_keys_are_the_hex_content_digests_the_cache_has_always_used():
    import hashlib

    s = as_samples(["a cat", "naïve café"], "text")
    assert s.keys.dtype == np.dtype("S32")
    assert [k.decode() for k in s.keys] == [hashlib.blake2b(b"text\0" + t.encode(), digest_size=16).hexdigest()
                                          for t in ["a cat", "naïve café"]]


def test_unique_counts_distinct_samples_among_hits_and_misses(counting, cache_dir):
    assert extract(counting, ["a", "b", "a"], cache_dir=cache_dir).stats.unique == 2
    stats = extract(counting, ["a", "a", "c", "c", "d", "b"], cache_dir=cache_dir).stats
    assert (stats.samples, stats.unique, stats.hits, stats.embedded) == (6, 4, 3, 2)


def test_an_input_longer_than_a_block_is_extracted_block_by_block(counting, cache_dir, tmp_path, monkeypatch):
    import featx.data.samples as datasets
    import featx.extraction.pipeline as extraction

    whole = extract(CountingTextBackbone(), texts(11) + texts(3), cache_dir=tmp_path / "one-block").vectors
    monkeypatch.setattr(datasets, "KEEP_KEYS", 4)  # keys hashed block by block, as for a large input
    monkeypatch.setattr(extraction, "BLOCK", 4)
    hashed = []
    real = datasets._text_keys
    monkeypatch.setattr(datasets, "_text_keys", lambda X: hashed.append(len(X)) or real(X))
    result = extract(counting, texts(11) + texts(3), cache_dir=cache_dir)  # repeats fall in later blocks
    assert hashed == [4, 4, 4, 2]  # each block hashed as it is reached: never every key at once
    assert sorted(counting.embedded) == sorted(texts(11))  # each text once: later blocks find it stored
    assert (result.stats.samples, result.stats.unique, result.stats.hits, result.stats.embedded) == (14, 11, 3, 11)
    np.testing.assert_array_equal(result.vectors, whole)


def test_a_shard_removed_before_it_is_read_back_is_reported_never_returned_as_garbage(counting, cache_dir, monkeypatch):
    from featx.cache import Store

    real = Store.put

    def put_then_lose(self, keys, vectors):  # someone deletes the shard right after it is committed
        real(self, keys, vectors)
        for shard in self.path.glob("shard-*.h5"):
            shard.unlink()

    monkeypatch.setattr(Store, "put", put_then_lose)
    with pytest.raises(CacheError, match="vanished from the cache store .* run the extraction again"):
        extract(counting, texts(5), cache_dir=cache_dir)


def test_progress_tells_cached_samples_from_embedded_ones(counting, cache_dir, capsys):
    extract(counting, texts(30), cache_dir=cache_dir)
    extract(counting, texts(40), cache_dir=cache_dir, progress=True)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("test/counting: 100% 40/40 [") and last.endswith(", 30 cached, 10 embedded]")


def test_text_subclasses_such_as_numpy_strings_get_the_same_keys():
    texts_ = ["a cat", "naïve café"]
    np.testing.assert_array_equal(as_samples(list(np.array(texts_)), "text").keys, as_samples(texts_, "text").keys)



# -- the store itself, through its public API --

def _store(cache_dir, dim=1):
    return EmbeddingCache(cache_dir).store("fp", name="t", dim=dim)


def _vectors(values):
    return np.asarray(values, np.float32)[:, None]


def _write_shard(folder, name, keys, vectors, **options):
    """A shard as another writer (or an earlier featx) leaves it, whole, that no index knows yet."""
    import h5py

    with h5py.File(folder / name, "w") as f:
        f.create_dataset("keys", data=np.asarray(keys, dtype="S32"))
        f.create_dataset("vectors", data=vectors, **options)
        f.attrs["fingerprint"] = "fp"


def _child(code, *args):
    """Run ``code`` in a new Python process (this test's environment); returns its stdout."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_first_entry_of_a_key_wins_and_each_key_counts_once(cache_dir):
    store = _store(cache_dir, dim=2)
    store.put(["a", "b"], [[1, 1], [2, 2]])
    store.put(["b", "c"], [[9, 9], [3, 3]])  # a racing writer stored "b" again
    assert len(store) == 3 == len(_store(cache_dir, dim=2))
    np.testing.assert_array_equal(store.get(["c", "b", "a"]), [[3, 3], [2, 2], [1, 1]])
    assert store.contains(["a", "zz", "c"]).tolist() == [True, False, True]
    with pytest.raises(CacheError, match="sample key zz is not in the cache store"):
        store.get(["a", "zz"])


def test_read_fills_stored_rows_numbers_entries_and_leaves_the_rest(cache_dir):
    store = _store(cache_dir, dim=2)
    store.put(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))
    store.put(["c"], np.array([[3, 3]], np.float32))
    out = np.full((5, 2), -7, np.float32)
    entries = store.read(["c", "x", "a", "c", "b"], out)
    np.testing.assert_array_equal(out, [[3, 3], [-7, -7], [1, 1], [3, 3], [2, 2]])
    assert entries[1] == -1 and entries[0] == entries[3] and len(set(entries[[0, 2, 4]])) == 3
    assert {int(e) >> 32 for e in entries[[0, 2, 4]]} == {1, 2} and sorted(int(e) & 0xFFFFFFFF for e in entries) == [0, 0, 0, 1, 2 ** 32 - 1]
    with pytest.raises(CacheError, match=r"shape \(4, 2\).*\(5, 2\)"):
        store.read(["c", "x", "a", "c", "b"], np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("key", ["k" * 33, 'a "quoted" key', "back\\slash", "naïve", "tab\there"])
def test_keys_other_than_short_printable_ascii_are_refused(cache_dir, key):
    with pytest.raises(CacheError, match="at most 32 printable ASCII characters"):
        _store(cache_dir).put([key], np.ones((1, 1), np.float32))


def test_vectors_that_do_not_fit_are_refused_before_anything_is_written(cache_dir):
    store = _store(cache_dir, dim=2)
    with pytest.raises(CacheError, match=r"2 keys but vectors of shape \(2, 3\)"):
        store.put(["a", "b"], np.ones((2, 3), np.float32))
    with pytest.raises(CacheError, match="NaN or infinity"):
        store.put(["a"], np.array([[1, np.inf]], np.float32))
    assert len(store) == 0 and not list(store.path.glob("*shard-*"))


def test_look_ups_are_batched_a_statement_per_block_of_keys(cache_dir):
    store = _store(cache_dir)
    keys = np.asarray([f"{i:032x}" for i in range(100_000)], dtype="S32")
    store.put(keys, np.arange(len(keys), dtype=np.float32)[:, None])
    statements = []
    store.index.connection.set_trace_callback(statements.append)
    try:
        assert store.contains(keys[::-1]).all()
        np.testing.assert_array_equal(store.get(keys[::-1])[:, 0], np.arange(len(keys))[::-1])
    finally:
        store.index.connection.set_trace_callback(None)
    assert len(statements) == 5  # 2 blocks of keys for each look-up, and the shards read from


def test_a_shard_the_index_does_not_know_is_adopted_when_the_store_is_next_opened(cache_dir):
    store = _store(cache_dir)
    store.put(["a", "b"], _vectors([1, 2]))
    # as a writer killed between its shard's rename and the index's commit leaves it
    _write_shard(store.path, "shard-00000000000000000001-1-unknown0.h5", ["b", "c"], _vectors([20, 3]))
    assert not store.contains(["c"]).any()
    again = _store(cache_dir)
    assert len(again) == 3 and again.info().shards == 2
    np.testing.assert_array_equal(again.get(["a", "b", "c"])[:, 0], [1, 2, 3])  # "b" is counted once, first copy
    assert len(_store(cache_dir)) == 3


@pytest.mark.parametrize("options", [{"compression": "gzip", "chunks": (2, 3)}, {"dtype": ">f4"}],
                         ids=["compressed", "big-endian"])
def test_shards_another_writer_laid_out_differently_are_read_through_hdf5(cache_dir, options):
    _store(cache_dir, dim=3).put(["plain"], np.ones((1, 3), np.float32))
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    _write_shard(_store(cache_dir, dim=3).path, "shard-00000000000000000001-1-other000.h5", ["w", "x", "y", "z"],
                 vectors, **options)
    store = _store(cache_dir, dim=3)
    np.testing.assert_array_equal(store.get(["z", "plain", "x", "w", "y"]),
                                  [vectors[3], [1, 1, 1], vectors[1], vectors[0], vectors[2]])
    np.testing.assert_array_equal(store.get(["y"]), vectors[[2]])  # one row of four: a selection


def test_a_store_folder_of_an_earlier_version_is_indexed_from_its_shards_once(cache_dir, monkeypatch):
    import h5py

    folder = cache_dir / EmbeddingCache.store_key("fp")
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"format": "featx-store-v1", "name": "t", "fingerprint": "fp", "dim": 1,
                                                  "dtype": "float32", "created": "2025-01-01T00:00:00Z",
                                                  "views": {"all": [0, 1]}}))
    keys = [f"{i:032x}" for i in range(30)]
    for i in range(3):
        _write_shard(folder, f"shard-{i:020d}-1-former{i:02d}.h5", keys[10 * i:10 * i + 10], _vectors(range(10 * i, 10 * i + 10)))
    (folder / "index.bin").write_bytes(b"records, shard table and trailer, as earlier versions wrote them")
    (folder / "index.npz").write_bytes(b"an even earlier index")
    store = EmbeddingCache(cache_dir).find("t")
    assert len(store) == 30 and not (folder / "index.bin").exists() and not (folder / "index.npz").exists()
    np.testing.assert_array_equal(store.get(keys[::-1])[:, 0], np.arange(30)[::-1])
    opened = []
    real = h5py.File
    monkeypatch.setattr(h5py, "File", lambda *args, **kwargs: opened.append(args[0]) or real(*args, **kwargs))
    assert EmbeddingCache(cache_dir).find("t").contains(keys).all() and opened == []  # indexed once: no shard read again


def test_a_shard_deleted_by_hand_is_forgotten_and_its_samples_embedded_again(counting, cache_dir):
    extract(counting, texts(300), cache_dir=cache_dir, chunk_size=100, batch_size=50)
    (store,) = EmbeddingCache(cache_dir).stores()
    sorted(store.path.glob("shard-*.h5"))[0].unlink()
    keys = as_samples(texts(300), "text").keys
    assert EmbeddingCache(cache_dir).stores()[0].contains(keys).sum() == 200 == len(store)
    counting.embedded.clear()
    result = extract(counting, texts(300), cache_dir=cache_dir)
    assert result.stats.embedded == 100 == len(counting.embedded) and store.contains(keys).all()


def _overwrite_row(path, row, values):
    """Overwrite one row of a shard's vectors in place (same file, same size, new contents)."""
    import h5py

    with h5py.File(path, "r") as f:
        offset, dim = f["vectors"].id.get_offset(), f["vectors"].shape[1]
    with open(path, "r+b") as f:
        f.seek(offset + row * dim * 4)
        f.write(np.asarray(values, np.float32).tobytes())


def test_a_shard_rewritten_with_nan_is_quarantined_on_read_and_re_embedded(counting, cache_dir):
    first = extract(counting, texts(40), cache_dir=cache_dir, chunk_size=10)
    (store,) = EmbeddingCache(cache_dir).stores()
    victim = sorted(store.path.glob("shard-*.h5"))[1]
    _overwrite_row(victim, 3, np.full(store.dim, np.nan))
    counting.embedded.clear()
    with pytest.warns(CacheWarning, match="NaN or infinity"):
        again = extract(counting, texts(40), cache_dir=cache_dir)
    assert len(counting.embedded) == 10 and again.stats.embedded == 10
    assert (store.path / "quarantine" / victim.name).exists()
    assert "NaN" in (store.path / "quarantine" / f"{victim.name}.reason.txt").read_text()
    np.testing.assert_array_equal(again.vectors, first.vectors)


def test_a_truncated_shard_is_quarantined_when_read(cache_dir):
    store = _store(cache_dir)
    store.put(["a", "b"], _vectors([1, 2]))
    store.put(["c"], _vectors([3]))
    victim = min(store.path.glob("shard-*.h5"))
    store.get(["a", "c"])  # read handles open, as in a running process
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.warns(CacheWarning, match="quarantine"), pytest.raises(DamagedShardError, match=victim.name):
        store.get(["c", "a"])
    assert store.contains(["a", "b", "c"]).tolist() == [False, False, True] and len(store) == 1
    assert (store.path / "quarantine" / victim.name).stat().st_size == 1000  # kept, never deleted
    store.put(["a"], _vectors([10]))  # embedded again
    np.testing.assert_array_equal(store.get(["a", "c"])[:, 0], [10, 3])


def test_a_damaged_shard_found_when_the_store_is_opened_is_quarantined(cache_dir):
    store = _store(cache_dir)
    store.put(["a"], _vectors([1]))
    _write_shard(store.path, "shard-00000000000000000001-1-nan00000.h5", ["b"], _vectors([np.nan]))
    with pytest.warns(CacheWarning, match="NaN or infinity"):
        assert len(_store(cache_dir)) == 1
    assert (store.path / "quarantine" / "shard-00000000000000000001-1-nan00000.h5").exists()
    assert _store(cache_dir).verify().ok


FILL_CHILD = """
import sys, numpy as np
from featx.cache import EmbeddingCache
store = EmbeddingCache(sys.argv[1]).store("fp", name="t", dim=1)
store.put(["a", "b"], np.ones((2, 1), np.float32))
store.put(["c"], np.full((1, 1), 3, np.float32))
"""
READ_CHILD = """
import sys
from featx.cache import EmbeddingCache
store = EmbeddingCache(sys.argv[1]).store("fp", name="t", dim=1)
print(len(store), store.get(["c", "a", "b"]).ravel().tolist())
"""


@pytest.mark.parametrize("damage", [b"not a database, but garbage" * 100, b""])
def test_a_damaged_index_is_set_aside_and_rebuilt_from_the_shards(cache_dir, damage):
    _child(FILL_CHILD, cache_dir)  # written by a process that has ended
    (index,) = cache_dir.glob("*/index.sqlite")
    assert not index.with_name("index.sqlite-wal").exists()  # all of it in the database file
    index.write_bytes(damage)
    assert _child(READ_CHILD, cache_dir).strip() == "3 [3.0, 1.0, 1.0]"
    assert bool(damage) == bool(list(index.parent.glob("quarantine/index.sqlite.*")))


READ_ONLY_CHILD = """
import sys, numpy as np
from featx.cache import EmbeddingCache
from featx.errors import CacheError
store = EmbeddingCache(sys.argv[1]).store("fp", name="t", dim=1)
print(len(store), store.get(["c", "a"]).ravel().tolist(), store.contains(["a", "z"]).tolist())
try:
    store.put(["z"], np.zeros((1, 1), np.float32))
except CacheError as exc:
    print(exc)
"""


@contextmanager
def read_only(folder):
    """``folder`` and all in it read-only for this user (root: immutable, as root ignores permissions)."""
    paths = [folder, *folder.rglob("*")]
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode:
            pytest.skip("root here cannot make a folder read-only (chattr +i)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
    else:
        modes = [p.stat().st_mode for p in paths]
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in zip(paths, modes):
                p.chmod(mode)


def test_a_read_only_cache_folder_is_still_read_and_a_write_says_why_not(cache_dir):
    _child(FILL_CHILD, cache_dir)  # the last writer has closed the index
    before = sorted(p.name for p in cache_dir.rglob("*"))
    with read_only(cache_dir):
        found, error = _child(READ_ONLY_CHILD, cache_dir).splitlines()
    assert found == "3 [3.0, 1.0] [True, False]"
    assert error.startswith(f"cannot write to the embedding cache '{cache_dir}") and "fix its permissions" in error
    assert sorted(p.name for p in cache_dir.rglob("*")) == before  # nothing written


def test_a_full_index_database_is_a_cache_error_with_a_hint(cache_dir):
    store = _store(cache_dir)
    store.put(["a"], _vectors([1]))
    db = store.index.connection
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")  # no room for one more page
    keys = [f"{i:032x}" for i in range(5000)]
    with pytest.raises(CacheError, match="the disk is full; free space or pass another cache_dir"):
        store.put(keys, np.zeros((len(keys), 1), np.float32))
    db.execute("PRAGMA max_page_count = 1073741823")
    assert len(store) == 1 and store.contains(["a"]).all()
    assert len(_store(cache_dir)) == 5001  # the shard was renamed before the commit failed: adopted on opening


def _read_in_child(cache_dir):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    store.put([f"child-{os.getpid()}"], _vectors([os.getpid()]))
    return store.get(["a", f"child-{os.getpid()}"])[:, 0].tolist(), os.getpid()


def test_forked_children_and_threads_use_a_store_opened_before_them(cache_dir):
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    store = _store(cache_dir)
    store.put(["a"], _vectors([1]))
    store.get(["a"])  # this process's connection and read handle are open when it forks
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_read_in_child, [cache_dir] * 4)
    assert all(values == [1, pid] for values, pid in results)

    def work(t):
        keys = [f"t{t}-{i}" for i in range(40)]
        for lo in range(0, 40, 10):
            store.put(keys[lo:lo + 10], _vectors(range(lo, lo + 10)))
            assert store.contains(keys[:lo + 10]).all()
        return store.get(keys)[:, 0].tolist()

    with ThreadPoolExecutor(4) as threads:
        assert list(threads.map(work, range(4))) == [list(range(40))] * 4
    assert len(store) == 1 + len({pid for _, pid in results}) + 160 and store.verify().ok


def test_store_info_options_and_last_use(cache_dir):
    cache = EmbeddingCache(cache_dir)
    store = cache.store("fp", name="t", dim=1, options={"pooling": "avg", "layers": None})
    store.put(["a"], _vectors([1]))
    info = store.info()
    assert (info.options, info.count, info.shards, info.name) == ({"pooling": "avg", "layers": None}, 1, 1, "t")
    assert info.created.endswith("Z") and abs(time.time() - info.last_used) < 60 and info.bytes > 0
    assert cache.stores()[0].info().options == info.options
    assert cache.results_dir == cache_dir / "results"


def test_prune_removes_the_stores_not_used_lately_and_remove_one_by_name(cache_dir):
    cache = EmbeddingCache(cache_dir)
    old, recent = (cache.store(fp, name=fp, dim=1) for fp in ("old-fp", "recent-fp"))
    old.put(["a"], _vectors([1]))
    recent.put(["b"], _vectors([2]))
    hour_ago = time.time() - 3600
    for store in (old, recent):
        os.utime(store.path / "meta.json", (hour_ago, hour_ago))  # as if last used an hour ago
    assert recent.get(["b"])[0, 0] == 2  # a read is a use
    (pruned,) = cache.prune(older_than=600)
    assert (pruned.name, pruned.count) == ("old-fp", 1) and not old.path.exists()
    assert [s.meta["name"] for s in cache.stores()] == ["recent-fp"] and cache.prune(older_than=600) == []
    removed = cache.remove("recent")
    assert removed.name == "recent-fp" and cache.stores() == [] and not recent.path.exists()
    with pytest.raises(CacheError, match="no store .* match 'recent'"):
        cache.remove("recent")
    again = cache.store("recent-fp", name="recent-fp", dim=1)  # made anew, in the same process
    assert len(again) == 0 and not again.contains(["b"]).any()


def _recipe(texts_):
    import hashlib

    return [hashlib.blake2b(b"text\0" + t.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode()
            for t in texts_]






















def test_a_whole_shard_read_back_in_another_order_lands_in_the_right_rows(cache_dir):
    """Rows stored in one order (as extraction commits texts, longest first) and read in another,
    the first and last in place: each key gets its own vector (a whole-shard read straight into
    the output must not assume the order in between)."""
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    keys = np.array([f"{i:032x}".encode() for i in range(6)], "S32")
    stored = np.array([0, 2, 1, 4, 3, 5])  # first and last in place, the middle shuffled
    store.put(keys[stored], np.repeat(stored[:, None], 3, axis=1).astype(np.float32))
    out = np.zeros((6, 3), np.float32)
    store.read(keys, out)
    np.testing.assert_array_equal(out[:, 0], np.arange(6))
