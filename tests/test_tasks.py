"""Regression (TransferRegressor), multi-label targets and class-balanced heads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import (check_get_params_invariance, check_no_attributes_set_in_init,
                                            check_parameters_default_constructible, parametrize_with_checks)

import featx
from featx.data.loaders import load_image_folder
from featx.errors import BadInputError, UnknownHeadError
from featx.heads import HEADS, REGRESSION_HEADS, make_head

from conftest import CountingTextBackbone


class NumberBackbone(CountingTextBackbone):
    """Embeds texts "v <x>" as smooth features of x, so a regressor can learn x from them."""

    def embed_batch(self, items):
        self.embedded.extend(items)
        x = np.asarray([float(t.split()[1]) for t in items])
        return np.stack([x, x ** 2, np.sin(x), np.cos(x), np.ones_like(x), x / 3, -x, x * 0.5], 1).astype(np.float32)


class TagBackbone(CountingTextBackbone):
    """Embeds which of the tags 'red', 'big', 'old' a text names."""

    def embed_batch(self, items):
        return np.asarray([[float(tag in t.split()) for tag in ("red", "big", "old")] + [0.0] * 5 for t in items],
                          dtype=np.float32)


def numbers(n=40, seed=0):
    x = np.random.default_rng(seed).uniform(-2, 2, n)
    return [f"v {v:.4f}" for v in x], 3 * x + 1


def tagged(n=36):
    combos = [("red",), ("big",), ("old",), ("red", "big"), ("big", "old"), ("red", "old")]
    texts = [" ".join(combos[i % len(combos)]) + f" n{i}" for i in range(n)]
    return texts, [list(combos[i % len(combos)]) for i in range(n)]


@parametrize_with_checks([make_head(name, "regression") for name in REGRESSION_HEADS])
def test_regression_heads_are_sklearn_estimators(estimator, check):
    check(estimator)


@pytest.mark.parametrize("check", [check_parameters_default_constructible, check_no_attributes_set_in_init,
                                   check_get_params_invariance])
def test_transfer_regressor_passes_the_checks_that_take_no_arrays(check):
    # the other estimator checks feed 2-D float arrays, which are not samples (texts or images)
    check("TransferRegressor", featx.TransferRegressor())


@pytest.mark.parametrize("head", [*REGRESSION_HEADS, LinearRegression()])
def test_transfer_regressor_learns_with_every_head(head, cache_dir):
    X, y = numbers()
    reg = featx.TransferRegressor(NumberBackbone(), head=head, cache_dir=cache_dir).fit(X, y)
    assert reg.score(X, y) > 0.9
    assert reg.predict(X[:3]).shape == (3,)


def test_transfer_regressor_in_pipeline_grid_search_and_clone(cache_dir):
    X, y = numbers(60)
    backbone = NumberBackbone()
    pipe = make_pipeline(FunctionTransformer(lambda texts: [t.strip() for t in texts]),
                         featx.TransferRegressor(backbone, cache_dir=cache_dir))
    search = GridSearchCV(pipe, {"transferregressor__head_params": [{"alpha": 0.01}, {"alpha": 1e4}]}, cv=3).fit(X, y)
    assert search.best_params_ == {"transferregressor__head_params": {"alpha": 0.01}}
    assert search.best_score_ > 0.99  # GridSearchCV scored by R², the regressor's score
    assert len(backbone.embedded) == len(set(X))  # every fold reused the cache
    copy = clone(featx.TransferRegressor(backbone, head="svr", head_params={"C": 3.0}))
    assert copy.get_params()["head"] == "svr" and copy.get_params()["head_params"] == {"C": 3.0}


def test_transfer_regressor_save_load_round_trip(tmp_path, cache_dir, image_folder):
    paths, _ = load_image_folder(image_folder)
    redness = np.asarray([np.asarray(Image.open(p))[..., 0].mean() for p in paths])
    reg = featx.TransferRegressor("acme/colorhist", head="knn", head_params={"n_neighbors": 2},
                                  backbone_options={"bins": 4}, cache_dir=cache_dir).fit(paths, redness)
    loaded = featx.load(featx.save(reg, tmp_path / "reg.featx"), cache_dir=cache_dir)
    assert isinstance(loaded, featx.TransferRegressor)
    np.testing.assert_allclose(loaded.predict(paths), reg.predict(paths))
    assert loaded.score(paths, redness) == pytest.approx(reg.score(paths, redness)) and reg.score(paths, redness) > 0.8


@pytest.mark.parametrize("y, message", [
    (["a", "b", "c", "d"], "TransferClassifier"),
    ([1.0, 2.0, None, 3.0], "rows \\[2\\]"),
    ([2.0, 2.0, 2.0, 2.0], "vary"),
    (np.ones((4, 2)), "one regressor per column"),
    ([1.0, 2.0], "len\\(X\\) = 4 but len\\(y\\) = 2"),
])
def test_regressor_bad_targets_are_named(y, message, cache_dir):
    with pytest.raises(BadInputError, match=message):
        featx.TransferRegressor(NumberBackbone(), cache_dir=cache_dir).fit(["v 1", "v 2", "v 3", "v 4"], y)


def test_continuous_target_given_to_the_classifier_names_the_regressor(cache_dir):
    X, y = numbers()
    with pytest.raises(BadInputError, match="TransferRegressor"):
        featx.TransferClassifier(NumberBackbone(), cache_dir=cache_dir).fit(X, y + 0.01)


def test_classification_head_for_the_regressor_is_refused(cache_dir):
    X, y = numbers()
    with pytest.raises(UnknownHeadError, match="'logreg' is a classification head"):
        featx.TransferRegressor(NumberBackbone(), head="logreg", cache_dir=cache_dir).fit(X, y)
    with pytest.raises(BadInputError, match="must be a regressor"):
        featx.TransferRegressor(NumberBackbone(), head=LogisticRegression(), cache_dir=cache_dir).fit(X, y)


# -- multi-label -------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [*HEADS, LogisticRegression()])
def test_multilabel_label_lists_come_back_as_label_lists(head, cache_dir):
    X, y = tagged()
    clf = featx.TransferClassifier(TagBackbone(), head=head, cache_dir=cache_dir).fit(X, y)
    assert clf.multilabel_ and list(clf.classes_) == ["big", "old", "red"]
    assert clf.predict(["red big x", "old y"]) == [("big", "red"), ("old",)]
    proba = clf.predict_proba(["red big x", "old y"])
    assert proba.shape == (2, 3) and proba[0, 0] > 0.5 and proba[0, 1] < 0.5  # one probability per label
    assert clf.score(X, y) == 1.0  # subset accuracy


def test_multilabel_indicator_matrix_through_grid_search_clone_save_load(tmp_path, cache_dir, image_folder):
    from sklearn.metrics import f1_score

    paths, colours = load_image_folder(image_folder)
    # two labels per image: "red" and "blue" columns, the second also on for two red images
    Y = np.stack([np.asarray(colours) == "red", np.asarray(colours) == "blue"], 1).astype(int)
    clf = featx.TransferClassifier("acme/colorhist", backbone_options={"bins": 4}, cache_dir=cache_dir)
    search = GridSearchCV(clf, {"head_params": [{"C": 0.1}, {"C": 10.0}]}, cv=2, scoring="f1_macro").fit(paths, Y)
    best = search.best_estimator_
    predicted = best.predict(paths)
    assert predicted.shape == (12, 2) and set(np.unique(predicted)) <= {0, 1}
    assert f1_score(Y, predicted, average="micro") == 1.0 and best.score(paths, Y) == 1.0
    assert list(best.classes_) == [0, 1] and clone(best).get_params()["head_params"] == best.head_params
    loaded = featx.load(featx.save(best, tmp_path / "tags.featx"), cache_dir=cache_dir)
    np.testing.assert_array_equal(loaded.predict(paths), predicted)
    np.testing.assert_allclose(loaded.predict_proba(paths), best.predict_proba(paths))


@pytest.mark.parametrize("y, message", [
    (np.full((4, 2), 0.5), "other than 0/1"),
    ([["a"], "b", ["a"], ["b"]], "row 1 is 'b'"),
    ([[], [], [], []], "only empty"),
    ([["a"], [1], ["a"], ["b"]], "one type"),
])
def test_bad_multilabel_targets_are_named(y, message, cache_dir):
    with pytest.raises(BadInputError, match=message):
        featx.TransferClassifier(TagBackbone(), cache_dir=cache_dir).fit(["a", "b", "c", "d"], y)


def test_multilabel_with_a_class_weight_dict_is_refused(cache_dir):
    X, y = tagged()
    with pytest.raises(BadInputError, match="class_weight.*'balanced'"):
        featx.TransferClassifier(TagBackbone(), head_params={"class_weight": {"red": 2.0}}, cache_dir=cache_dir).fit(X, y)


def test_multilabel_is_refused_by_the_sweep_with_a_pointer(cache_dir):
    X, y = tagged()
    with pytest.raises(BadInputError, match="TransferClassifier takes them"):
        featx.sweep(X, y, backbones=[TagBackbone()], heads=["logreg"], cache_dir=cache_dir, progress=False)


# -- imbalanced classes ------------------------------------------------------------------------

def imbalanced():
    """Two overlapping classes, 'rare' 1 in 6: unweighted heads favour 'common' in the overlap."""
    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 1.0, (60, 2))
    rare = rng.normal(1.2, 1.0, (12, 2))
    Z = np.vstack([common, rare]) + np.array([3.0, 3.0])  # off the origin: the L2-normalised heads keep a signal
    return Z, np.array(["common"] * 60 + ["rare"] * 12)


@pytest.mark.parametrize("name", list(HEADS))
def test_class_weight_balanced_changes_predictions_of_every_head(name):
    Z, y = imbalanced()
    probe = np.random.default_rng(1).normal(3.6, 1.0, (400, 2))
    plain = make_head(name).fit(Z, y).predict(probe)
    balanced = make_head(name, class_weight="balanced").fit(Z, y).predict(probe)
    assert (balanced == "rare").sum() > (plain == "rare").sum()  # the rare class is predicted more often


def test_knn_balanced_votes_are_weighted_by_inverse_frequency():
    Z = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)
    y = np.array(["a"] * 4 + ["b"] * 2)
    head = make_head("knn", n_neighbors=6, class_weight="balanced").fit(Z, y)
    # 4 'a' votes weighted 6/(2*4) = 0.75 and 2 'b' votes weighted 6/(2*2) = 1.5: a tie
    np.testing.assert_allclose(head.predict_proba(Z[:1]), [[0.5, 0.5]])
    np.testing.assert_allclose(make_head("knn", n_neighbors=6).fit(Z, y).predict_proba(Z[:1]), [[4 / 6, 2 / 6]])


# -- sweeps ------------------------------------------------------------------------------------

def test_sweep_detects_a_continuous_target_and_ranks_by_r2(cache_dir):
    X, y = numbers(40)
    result = featx.sweep(X, y, backbones=[NumberBackbone()], heads=["ridge", "knn"], cv=3, test_size=0.25,
                         cache_dir=cache_dir, progress=False)
    assert result.manifest["task"] == "regression" and [r["head"] for r in result.leaderboard][0] == "ridge"
    r2 = [r["cv_r2"] for r in result.leaderboard]
    assert r2 == sorted(r2, reverse=True) and r2[0] > 0.99
    assert result.leaderboard[0]["cv_mae"] < 0.2 and result.leaderboard[0]["test_r2"] > 0.99
    assert np.isfinite(result.leaderboard[0]["score_logme"])
    assert isinstance(result.best_, featx.TransferRegressor) and result.best_.score(X, y) > 0.99
    assert "cv R²" in result.table()


def test_sweep_task_regression_on_integer_targets_and_bad_scoring(cache_dir):
    X, _ = numbers(30)
    counts = np.arange(30) % 7  # whole numbers: read as classes unless task="regression"
    result = featx.sweep(X, counts, backbones=[NumberBackbone()], heads=["ridge"], cv=3, task="regression",
                         cache_dir=cache_dir, progress=False)
    assert result.manifest["task"] == "regression" and "cv_r2" in result.leaderboard[0]
    with pytest.raises(BadInputError, match="scoring='f1'"):
        featx.sweep(X, counts, backbones=[NumberBackbone()], scoring="f1", cache_dir=cache_dir, progress=False)


def test_sweep_scoring_picks_settings_and_ranks_by_the_metric(cache_dir):
    texts = [f"t{i}" for i in range(72)]
    Z, y = imbalanced()

    class FixedBackbone(CountingTextBackbone):
        def embed_batch(self, items):
            return np.hstack([Z[[int(t[1:]) for t in items]], np.zeros((len(items), 6))]).astype(np.float32)

    common = dict(backbones=[FixedBackbone()], heads=["svm", "knn"], cv=3, cache_dir=cache_dir, progress=False,
                  grids={"svm": {"kernel": ["rbf"], "class_weight": [None, "balanced"]}, "knn": {"n_neighbors": [5]}})
    by_accuracy = featx.sweep(texts, y, **common)
    by_f1 = featx.sweep(texts, y, scoring="f1_macro", **common)
    f1s = [r["cv_macro_f1"] for r in by_f1.leaderboard]
    assert f1s == sorted(f1s, reverse=True) and by_f1.manifest["metric"] == "f1_macro"
    svm = {r["head"]: r for r in by_f1.leaderboard}["svm"]
    assert svm["params"]["class_weight"] == "balanced"  # the macro-F1 winner of the grid
    assert {r["head"]: r for r in by_accuracy.leaderboard}["svm"]["cv_macro_f1"] <= svm["cv_macro_f1"]


def test_ridge_head_is_not_thrown_by_nearly_dead_feature_dimensions():
    """Pooled CNN features have dimensions that are ~0 on the training set; standardising them made
    the ridge head predict wildly on a new sample with a small value there (textile R² −18.9)."""
    rng = np.random.default_rng(0)
    Z = np.abs(rng.normal(size=(200, 40)))
    Z[:, 20:] = rng.normal(scale=1e-7, size=(200, 20)) ** 2  # nearly dead in training
    y = Z[:, :20].sum(1)
    head = make_head("ridge", "regression").fit(Z, y)
    new = np.abs(rng.normal(size=(50, 40)))
    new[:, 20:] = 0.05  # small but far outside the training spread
    predicted = head.predict(new)
    assert np.abs(predicted - new[:, :20].sum(1)).max() < 5 * y.std()
