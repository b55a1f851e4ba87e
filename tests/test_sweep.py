"""Sweep: leaderboard correctness, no test leakage into CV, reuse of every cached result."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_circles
from sklearn.neighbors import KNeighborsClassifier

import featx


class TableBackbone(featx.Backbone):
    """Texts are ids ("s17"); their vectors come from a fixed table. Counts embedded samples."""

    modality = "text"

    def __init__(self, table: np.ndarray, name: str = "test/table"):
        self.table, self.name, self.dim = table.astype(np.float32), name, table.shape[1]
        self.embedded = 0

    def fingerprint(self) -> str:
        return featx.digest(self.name, hashlib.sha256(self.table.tobytes()).hexdigest())

    def embed_batch(self, items):
        self.embedded += len(items)
        return self.table[[int(t[1:]) for t in items]]


def circles(n=200, seed=0):
    F, y = make_circles(n_samples=n, factor=0.4, noise=0.05, random_state=seed)
    return [f"s{i}" for i in range(n)], np.where(y == 1, "inner", "outer"), F


def test_known_best_head_wins_on_nonlinear_data(cache_dir):
    X, y, F = circles()
    noise = np.random.default_rng(0).standard_normal((len(X), 2))
    good, bad = TableBackbone(F, "test/circles"), TableBackbone(noise, "test/noise")
    result = featx.sweep(X, y, backbones=[good, bad], heads=["logreg", "knn", "svm"], cv=4, cache_dir=cache_dir,
                         progress=False)
    rows = result.leaderboard
    assert [r["cv_accuracy"] for r in rows] == sorted((r["cv_accuracy"] for r in rows), reverse=True)
    assert rows[0]["backbone"] == "test/circles" and rows[0]["head"] in ("knn", "svm")
    assert rows[0]["cv_accuracy"] > 0.95
    circle_logreg = next(r for r in rows if r["backbone"] == "test/circles" and r["head"] == "logreg")
    assert circle_logreg["cv_accuracy"] < 0.75  # a linear probe cannot separate circles
    assert all(r["cv_accuracy"] < 0.7 for r in rows if r["backbone"] == "test/noise")
    assert set(result.correlations) == {"logme", "h_score", "nleep", "nce"}
    assert result.best_.predict(["s0", "s1"]).tolist() == list(y[:2])


class Recorder(ClassifierMixin, BaseEstimator):
    """A k-NN that remembers every row it was ever fitted on (across clones)."""

    seen: list[bytes] = []

    def fit(self, X, y):
        Recorder.seen.extend(row.tobytes() for row in np.asarray(X, dtype=np.float32))
        self.model_ = KNeighborsClassifier(3).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)


def test_cross_validation_never_sees_the_test_split(cache_dir):
    X, y, F = circles(120)
    Recorder.seen = []
    result = featx.sweep(X[:80], y[:80], backbones=[TableBackbone(F)], heads=[Recorder()], X_test=X[80:],
                         y_test=y[80:], cv=4, cache_dir=cache_dir, progress=False)
    test_rows = {row.tobytes() for row in F[80:].astype(np.float32)}
    train_rows = {row.tobytes() for row in F[:80].astype(np.float32)}
    assert Recorder.seen and not test_rows & set(Recorder.seen)
    assert set(Recorder.seen) == train_rows
    assert result.leaderboard[0]["test_accuracy"] is not None


def test_test_labels_change_only_the_test_column(cache_dir):
    X, y, F = circles(120)
    kwargs = dict(backbones=[TableBackbone(F)], heads=["knn"], cv=4, cache_dir=cache_dir, progress=False)
    honest = featx.sweep(X[:80], y[:80], X_test=X[80:], y_test=y[80:], **kwargs).leaderboard[0]
    flipped_labels = np.where(y[80:] == "inner", "outer", "inner")
    flipped = featx.sweep(X[:80], y[:80], X_test=X[80:], y_test=flipped_labels, **kwargs).leaderboard[0]
    assert flipped["cv_accuracy"] == honest["cv_accuracy"] and flipped["params"] == honest["params"]
    assert flipped["test_accuracy"] == pytest.approx(1 - honest["test_accuracy"])


def test_second_identical_sweep_embeds_nothing_and_reuses_cv(cache_dir):
    X, y, F = circles(100)
    backbone = TableBackbone(F)
    first = featx.sweep(X, y, backbones=[backbone], heads=["logreg", "knn"], test_size=0.25, cv=3,
                        cache_dir=cache_dir, progress=False)
    assert backbone.embedded == 100
    second = featx.sweep(X, y, backbones=[backbone], heads=["logreg", "knn"], test_size=0.25, cv=3,
                         cache_dir=cache_dir, progress=False)
    assert backbone.embedded == 100
    assert all(r["cv_from_cache"] and r["embedded"] == 0 for r in second.leaderboard)
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k and k not in ("cv_from_cache", "cache_hits", "embedded")} for r in rows]  # noqa: E731
    assert strip(first.leaderboard) == strip(second.leaderboard)


def test_layers_are_sweep_dimensions_from_one_extraction(cache_dir):
    X, y, _ = circles(80)
    rng = np.random.default_rng(0)
    separable = rng.standard_normal((80, 2)) * 0.3 + np.where(y == "inner", 2.0, -2.0)[:, None] * [1.0, 0.5]
    two_layers = np.hstack([separable, 10 * rng.standard_normal((80, 2))])

    class Layered(TableBackbone):
        @property
        def views(self):
            return {"layer-1": slice(0, 2), "layer-2": slice(2, 4)}

    backbone = Layered(two_layers, "test/layered")
    result = featx.sweep(X, y, backbones=[backbone], heads=["knn"], cv=4, cache_dir=cache_dir, progress=False)
    assert backbone.embedded == 80
    assert sorted(r["view"] for r in result.leaderboard) == ["all", "layer-1", "layer-2"]
    assert result.leaderboard[0]["view"] == "layer-1"
    assert result.best_.view == "layer-1" and result.best_.n_features_in_ == 2


def test_imbalanced_classes_report_balanced_metrics(cache_dir):
    rng = np.random.default_rng(0)
    y = np.array(["rare"] * 10 + ["common"] * 90)
    F = rng.standard_normal((100, 3))
    result = featx.sweep([f"s{i}" for i in range(100)], y, backbones=[TableBackbone(F)], heads=["knn"], cv=5,
                         cache_dir=cache_dir, progress=False)
    row = result.leaderboard[0]
    assert row["cv_accuracy"] >= 0.85 and row["cv_balanced_accuracy"] < 0.7  # accuracy flatters a majority vote


def test_run_dir_manifest_and_best_model(cache_dir, tmp_path):
    X, y, F = circles(80)
    result = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=3, cache_dir=cache_dir,
                         run_dir=tmp_path / "run", progress=False, report=False)
    import json

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {"torch", "timm", "transformers", "scikit-learn", "featx"} <= set(manifest["versions"])
    assert manifest["backbones"][0]["fingerprint"] == TableBackbone(F).fingerprint()
    assert manifest["backbones"][0]["store_key"] and manifest["data_fingerprint"] and manifest["seed"] == 0
    assert result.leaderboard[0]["head"] == manifest["best"]["head"]


def test_sweep_input_errors(cache_dir):
    X, y, F = circles(20)
    with pytest.raises(featx.BadInputError, match="at least one backbone"):
        featx.sweep(X, y, backbones=[], cache_dir=cache_dir, progress=False)
    with pytest.raises(featx.UnknownHeadError):
        featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["forest"], cache_dir=cache_dir, progress=False)
    with pytest.raises(featx.BadInputError, match="at least 2"):
        featx.sweep(X, ["a"] * 19 + ["b"], backbones=[TableBackbone(F)], cache_dir=cache_dir, progress=False)
