"""featx.save / featx.load: any fitted scikit-learn estimator or pipeline, featx steps included."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import featx
from featx.datasets import load_image_folder
from featx.errors import BadInputError

from conftest import CountingTextBackbone


@pytest.fixture
def images(image_folder):
    return load_image_folder(image_folder)


def test_pipeline_with_an_embedder_round_trips(images, tmp_path):
    paths, labels = images
    pipe = make_pipeline(featx.Embedder("acme/colorhist", backbone_options={"bins": 4}, cache_dir=tmp_path / "c"),
                         StandardScaler(), LogisticRegression()).fit(paths, labels)
    path = featx.save(pipe, tmp_path / "pipe.featx")
    loaded = featx.load(path, cache_dir=tmp_path / "elsewhere")
    np.testing.assert_allclose(loaded.predict_proba(paths), pipe.predict_proba(paths))
    embedder = loaded.steps[0][1]
    assert embedder.backbone_.name == "acme/colorhist" and embedder.fingerprint_ == pipe.steps[0][1].fingerprint_
    assert embedder.cache_dir == tmp_path / "elsewhere" and (tmp_path / "elsewhere").is_dir()
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["estimator"] == "sklearn.pipeline.Pipeline" and manifest["classes"] == ["blue", "red"]
    assert manifest["backbones"] == [{"name": "acme/colorhist", "fingerprint": embedder.fingerprint_}]


def test_a_plain_scikit_learn_model_round_trips(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), [0, 1] * 10
    model = LogisticRegression().fit(X, y)
    loaded = featx.load(featx.save(model, tmp_path / "lr.featx"))
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    assert json.loads(zipfile.ZipFile(tmp_path / "lr.featx").read("manifest.json"))["backbones"] == []


def test_a_backbone_instance_is_saved_by_name_and_can_be_supplied_when_loading(tmp_path):
    X, y = ["good a", "bad b", "good c", "bad d"], ["pos", "neg", "pos", "neg"]
    clf = featx.TransferClassifier(CountingTextBackbone(), head="knn", head_params={"n_neighbors": 1},
                                   cache_dir=tmp_path / "c").fit(X, y)
    path = featx.save(clf, tmp_path / "m.featx")
    with pytest.raises(featx.UnknownBackboneError, match="test/counting"):  # not a registered name
        featx.load(path)
    loaded = featx.load(path, backbone=CountingTextBackbone(), cache_dir=tmp_path / "c")
    assert list(loaded.predict(X)) == y
    with pytest.raises(BadInputError, match="fingerprint"):
        featx.load(path, backbone=CountingTextBackbone(salt="v2"))


def test_a_fine_tune_result_saves_the_model_it_keeps(tiny_bert_dir, tmp_path):
    words = ["the cat sat on the mat", "a big cat sat", "stock market fell sharply", "the market rose today"]
    X, y = [words[i % 4] + (" big" if i % 3 else " small") for i in range(16)], ["cats", "cats", "stocks", "stocks"] * 4
    result = featx.finetune(f"hf/{tiny_bert_dir}", X, y, strategy="lp-ft", epochs=1, batch_size=8,
                            cache_dir=tmp_path / "c", progress=False)
    loaded = featx.load(featx.save(result, tmp_path / "ft.featx"), cache_dir=tmp_path / "c")
    assert type(loaded) is type(result.best_)
    np.testing.assert_allclose(loaded.predict_proba(X), result.best_.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_saving_replaces_a_file_atomically(tmp_path, monkeypatch):
    import os

    X, y = np.eye(4), [0, 1, 0, 1]
    path = featx.save(LogisticRegression().fit(X, y), tmp_path / "m.featx")
    before = path.read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(BadInputError, match="No space left on device"):
        featx.save(LogisticRegression(C=0.1).fit(X, y), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.featx"]


def test_a_model_calling_an_untrusted_function_is_refused(tmp_path):
    model = FunctionTransformer(eval).fit(np.zeros((2, 1)))  # would call eval on whatever it transforms
    path = featx.save(model, tmp_path / "eval.featx")
    with pytest.raises(BadInputError, match="builtins.eval.*refusing to load"):
        featx.load(path)
