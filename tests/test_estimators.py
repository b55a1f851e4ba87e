"""Embedder and TransferClassifier follow scikit-learn conventions and round-trip through save/load."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import featx
from featx.errors import BadInputError, UnknownHeadError
from featx.data.samples import PATH_CHECKS, as_samples
from featx.data.loaders import load_image_folder
from featx.heads import HEADS, make_head

from conftest import CountingTextBackbone

WORDS = ["good", "great", "fine", "bad", "awful", "poor"]


def reviews(n=40, seed=0):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        positive = i % 2 == 0
        word = rng.choice(WORDS[:3] if positive else WORDS[3:])
        texts.append(f"{word} {i}")
        labels.append("pos" if positive else "neg")
    return texts, labels


class WordBackbone(CountingTextBackbone):
    """Embeds the first word only, so labels are learnable from the embedding."""

    def embed_batch(self, items):
        self.calls += 1
        self.embedded.extend(items)
        return np.asarray([[float(t.split()[0] == w) for w in WORDS] + [0.0, 0.0] for t in items], dtype=np.float32)


@parametrize_with_checks([make_head(name) for name in HEADS])
def test_heads_are_sklearn_estimators(estimator, check):
    check(estimator)


def test_embedder_in_pipeline_clone_and_grid_search(cache_dir):
    backbone = WordBackbone()
    X, y = reviews()
    pipe = make_pipeline(featx.Embedder(backbone, cache_dir=cache_dir), LogisticRegression())
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert search.best_score_ == 1.0
    assert len(backbone.embedded) == len(set(X))  # every fold and candidate reused the cache
    assert clone(pipe).get_params()["embedder__cache_dir"] == cache_dir


def test_embedder_transform_shape_without_fit(cache_dir, counting):
    Z = featx.Embedder(counting, cache_dir=cache_dir).transform(["a", "b", "c"])
    assert Z.shape == (3, 8) and Z.dtype == np.float32


def test_transfer_classifier_fit_predict_proba_score(cache_dir):
    X, y = reviews()
    clf = featx.TransferClassifier(WordBackbone(), head="logreg", cache_dir=cache_dir).fit(X, y)
    assert list(clf.classes_) == ["neg", "pos"]
    proba = clf.predict_proba(["great 99", "awful 98"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1)
    assert list(clf.predict(["great 99", "awful 98"])) == ["pos", "neg"]
    assert clf.score(X, y) == 1.0


@pytest.mark.parametrize("head", ["logreg", "svm", "mlp", "knn", LogisticRegression(C=3.0)])
def test_every_head_learns(head, cache_dir):
    X, y = reviews()
    clf = featx.TransferClassifier(WordBackbone(), head=head, cache_dir=cache_dir).fit(X, y)
    assert clf.score(X, y) == 1.0


def test_head_params_reach_the_head(cache_dir):
    X, y = reviews()
    clf = featx.TransferClassifier(WordBackbone(), head="logreg", head_params={"C": 0.25}, cache_dir=cache_dir).fit(X, y)
    assert clf.head_.get_params()["C"] == 0.25


def test_predict_before_fit_raises(cache_dir):
    with pytest.raises(NotFittedError):
        featx.TransferClassifier(WordBackbone(), cache_dir=cache_dir).predict(["good"])


def test_unknown_head_suggests_names(cache_dir):
    X, y = reviews()
    with pytest.raises(UnknownHeadError, match="logreg"):
        featx.TransferClassifier(WordBackbone(), head="logregg", cache_dir=cache_dir).fit(X, y)


def test_svm_head_with_too_few_samples_of_a_class_names_it():
    from featx.heads import make_head

    X = np.random.default_rng(0).normal(size=(8, 4))
    with pytest.raises(BadInputError, match=r"at least 3 samples of each class; class 'rare' has 2.*logreg head"):
        make_head("svm").fit(X, ["common"] * 6 + ["rare"] * 2)


@pytest.mark.parametrize(
    "X, y, message",
    [
        (["a", "b"], ["x"], "len\\(X\\) = 2 but len\\(y\\) = 1"),
        (["a", "b"], ["x", None], "rows \\[1\\]"),
        (["a", "b"], ["x", float("nan")], "rows \\[1\\]"),
        (["a", "b"], ["x", "x"], "single class"),
        (["a", 3], ["x", "y"], "sample 1 is int"),
        (["a", "  "], ["x", "y"], "sample 1 is an empty text"),
    ],
)
def test_bad_inputs_are_named(X, y, message, cache_dir):
    with pytest.raises(BadInputError, match=message):
        featx.TransferClassifier(WordBackbone(), cache_dir=cache_dir).fit(X, y)


def test_images_for_a_text_backbone_are_refused(cache_dir, image_folder):
    with pytest.raises(BadInputError, match="embeds text"):
        featx.Embedder(CountingTextBackbone(), cache_dir=cache_dir).transform(np.zeros((2, 8, 8, 3), np.uint8))


def test_save_load_round_trip(tmp_path, cache_dir, image_folder):
    paths, labels = load_image_folder(image_folder)
    clf = featx.TransferClassifier("acme/colorhist", head="svm", backbone_options={"bins": 4}, cache_dir=cache_dir)
    clf.fit(paths, labels)
    path = featx.save(clf, tmp_path / "model.featx")
    loaded = featx.load(path, cache_dir=cache_dir)
    np.testing.assert_array_equal(loaded.predict(paths), clf.predict(paths))
    np.testing.assert_array_equal(loaded.predict_proba(paths), clf.predict_proba(paths))
    assert loaded.fingerprint_ == clf.fingerprint_ and loaded.backbone_name_ == "acme/colorhist"
    import json
    import zipfile

    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["backbones"] == [{"name": "acme/colorhist", "fingerprint": clf.fingerprint_}]
    assert manifest["classes"] == ["blue", "red"] and manifest["estimator"] == "featx.estimators.TransferClassifier"


def test_load_refuses_a_changed_backbone(tmp_path, cache_dir, image_folder):
    paths, labels = load_image_folder(image_folder)
    clf = featx.TransferClassifier("acme/colorhist", backbone_options={"bins": 4}, cache_dir=cache_dir).fit(paths, labels)
    path = featx.save(clf, tmp_path / "model.featx")
    with pytest.raises(BadInputError, match="fingerprint"):
        featx.load(path, backbone=featx.create_backbone("acme/colorhist", bins=5))


def test_load_refuses_untrusted_head(tmp_path, cache_dir, image_folder):
    import zipfile

    import skops.io as sio

    paths, labels = load_image_folder(image_folder)
    clf = featx.TransferClassifier("acme/colorhist", cache_dir=cache_dir).fit(paths, labels)
    path = featx.save(clf, tmp_path / "model.featx")
    tampered = tmp_path / "tampered.featx"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        dst.writestr("manifest.json", src.read("manifest.json"))
        dst.writestr("model.skops", sio.dumps(CountingTextBackbone()))  # a non-sklearn object
    with pytest.raises(BadInputError, match="refusing to load"):
        featx.load(tampered)


def test_load_refuses_non_model_file(tmp_path):
    bogus = tmp_path / "x.featx"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a featx model file"):
        featx.load(bogus)


def test_fitted_attributes_and_predict_changes_no_state(cache_dir):
    X, y = reviews()
    backbone = WordBackbone()
    clf = featx.TransferClassifier(backbone, cache_dir=cache_dir).fit(X, y)
    assert clf.backbone_ is backbone and clf.backbone_name_ == "test/counting"
    assert clf.fingerprint_ == backbone.fingerprint() and list(clf.classes_) == ["neg", "pos"]
    before = dict(vars(clf))
    clf.predict(["great 1"]), clf.predict_proba(["awful 2"]), clf.score(X, y), clf.decision_function(["fine 3"])
    assert vars(clf).keys() == before.keys() and all(vars(clf)[k] is v for k, v in before.items())
    emb = featx.Embedder(backbone, cache_dir=cache_dir).fit()
    before = dict(vars(emb))
    emb.transform(["good 5"])
    assert vars(emb).keys() == before.keys()


def test_parameter_constraints_cover_every_parameter():
    for estimator in [featx.Embedder(), featx.TransferClassifier(), *(make_head(name) for name in HEADS)]:
        assert set(estimator._parameter_constraints) == set(estimator.get_params(deep=False)), type(estimator).__name__


@pytest.mark.integration
def test_auto_backbone_is_chosen_by_what_X_holds(image_folder, cache_dir):
    paths, _ = load_image_folder(image_folder)
    assert featx.Embedder(cache_dir=cache_dir).fit(paths).backbone_name_ == "timm/tf_efficientnet_lite0"
    assert featx.Embedder(cache_dir=cache_dir).fit(np.zeros((2, 8, 8, 3), np.uint8)).backbone_name_ == "timm/tf_efficientnet_lite0"
    assert featx.Embedder(cache_dir=cache_dir).fit(["a text"]).backbone_name_ == "hf/all-MiniLM-L6-v2"
    assert featx.Embedder(input="text", cache_dir=cache_dir).fit(paths).backbone_name_ == "hf/all-MiniLM-L6-v2"
    with pytest.raises(BadInputError, match='backbone="auto"'):
        featx.TransferClassifier().fit_embeddings(np.eye(2), [0, 1])


@pytest.mark.integration
def test_default_text_classifier_uses_real_weights(tmp_path):
    X = ["the team won the match", "a late goal won the cup", "the striker scored twice", "fans cheered the win",
         "shares fell on the market", "the bank raised rates", "profits rose this quarter", "stocks slid in trading"]
    y = ["sport"] * 4 + ["business"] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", featx.RandomInitWarning)
        clf = featx.TransferClassifier(cache_dir=tmp_path).fit(X, y)
    assert clf.backbone_name_ == "hf/all-MiniLM-L6-v2" and not clf.backbone_.random_init
    assert list(clf.predict(["the goalkeeper saved a penalty", "the currency fell against the dollar"])) == ["sport", "business"]


def test_random_weights_are_warned_about_unless_asked_for(image_folder, cache_dir):
    paths, labels = load_image_folder(image_folder)
    options = {"image_size": 32}
    with pytest.warns(featx.RandomInitWarning, match="timm/test_efficientnet.*random weights"):
        clf = featx.TransferClassifier("timm/test_efficientnet", backbone_options=options, cache_dir=cache_dir).fit(paths, labels)
    assert clf.backbone_.random_init
    with pytest.warns(featx.RandomInitWarning):
        featx.Embedder("timm/test_efficientnet", backbone_options=options, cache_dir=cache_dir).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", featx.RandomInitWarning)
        featx.TransferClassifier("timm/test_efficientnet", backbone_options={**options, "pretrained": False},
                                 cache_dir=cache_dir).fit(paths, labels)
        featx.TransferClassifier("acme/colorhist", cache_dir=cache_dir).fit(paths, labels)  # not a network: no weights


def test_extract_takes_a_name_or_an_instance(image_folder, cache_dir):
    paths, _ = load_image_folder(image_folder)
    by_name = featx.extract("acme/colorhist", paths, cache_dir=cache_dir)
    by_instance = featx.extract(featx.create_backbone("acme/colorhist"), paths, cache_dir=cache_dir)
    np.testing.assert_array_equal(by_name.vectors, by_instance.vectors)
    assert isinstance(by_name, featx.Extraction) and isinstance(by_name.stats, featx.ExtractStats)
    assert (by_name.stats.embedded, by_instance.stats.hits) == (len(paths), len(paths))


def test_image_paths_to_a_text_backbone_are_refused_unless_input_text(image_folder, cache_dir):
    paths, labels = load_image_folder(image_folder)
    clf = featx.TransferClassifier(CountingTextBackbone(), cache_dir=cache_dir)
    with pytest.raises(BadInputError, match="is an image file, but backbone 'test/counting' embeds text.*input='text'"):
        clf.fit(paths, labels)
    backbone = CountingTextBackbone()
    featx.TransferClassifier(backbone, input="text", cache_dir=cache_dir).fit(paths, labels)
    assert backbone.embedded == paths  # asked for: the path strings themselves were embedded


def test_the_image_path_check_looks_up_few_files(monkeypatch, cache_dir):
    import os

    looked = []
    real = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda p: looked.append(p) or real(p))
    texts = [f"picture{i}.jpg" for i in range(100_000)]  # names ending in .jpg, not files
    samples = as_samples(texts, "text")
    assert len(samples) == 100_000 and len(looked) == PATH_CHECKS


def test_exports_resolve_and_are_visible_to_type_checkers():
    import ast
    import inspect

    names = {alias.asname or alias.name for node in ast.walk(ast.parse(inspect.getsource(featx)))
             if isinstance(node, ast.If) for stmt in node.body if isinstance(stmt, ast.ImportFrom) for alias in stmt.names}
    assert names == set(featx.__all__)
    for name in ["Extraction", "ExtractStats", "FineTuneResult", "Store", "SweepResult", "TimmBackbone", "HFBackbone",
                 "RandomInitWarning"]:
        assert getattr(featx, name).__name__ == name
    assert issubclass(featx.TimmBackbone, featx.Backbone) and issubclass(featx.HFBackbone, featx.TorchBackbone)
