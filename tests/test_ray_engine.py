"""engine="ray": a local Ray cluster started by the test (2 CPUs), writing into the same cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

import featx
from featx.cache import EmbeddingCache

ray = pytest.importorskip("ray")

from conftest import CountingTextBackbone  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    from pathlib import Path

    tests = str(Path(__file__).parent)  # workers import the test backbones from here
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": tests}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_text_identical_to_local_engine(cluster, tiny_bert_dir, tmp_path):
    texts = [f"the cat sat on the mat {'today ' * (i % 5)}" + str(i) for i in range(60)]
    local = featx.Embedder(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "local").transform(texts)
    first = featx.extract(f"hf/{tiny_bert_dir}", texts, cache_dir=tmp_path / "ray", engine="ray")
    distributed = first.vectors
    assert first.stats.embedded == 60
    np.testing.assert_allclose(distributed, local, rtol=1e-5, atol=1e-6)
    emb = featx.Embedder(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "ray", engine="ray")
    assert emb.transform(texts[::-1]).tolist() == distributed[::-1].tolist()  # second run: all from the cache
    assert featx.extract(f"hf/{tiny_bert_dir}", texts, cache_dir=tmp_path / "ray", engine="ray").stats.embedded == 0
    (store,) = EmbeddingCache(tmp_path / "ray").stores()
    assert store.verify().ok and len(store) == 60


def test_images_identical_to_local_engine(cluster, image_folder, tmp_path):
    paths, _ = featx.datasets.load_image_folder(image_folder)
    options = {"image_size": 48}
    local = featx.Embedder("timm/test_efficientnet", backbone_options=options, batch_size=4, cache_dir=tmp_path / "a").transform(paths)
    distributed = featx.Embedder("timm/test_efficientnet", backbone_options=options, batch_size=4, engine="ray",
                                 cache_dir=tmp_path / "b").transform(paths)
    np.testing.assert_allclose(distributed, local, rtol=1e-5, atol=1e-6)


class DiesOnce(CountingTextBackbone):
    """Kills its worker process the first time it is called (a marker file makes it happen once)."""

    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)

    def embed_batch(self, items):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().embed_batch(items)


def test_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(cluster, tmp_path):
    import h5py

    texts = [f"sample {i}" for i in range(80)]
    result = featx.extract(DiesOnce(tmp_path / "died"), texts, cache_dir=tmp_path / "c", engine="ray", chunk_size=10)
    assert (tmp_path / "died").exists()  # a worker really died
    reference = featx.extract(CountingTextBackbone(), texts, cache_dir=tmp_path / "ref").vectors
    np.testing.assert_array_equal(result.vectors, reference)
    (store,) = EmbeddingCache(tmp_path / "c").stores()
    keys = []
    for shard in store.path.glob("shard-*.h5"):
        with h5py.File(shard) as f:
            keys += f["keys"][...].tolist()
    assert len(keys) == len(set(keys)) == 80 and store.verify().ok


def test_unreadable_samples_reported_like_the_local_engine(cluster, tmp_path):
    good = tmp_path / "ok.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(good)
    (tmp_path / "bad.jpg").write_bytes(b"")
    with pytest.raises(featx.BadInputError, match="bad.jpg"):
        featx.extract(featx.create_backbone("acme/colorhist"), [str(good), str(tmp_path / "bad.jpg")],
                      cache_dir=tmp_path / "c", engine="ray")
