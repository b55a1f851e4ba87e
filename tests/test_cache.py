"""The cache is content-addressed: hits, misses, dedup and invalidation are counted exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

import featx
from featx.cache import SNAPSHOT, EmbeddingCache
from featx.datasets import as_samples
from featx.errors import CacheError
from featx.extraction import extract

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

    from featx.datasets import as_samples

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


def test_index_keeps_the_oldest_entry_and_counts_each_key_once(cache_dir):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=2)
    store.put(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))
    assert len(store) == 2
    store.put(["b", "c"], np.array([[9, 9], [3, 3]], np.float32))  # a racing writer stored "b" again
    for n in range(4):  # enough shards for the index to merge its runs
        store.put([f"x{n}"], np.full((1, 2), n, np.float32))
    assert len(store) == 7
    np.testing.assert_array_equal(store.get(["c", "b", "a"]), [[3, 3], [2, 2], [1, 1]])
    assert store.contains(["a", "zz", "x3"]).tolist() == [True, False, True]


def test_second_store_object_reuses_the_index_and_sees_removed_shards(counting, cache_dir, monkeypatch):
    import featx.cache as cache_module

    extract(counting, texts(300), cache_dir=cache_dir, chunk_size=100, batch_size=50)
    read = []
    original = cache_module._Index.add
    monkeypatch.setattr(cache_module._Index, "add", lambda self, shards: (read.extend(shards), original(self, shards))[1])
    again = extract(counting, texts(300), cache_dir=cache_dir)
    assert again.stats.hits == 300 and read == []  # no shard's keys read a second time in this process
    store = next(iter(EmbeddingCache(cache_dir).stores()))
    next(iter(store.path.glob("shard-*.h5"))).unlink()  # someone deletes a shard by hand
    keys = as_samples(texts(300), "text").keys
    assert store.contains(keys).sum() == 200
    result = extract(counting, texts(300), cache_dir=cache_dir)
    assert result.stats.embedded == 100 and store.contains(keys).all()


def test_store_keys_longer_than_32_characters_are_refused(cache_dir):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    with pytest.raises(CacheError, match="at most 32"):
        store.put(["k" * 33], np.ones((1, 1), np.float32))


def test_keys_sharing_their_first_eight_bytes_are_told_apart(cache_dir):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    keys = ["prefix00", "prefix00a", "prefix00b", "prefix00zz", "prefix01"]  # the index searches the first 8 bytes
    store.put(keys[::2], np.array([[0], [2], [4]], np.float32))
    store.put(keys[1::2], np.array([[1], [3]], np.float32))
    asked = ["prefix00b", "prefix00c", "prefix00", "prefix00zz", "prefix00a", "prefix01", "prefix0"]
    assert store.contains(asked).tolist() == [True, False, True, True, True, True, False]
    np.testing.assert_array_equal(store.get([k for k in asked if k not in ("prefix00c", "prefix0")])[:, 0],
                                  [2, 0, 3, 1, 4])


def test_merging_index_runs_equals_sorting_all_their_entries_oldest_first():
    from featx.cache import _Run

    rng = np.random.default_rng(0)
    pool = np.asarray([f"{p}{s}" for p in ("prefix00", "prefix01", "zz") for s in ("", "a", "b", "c", "zz", "0")],
                      dtype="S32")  # many keys share their first 8 bytes
    for _ in range(50):
        older, newer = (rng.choice(pool, rng.integers(0, 12)) for _ in range(2))
        runs = [_Run.build(k, np.full(len(k), i, np.int32), np.arange(len(k), dtype=np.int32))
                for i, k in enumerate([older, newer])]
        merged = _Run.merge(*runs)
        expected = _Run.build(np.concatenate([older, newer]), np.repeat([0, 1], [len(older), len(newer)]).astype(np.int32),
                              np.concatenate([np.arange(len(older)), np.arange(len(newer))]).astype(np.int32))
        for field in ("keys", "heads", "shard", "row"):
            np.testing.assert_array_equal(getattr(merged, field), getattr(expected, field))


def test_read_fills_stored_rows_numbers_entries_and_leaves_the_rest(cache_dir):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=2)
    store.put(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))
    store.put(["c"], np.array([[3, 3]], np.float32))
    out = np.full((5, 2), -7, np.float32)
    entries = store.read(["c", "x", "a", "c", "b"], out)
    np.testing.assert_array_equal(out, [[3, 3], [-7, -7], [1, 1], [3, 3], [2, 2]])
    assert entries[1] == -1 and entries[0] == entries[3] and len(set(entries[[0, 2, 4]])) == 3
    with pytest.raises(CacheError, match=r"shape \(4, 2\).*\(5, 2\)"):
        store.read(["c", "x", "a", "c", "b"], np.zeros((4, 2), np.float32))


def test_runs_merged_by_a_read_keep_every_entry_and_the_oldest_one(cache_dir, monkeypatch):
    import featx.cache as cache_module

    monkeypatch.setattr(cache_module._Index, "save_if_due", lambda self: None)  # saving merges the runs too
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    for n in range(7):  # one refresh per shard: the index holds several runs
        store.put([f"k{n}", "dup"], np.array([[n], [100 + n]], np.float32))
        store.contains(["dup"])
    assert len(store._index.runs) > 1
    got = store.get([f"k{n}" for n in range(7)] + ["dup"])[:, 0]
    assert len(store._index.runs) == 1
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 4, 5, 6, 100])


def _write_shard(store, name, keys, vectors, **options):
    import h5py

    with h5py.File(store.path / name, "w") as f:
        f.create_dataset("keys", data=np.asarray(keys, dtype="S32"))
        f.create_dataset("vectors", data=vectors, **options)
        f.attrs["fingerprint"] = store.meta["fingerprint"]


@pytest.mark.parametrize("options", [{"compression": "gzip", "chunks": (2, 3)}, {"dtype": ">f4"}],
                         ids=["compressed", "big-endian"])
def test_shards_another_writer_laid_out_differently_are_read_through_hdf5(cache_dir, options):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    store.put(["plain"], np.ones((1, 3), np.float32))
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    _write_shard(store, "shard-00000000000000000001-1-other.h5", ["w", "x", "y", "z"], vectors, **options)
    np.testing.assert_array_equal(store.get(["z", "plain", "x", "w", "y"]),
                                  [vectors[3], [1, 1, 1], vectors[1], vectors[0], vectors[2]])
    np.testing.assert_array_equal(store.get(["y"]), vectors[[2]])  # one row of four: a sparse read
    assert sorted(shard.offset is None for shard in store._index.shards) == [False, True]


def test_a_shard_rewritten_with_nan_is_quarantined_on_read_and_re_embedded(counting, cache_dir):
    from featx.cache import CacheWarning

    first = extract(counting, texts(40), cache_dir=cache_dir, chunk_size=10)  # read once whole: checked
    (store,) = EmbeddingCache(cache_dir).stores()
    store.refresh()
    victim = store._index.shards[1]
    with open(store.path / victim.name, "r+b") as f:  # garbage over row 3, in place: same layout, same size
        f.seek(victim.offset + 3 * store.dim * 4)
        f.write(np.full(store.dim, np.nan, np.float32).tobytes())
    counting.embedded.clear()
    with pytest.warns(CacheWarning, match="NaN or infinity"):
        again = extract(counting, texts(40), cache_dir=cache_dir)
    assert len(counting.embedded) == 10 and again.stats.embedded == 10
    assert (store.path / "quarantine" / victim.name).exists()
    np.testing.assert_array_equal(again.vectors, first.vectors)


def test_unique_counts_distinct_samples_among_hits_and_misses(counting, cache_dir):
    assert extract(counting, ["a", "b", "a"], cache_dir=cache_dir).stats.unique == 2
    stats = extract(counting, ["a", "a", "c", "c", "d", "b"], cache_dir=cache_dir).stats
    assert (stats.samples, stats.unique, stats.hits, stats.embedded) == (6, 4, 3, 2)


def test_an_input_longer_than_a_block_is_extracted_block_by_block(counting, cache_dir, tmp_path, monkeypatch):
    import featx.datasets as datasets
    import featx.extraction as extraction

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


def _recipe(texts_):
    import hashlib

    return [hashlib.blake2b(b"text\0" + t.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode()
            for t in texts_]


@pytest.fixture
def key_memo(monkeypatch):
    """The memo of recent text lists, emptied, with every per-text hashing pass counted."""
    from featx import datasets

    monkeypatch.setattr(datasets, "_recent", type(datasets._recent)())
    passes = []
    real = datasets._text_keys
    monkeypatch.setattr(datasets, "_text_keys", lambda X: passes.append(len(X)) or real(X))
    return datasets, passes


def test_a_list_of_short_texts_seen_again_is_not_hashed_text_by_text(key_memo):
    datasets, passes = key_memo
    first = texts(300)
    keys = as_samples(first, "text").keys
    again = as_samples([t.encode().decode() for t in first], "text").keys  # equal texts, new objects
    assert passes == [300]
    assert again.tolist() == keys.tolist() == _recipe(first)
    assert not again.flags.writeable  # shared with the memo: nobody may change it


def test_remembered_lists_are_told_apart_by_every_text_and_boundary(key_memo):
    datasets, passes = key_memo
    base = texts(300)
    variants = [base, base[:-1] + ["sample number 2990"], ["ab", "c"] + base[2:], ["a", "bc"] + base[2:],
                base[::-1], ["\ud800 lone surrogate"] + base[1:]]
    for v in variants:
        assert as_samples(v, "text").keys.tolist() == _recipe(v)
    assert passes == [300] * len(variants)  # no variant was mistaken for another


def test_only_many_short_texts_are_remembered_and_within_the_budget(key_memo, monkeypatch):
    datasets, passes = key_memo
    as_samples(texts(10), "text")
    as_samples(["word " * 100 + str(i) for i in range(300)], "text")  # long texts: hashing them is the cost
    assert len(datasets._recent) == 0
    monkeypatch.setattr(datasets, "REMEMBER_KEYS", 700)
    for start in (0, 1000, 2000):
        as_samples(texts(300, start), "text")
    assert sorted(map(len, datasets._recent.values())) == [300, 300]  # the oldest list was dropped
    as_samples(texts(300, 1000), "text")
    as_samples(texts(800), "text")  # bigger than the whole budget: not kept, nothing dropped for it
    assert passes == [10, 300, 300, 300, 300, 800] and len(datasets._recent) == 2


def test_an_invalid_list_is_never_remembered(key_memo):
    datasets, _ = key_memo
    bad = texts(299) + ["   "]
    for _ in range(2):
        with pytest.raises(featx.BadInputError, match="sample 299 is an empty text"):
            as_samples(bad, "text")
    assert len(datasets._recent) == 0


def _filled_store(cache_dir, shards=12, rows=50):
    """A store of ``shards`` shards, each key's vector holding its number; all read once."""
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    keys = np.asarray([f"{i:032x}" for i in range(shards * rows)], dtype="S32")
    for lo in range(0, len(keys), rows):
        store.put(keys[lo:lo + rows], np.repeat(np.arange(lo, lo + rows, dtype=np.float32)[:, None], 3, axis=1))
    store.get(keys)
    return store, keys


@pytest.fixture
def new_process(monkeypatch):
    """Start over as a new process would (no index in memory); returns the shard files opened since."""
    import featx.cache as cache_module

    def start():
        monkeypatch.setattr(cache_module, "_indexes", {})
        opened.clear()
        return opened

    opened: list[str] = []
    real = cache_module._Index.open
    monkeypatch.setattr(cache_module._Index, "open", lambda self, name: opened.append(name) or real(self, name))
    return start


def test_a_new_process_reads_the_saved_index_instead_of_every_shard(cache_dir, new_process):
    store, keys = _filled_store(cache_dir)
    assert (store.path / SNAPSHOT).is_file()
    opened = new_process()
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    np.testing.assert_array_equal(fresh.get(keys[::-1])[:, 0], np.arange(len(keys))[::-1])
    assert opened == []  # no shard opened through HDF5, vectors read at their saved offsets
    assert all(shard.checked == shard.stamp for shard in fresh._index.shards)  # found finite before: not again


def test_a_stale_saved_index_is_completed_from_the_shards_as_they_are_now(cache_dir, new_process):
    import h5py

    store, keys = _filled_store(cache_dir)
    saved = (store.path / SNAPSHOT).read_bytes()
    more = np.asarray([f"{i:032x}" for i in range(1000, 1040)], dtype="S32")
    store.put(more, np.full((40, 3), 5, np.float32))
    shards = sorted(store.path.glob("shard-*.h5"))
    shards[0].unlink()  # deleted by hand: its 50 keys are gone
    with h5py.File(shards[1], "r") as f:
        replaced_keys = f["keys"][...]
    shards[1].unlink()
    with h5py.File(shards[1], "w") as f:  # rewritten in place under its old name, other vectors
        f.create_dataset("keys", data=replaced_keys)
        f.create_dataset("vectors", data=np.full((len(replaced_keys), 3), 7, np.float32))
        f.attrs["fingerprint"] = "fp"
    (store.path / SNAPSHOT).write_bytes(saved)  # as saved before all this
    opened = new_process()
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    everything = np.concatenate([keys, more])
    assert fresh.contains(everything).sum() == len(everything) - 50
    assert not fresh.contains(keys[:50]).any()
    np.testing.assert_array_equal(fresh.get(replaced_keys), 7)
    np.testing.assert_array_equal(fresh.get(more), 5)
    np.testing.assert_array_equal(fresh.get(keys[100:])[:, 0], np.arange(100, len(keys)))
    assert sorted(opened) == sorted({shards[1].name, shards[-1].name})  # only what the saved index did not describe


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped byte"])
def test_a_damaged_saved_index_is_ignored_and_written_again(cache_dir, new_process, damage):
    store, keys = _filled_store(cache_dir)
    path = store.path / SNAPSHOT
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
    path.write_bytes({"garbage": b"not an index", "truncated": bytes(data[:len(data) // 2])}.get(damage, bytes(data)))
    opened = new_process()
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    np.testing.assert_array_equal(fresh.get(keys)[:, 0], np.arange(len(keys)))
    assert len(opened) == 12  # every shard read from its own file
    assert new_process() == [] and EmbeddingCache(cache_dir).store("fp", name="t", dim=3).contains(keys).all()
    assert opened == []  # the index was saved whole again


def test_the_snapshot_of_earlier_versions_is_removed_once_the_index_is_saved(cache_dir):
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    (store.path / "index.npz").write_bytes(b"a whole-index snapshot as featx wrote it before")
    store.put(["k1"], np.ones((1, 3), np.float32))
    assert store.contains(["k1"]).all()  # indexed, and saved as index.bin
    assert (store.path / "index.bin").is_file() and not (store.path / "index.npz").exists()


def test_an_index_that_cannot_be_saved_costs_nothing_but_speed(cache_dir, monkeypatch):
    import featx.cache as cache_module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module._Index, "_write", full_disk)
    store, keys = _filled_store(cache_dir)
    np.testing.assert_array_equal(store.get(keys)[:, 0], np.arange(len(keys)))
    assert not (store.path / SNAPSHOT).exists() and not list(store.path.glob(".tmp-*"))


def _vectors(values):
    return np.asarray(values, np.float32)[:, None]


def test_a_saved_index_is_searched_page_by_page_on_disk(cache_dir, new_process, monkeypatch):
    import featx.cache as cache_module

    monkeypatch.setattr(cache_module, "PAGE", 4)
    monkeypatch.setattr(cache_module, "READ_PAGES", 3)
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    same_head = [f"samehead{i:03d}" for i in range(0, 120, 2)]  # all share their first 8 bytes, over many pages
    hexes = [f"{i:032x}" for i in range(0, 300, 3)]
    keys = np.asarray(same_head + hexes, dtype="S32")
    for lo in range(0, len(keys), 40):
        store.put(keys[lo:lo + 40], _vectors(np.arange(lo, min(lo + 40, len(keys)))))
    store.get(keys)
    opened = new_process()
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    absent = [f"samehead{i:03d}" for i in range(1, 120, 2)] + [f"{i:032x}" for i in range(1, 300, 3)]
    asked = np.asarray(list(keys[::-1]) + absent + ["samehead", "samehead999", "0", "zzz"], dtype="S32")
    assert fresh.contains(asked).tolist() == [True] * len(keys) + [False] * (len(absent) + 4)
    np.testing.assert_array_equal(fresh.get(keys[::-1])[:, 0], np.arange(len(keys))[::-1])
    base = fresh._index.base
    assert opened == [] and fresh._index.runs == [] and base.count == len(keys) == len(fresh)
    assert len(base.fences) == len(keys) // 4  # one first key per page held in memory, no entries


def test_the_base_entry_of_a_key_wins_over_a_newer_one_in_memory(cache_dir, monkeypatch):
    import featx.cache as cache_module

    monkeypatch.setattr(cache_module._Index, "save_if_due", lambda self: None)  # saved below, by hand
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    store.put(["a", "b"], _vectors([1, 2]))
    store.contains(["a"])
    index = store._index
    index.save()  # the base
    store.put(["b", "c"], _vectors([20, 3]))  # a racing writer stored "b" again
    store.contains(["a"])
    assert (index.base.count, index.delta()) == (2, 2)
    np.testing.assert_array_equal(store.get(["c", "b", "a"])[:, 0], [3, 2, 1])
    assert len(store) == 3
    index.save()
    assert (index.base.count, index.delta()) == (3, 0)
    np.testing.assert_array_equal(store.get(["c", "b", "a"])[:, 0], [3, 2, 1])


def test_a_dead_shards_base_entries_hide_no_newer_copy_and_are_not_counted(cache_dir, new_process, monkeypatch):
    import featx.cache as cache_module

    monkeypatch.setattr(cache_module._Index, "save_if_due", lambda self: None)  # saved below, by hand
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    store.put(["a", "b"], _vectors([1, 2]))
    store.put(["c"], _vectors([3]))
    store.contains(["a"])
    store._index.save()
    assert store._index.base.count == 3
    store.put(["b", "d"], _vectors([20, 4]))  # "b" again, and "d" twice, in the delta
    store.put(["d", "e"], _vectors([40, 5]))
    assert len(store) == 5
    first = min(store.path.glob("shard-*.h5"))
    first.unlink()  # the shard of "a" and the base's "b" is removed by hand
    assert len(store) == 4
    assert store.contains(["a", "b", "c", "d", "e"]).tolist() == [False, True, True, True, True]
    np.testing.assert_array_equal(store.get(["b", "d", "e", "c"])[:, 0], [20, 4, 5, 3])
    store._index.save()  # the rewritten base drops the dead entries
    assert (store._index.base.count, store._index.delta(), len(store)) == (4, 0, 4)
    new_process()
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    np.testing.assert_array_equal(fresh.get(["b", "d", "e", "c"])[:, 0], [20, 4, 5, 3])
    assert len(fresh) == 4 and not fresh.contains(["a"]).any()


def test_the_delta_in_memory_stays_bounded_and_spills_to_disk(cache_dir, new_process, monkeypatch):
    import featx.cache as cache_module

    monkeypatch.setattr(cache_module, "DELTA_MIN", 100)
    monkeypatch.setattr(cache_module, "DELTA_MAX", 200)
    monkeypatch.setattr(cache_module, "PAGE", 4)  # rewrites stream many pieces of the base
    monkeypatch.setattr(cache_module, "READ_PAGES", 3)
    held = []
    add = cache_module._Index.add
    monkeypatch.setattr(cache_module._Index, "add", lambda self, shards: (add(self, shards), held.append(self.delta())))
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    keys = np.asarray([f"{i * 7919 % 4000:032x}" for i in range(4000)], dtype="S32")  # each put spread over the base
    for lo in range(0, len(keys), 40):  # a long sequence of puts, each looked at
        store.put(keys[lo:lo + 40], _vectors(np.arange(lo, lo + 40)))
        assert store.contains(keys[lo:lo + 40]).all()
    assert len(held) == 100 and max(held) <= 200 + 40  # never more than the bound and one shard
    assert store._index.base.count + store._index.delta() == len(keys) == len(store)
    for lo in range(0, len(keys), 400):  # all stored again by a racing writer: the first copies still win
        store.put(keys[lo:lo + 400], _vectors(np.full(400, -1)))
        store.contains(keys[:1])
    assert max(held) <= 200 + 400 and len(store) == len(keys)
    np.testing.assert_array_equal(store.get(keys)[:, 0], np.arange(len(keys)))
    store._index.save()
    assert (store._index.base.count, store._index.delta()) == (len(keys), 0)
    (store.path / SNAPSHOT).unlink()
    held.clear()
    opened = new_process()  # no saved index: every shard read, the delta spilled as it goes
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    np.testing.assert_array_equal(fresh.get(keys[::-1])[:, 0], np.arange(len(keys))[::-1])
    assert len(opened) == 110 and max(held) <= 200 + 100 + 400  # the bound, and a piece of up to 100 keys and a shard
    assert fresh._index.base.count >= 3000 and len(fresh) == len(keys)


def test_a_newer_saved_index_renamed_over_the_path_leaves_a_process_searching_its_own(cache_dir, new_process):
    store, keys = _filled_store(cache_dir)
    new_process()
    other = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)  # another process, searching the saved base
    assert other.contains(keys).all() and other._index.base.count == len(keys)
    more = np.asarray([f"{i:032x}" for i in range(1000, 1040)], dtype="S32")
    store.put(more, np.full((40, 3), 5, np.float32))
    store.contains(more)
    store._index.save()  # the first process renames a newer base over the path
    assert os.fstat(other._index.base.fd).st_ino != (store.path / SNAPSHOT).stat().st_ino
    np.testing.assert_array_equal(other.get(keys[::-1])[:, 0], np.arange(len(keys))[::-1])
    np.testing.assert_array_equal(other.get(more), 5)  # the new shard read from its file
    assert len(other) == len(store) == len(keys) + 40


def test_the_saved_index_is_searched_where_the_platform_has_no_preadv(cache_dir, new_process, monkeypatch):
    monkeypatch.delattr(os, "preadv")
    store, keys = _filled_store(cache_dir)
    new_process()
    fresh = EmbeddingCache(cache_dir).store("fp", name="t", dim=3)
    np.testing.assert_array_equal(fresh.get(keys[::-1])[:, 0], np.arange(len(keys))[::-1])  # vectors through HDF5
    assert fresh._index.base.count == len(keys) and fresh._index.runs == []  # no shard's keys read again

def test_a_delta_that_cannot_spill_keeps_answering_from_memory(cache_dir, monkeypatch):
    import featx.cache as cache_module

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cache_module, "DELTA_MIN", 100)
    monkeypatch.setattr(cache_module, "DELTA_MAX", 100)
    monkeypatch.setattr(cache_module._Index, "_write", read_only)
    store = EmbeddingCache(cache_dir).store("fp", name="t", dim=1)
    keys = np.asarray([f"{i:032x}" for i in range(2000)], dtype="S32")
    for lo in range(0, len(keys), 40):
        store.put(keys[lo:lo + 40], _vectors(np.arange(lo, lo + 40)))
        store.contains(keys[:1])
    assert store._index.base is None and store._index.delta() == len(keys) == len(store)
    np.testing.assert_array_equal(store.get(keys)[:, 0], np.arange(len(keys)))
    assert not list(store.path.glob(".tmp-*")) and not (store.path / SNAPSHOT).exists()


def test_a_new_process_finds_the_keys_of_a_list_in_the_cache_folder(key_memo, counting, cache_dir):
    datasets, passes = key_memo
    first = extract(counting, texts(300), cache_dir=cache_dir)
    datasets._recent.clear()  # as in a new process
    again = extract(counting, texts(300), cache_dir=cache_dir)
    assert passes == [300] and again.stats.hits == 300  # the second run hashed no text one by one
    assert len(list((cache_dir / "texts").glob("*.npz"))) == 1
    np.testing.assert_array_equal(first.vectors, again.vectors)


@pytest.mark.parametrize("damage", ["garbage", "flipped byte", "other length"])
def test_a_damaged_keys_file_is_ignored(key_memo, tmp_path, damage):
    datasets, passes = key_memo
    as_samples(texts(300), "text", tmp_path)
    (path,) = tmp_path.glob("*.npz")
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
    elif damage == "other length":
        import io

        buffer = io.BytesIO()
        np.savez(buffer, keys=np.zeros(299, "S32"))
        data = buffer.getvalue()
    path.write_bytes(b"not a zip" if damage == "garbage" else bytes(data))
    datasets._recent.clear()
    assert as_samples(texts(300), "text", tmp_path).keys.tolist() == _recipe(texts(300))
    assert passes == [300, 300]


def test_the_keys_folder_keeps_the_most_recently_used_lists_within_budget(key_memo, tmp_path, monkeypatch):
    import os
    import time

    datasets, passes = key_memo
    monkeypatch.setattr(datasets, "REMEMBER_KEYS", 700)
    stale = tmp_path / "left-by-a-killed-writer.tmp"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 3600,) * 2)
    for start in (0, 1000, 2000):
        as_samples(texts(300, start), "text", tmp_path)
        time.sleep(0.01)  # distinct modification times
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not stale.exists()
    datasets._recent.clear()
    for start in (1000, 2000):
        as_samples(texts(300, start), "text", tmp_path)
    assert passes == [300, 300, 300]  # both still on disk, the oldest one dropped


def test_keys_are_still_computed_where_the_keys_folder_cannot_be_written(key_memo, tmp_path):
    datasets, passes = key_memo
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    assert as_samples(texts(300), "text", blocked / "texts").keys.tolist() == _recipe(texts(300))
    assert blocked.read_text() == "not a folder" and not list(tmp_path.glob("*.tmp"))


def test_a_read_only_keys_folder_still_serves_its_lists(key_memo, tmp_path, monkeypatch):
    import os

    datasets, passes = key_memo
    as_samples(texts(300), "text", tmp_path)
    datasets._recent.clear()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(os, "utime", read_only)
    assert as_samples(texts(300), "text", tmp_path).keys.tolist() == _recipe(texts(300))
    assert passes == [300]
