"""Sweep: leaderboard correctness, no test leakage into CV, reuse of every cached result."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_circles
from sklearn.neighbors import KNeighborsClassifier

import featx
from featx.errors import BadInputError


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
    assert set(result.correlations) == {"logme", "h_score", "nleep", "nce", "sfda"}
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
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {"torch", "timm", "transformers", "scikit-learn", "featx"} <= set(manifest["versions"])
    assert manifest["backbones"][0]["fingerprint"] == TableBackbone(F).fingerprint()
    assert manifest["backbones"][0]["store_key"] and manifest["data_fingerprint"] and manifest["seed"] == 0
    assert result.leaderboard[0]["head"] == manifest["best"]["head"]


class RandomInitTable(TableBackbone):
    """A table backbone that says it has no pretrained weights (contract: ``random_init``, ``options``)."""

    random_init = True

    @property
    def options(self):
        return {"image_size": 32, "weights": "random init"}


def test_random_init_backbones_are_marked_in_rows_table_and_manifest(cache_dir, tmp_path):
    X, y, F = circles(60)
    untrained = RandomInitTable(np.random.default_rng(1).standard_normal((60, 2)), "test/untrained")
    result = featx.sweep(X, y, backbones=[TableBackbone(F), untrained], heads=["knn", "logreg"], cv=3,
                         cache_dir=cache_dir, run_dir=tmp_path / "run", report=False, progress=False)
    assert {r["backbone"]: r["random_init"] for r in result.leaderboard} == {"test/table": False, "test/untrained": True}
    assert all(r["backbone_options"] == {"image_size": 32, "weights": "random init"}
               for r in result.leaderboard if r["backbone"] == "test/untrained")
    lines = result.table().splitlines()
    marked = [line for line in lines[2:] if line.endswith("[random init]")]
    assert len(marked) == 2 and all("test/untrained" in line for line in marked)
    assert lines[-1].startswith("[random init]: the backbone has no pretrained weights")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    entries = {b["name"]: b for b in manifest["backbones"]}
    assert entries["test/untrained"]["random_init"] and not entries["test/table"]["random_init"]
    assert entries["test/untrained"]["options"] == {"image_size": 32, "weights": "random init"}
    assert "[random init]" not in featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=3,
                                              cache_dir=cache_dir, progress=False).table()


def test_evaluation_of_the_winner_on_the_test_split_and_out_of_fold(cache_dir):
    X, y, F = circles(120)
    held_out = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], test_size=0.25, cv=3,
                           cache_dir=cache_dir, progress=False)
    e = held_out.evaluation
    matrix = np.asarray(e["matrix"])
    assert e["split"] == "test" and e["labels"] == ["inner", "outer"] and matrix.sum() == 30
    assert [c["support"] for c in e["per_class"]] == matrix.sum(axis=1).tolist() == [15, 15]
    assert [c["recall"] for c in e["per_class"]] == pytest.approx((np.diag(matrix) / matrix.sum(axis=1)).tolist())
    assert [c["precision"] for c in e["per_class"]] == pytest.approx((np.diag(matrix) / matrix.sum(axis=0)).tolist())
    assert e["accuracy"] == pytest.approx(held_out.leaderboard[0]["test_accuracy"])
    no_test = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=3, cache_dir=cache_dir,
                          progress=False).evaluation
    assert no_test["split"] == "cross-validation (out-of-fold)" and np.asarray(no_test["matrix"]).sum() == 120


def test_run_folder_keeps_the_results_when_the_report_cannot_render(cache_dir, tmp_path, monkeypatch):
    import sys

    X, y, F = circles(60)
    source = {"data": "/data/x.csv", "text_column": "text", "label_column": "label", "test_size": 0.3, "seed": 0,
              "options": {}}
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="report could not be rendered") as caught:
        result = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], test_size=0.3, cv=3,
                             cache_dir=cache_dir, run_dir=run, source=source, progress=False)
    message = str(caught[0].message)
    assert "ModuleNotFoundError" in message and f"pip install matplotlib), then render it with `featx report {run}`" in message
    assert result.report is None and result.leaderboard and not (run / "report.html").exists()
    assert json.loads((run / "source.json").read_text()) == source
    assert json.loads((run / "leaderboard.json").read_text())["leaderboard"][0]["head"] == "knn"
    assert json.loads(zipfile.ZipFile(run / "best.featx").read("manifest.json"))["classes"] == ["inner", "outer"]
    monkeypatch.undo()  # matplotlib is back
    from featx.selection.report import render_report

    assert render_report(run) == run / "report.html" and "featx sweep /data/x.csv" in (run / "report.html").read_text()


def test_a_best_model_that_cannot_be_saved_is_a_warning_after_the_leaderboard(cache_dir, tmp_path):
    X, y, _ = circles(60)
    F = np.random.default_rng(0).standard_normal((60, 2)) * 0.3 + np.where(y == "inner", 2.0, -2.0)[:, None]
    run = tmp_path / "run"
    (run / "best.featx").mkdir(parents=True)  # something in the way of the model file
    with pytest.warns(UserWarning, match="best model could not be saved") as caught:
        result = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=3, cache_dir=cache_dir,
                             run_dir=run, progress=False)
    assert "result.best_ holds it" in str(caught[0].message)
    assert (run / "leaderboard.csv").read_text().startswith("backbone,") and (run / "report.html").exists()
    assert result.best_.score(X, y) > 0.9  # the winner is still usable in memory


def test_sweep_input_errors(cache_dir):
    X, y, F = circles(20)
    with pytest.raises(featx.BadInputError, match="at least one backbone"):
        featx.sweep(X, y, backbones=[], cache_dir=cache_dir, progress=False)
    with pytest.raises(featx.BadInputError, match="at least 2"):
        featx.sweep(X, ["a"] * 19 + ["b"], backbones=[TableBackbone(F)], cache_dir=cache_dir, progress=False)


def test_bad_sweep_arguments_fail_before_anything_is_embedded(cache_dir):
    X, y, F = circles(40)
    backbone = TableBackbone(F)

    def fails(match, error=featx.BadInputError, **kwargs):
        arguments = dict(X=X, y=y, backbones=[backbone], heads=["knn"], cv=3, cache_dir=cache_dir, progress=False)
        arguments.update(kwargs)
        with pytest.raises(error, match=match):
            featx.sweep(arguments.pop("X"), arguments.pop("y"), **arguments)

    fails(r"test_size=1\.5 is not a fraction between 0 and 1: give e\.g\. test_size=0\.3", test_size=1.5)
    fails(r"test_size=-0\.2", test_size=-0.2)
    fails(r"cv=1: cross-validation needs a whole number of folds, at least 2", cv=1)
    fails(r"cv=2\.5", cv=2.5)
    fails(r"X_test was given without y_test: give the test labels too", X_test=X[:5])
    fails(r"y_test was given without X_test", y_test=y[:5])
    fails(r"len\(X_test\) = 5 but len\(y_test\) = 4", X_test=X[:5], y_test=y[:4])
    fails(r"len\(X\) = 40 but len\(y\) = 39", y=y[:39])
    fails(r"test_size=0\.3 and X_test/y_test were both given", test_size=0.3, X_test=X[:5], y_test=y[:5])
    fails(r"unknown head 'lgoreg'\. Did you mean: 'logreg'", featx.UnknownHeadError, heads=["knn", "lgoreg"])
    fails(r"at least one head", heads=[])
    assert backbone.embedded == 0


def test_too_few_samples_of_a_class_names_the_class_and_its_count(cache_dir):
    seven = [f"s{i}" for i in range(7)]
    F = np.random.default_rng(0).standard_normal((7, 2))
    kwargs = dict(backbones=[TableBackbone(F)], heads=["knn"], cache_dir=cache_dir, progress=False)
    with pytest.raises(featx.BadInputError, match=r"class 'b' has only 1 training sample after the test split; "
                                                  r"cross-validation needs at least 2 of every class"):
        featx.sweep(seven, ["a", "a", "a", "b", "b", "c", "c"], test_size=0.3, **kwargs)
    with pytest.raises(featx.BadInputError, match=r"class 'c' has only 1 sample; a stratified test split \(test_size=0\.3\)"):
        featx.sweep(seven, ["a", "a", "a", "b", "b", "b", "c"], test_size=0.3, **kwargs)
    with pytest.raises(featx.BadInputError, match=r"holds out 2 of 7 samples, but both sides .* each of the 3 classes"):
        featx.sweep(seven, ["a", "a", "a", "b", "b", "c", "c"], test_size=0.2, **kwargs)


def test_folds_are_lowered_to_the_least_populated_class_with_a_warning(cache_dir):
    X, _, F = circles(9)
    y = ["a", "b", "c"] * 3
    with pytest.warns(UserWarning, match=r"cv=5 lowered to 3 folds: class 'a' has only 3 training samples"):
        result = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=5, cache_dir=cache_dir,
                             transferability=False, progress=False)
    assert result.manifest["cv"] == 5 and result.manifest["cv_folds"] == 3


def test_holdout_split_is_the_cli_split(cache_dir):
    from sklearn.model_selection import train_test_split

    from featx.selection.sweep import holdout_split

    X, y, _ = circles(50)
    X_train, y_train, X_test, y_test = holdout_split(X, y, 0.3, seed=4)
    train, test = train_test_split(np.arange(50), test_size=0.3, stratify=y, random_state=4)
    assert X_train == [X[i] for i in train] and X_test == [X[i] for i in test] and y_test.tolist() == y[test].tolist()


class Picky(TableBackbone):
    """A TableBackbone that cannot read the samples named in ``unreadable`` (as a decoder would fail)."""

    def __init__(self, table, name, unreadable=()):
        super().__init__(table, name)
        self.unreadable = set(unreadable)

    def preprocess(self, item):
        if item in self.unreadable:
            raise BadInputError(f"cannot read {item!r}")
        return item


def test_errors_skip_leaves_a_sample_any_backbone_cannot_read_out_for_all(cache_dir, tmp_path):
    X, y, F = circles(60)
    X_test, y_test = X[40:], y[40:]
    backbones = [Picky(F, "test/a", unreadable={"s3", "s45"}), Picky(F[:, ::-1].copy(), "test/b", unreadable={"s7"})]
    with pytest.raises(BadInputError, match=r"(?s)'s3'.*errors='skip'"):
        featx.sweep(X[:40], y[:40], backbones=backbones, heads=["logreg"], X_test=X_test, y_test=y_test, cv=3,
                    cache_dir=cache_dir, progress=False, transferability=False)
    result = featx.sweep(X[:40], y[:40], backbones=backbones, heads=["logreg"], X_test=X_test, y_test=y_test, cv=3,
                         cache_dir=cache_dir, progress=False, transferability=False, errors="skip")
    assert result.manifest["skipped"] == [  # each once, though both backbones embedded the splits
        "text[3]: cannot read 's3'", "text[5]: cannot read 's45'", "text[7]: cannot read 's7'"]
    assert result.manifest["n_train"] == 38 and result.manifest["n_test"] == 19
    assert sum(r["support"] for r in result.evaluation["per_class"]) == 19
    plain = featx.sweep([x for x in X[:40] if x not in {"s3", "s7"}], [c for x, c in zip(X[:40], y[:40]) if x not in {"s3", "s7"}],
                        backbones=[TableBackbone(F, "test/a"), TableBackbone(F[:, ::-1].copy(), "test/b")],
                        heads=["logreg"], X_test=[x for x in X_test if x != "s45"], y_test=np.delete(y_test, 5), cv=3,
                        cache_dir=tmp_path / "plain", progress=False, transferability=False)  # nothing shared
    assert [(r["backbone"], r["cv_accuracy"], r["test_accuracy"]) for r in result.leaderboard] == \
        [(r["backbone"], r["cv_accuracy"], r["test_accuracy"]) for r in plain.leaderboard]
    with pytest.raises(BadInputError, match="errors='ignore'"):
        featx.sweep(X, y, backbones=backbones, errors="ignore")
    with pytest.raises(BadInputError, match="regression sweep cannot leave samples out yet"):
        featx.sweep(X, np.linspace(0, 1, len(X)), backbones=backbones, task="regression", errors="skip")


def test_a_head_that_cannot_fit_the_folds_fails_before_embedding(cache_dir):
    X, y, F = circles(6)  # 3 per class: the whole set would do for the svm head, a 3-fold training part not
    backbone = TableBackbone(F)
    with pytest.raises(BadInputError, match=r"head 'svm' cannot be cross-validated on 6 training samples in 3 folds "
                                            r"\(each fold trains on about 4\): .*needs at least 3 samples of each class"):
        featx.sweep(X, y, backbones=[backbone], heads=["logreg", "svm"], cv=3, cache_dir=cache_dir, progress=False)
    assert backbone.embedded == 0


class Failing(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        raise ValueError("this head never fits")

    def predict(self, X):
        return np.zeros(len(X))


def test_a_head_whose_every_fit_fails_is_named_with_its_cause(cache_dir):
    X, y, F = circles(40)
    with pytest.raises(BadInputError, match=r"head 'Failing': no setting of its grid could be fitted on 40 samples "
                                            r"with 3 folds \(ValueError: this head never fits\)"):
        featx.sweep(X, y, backbones=[TableBackbone(F)], heads=[Failing()], cv=3, cache_dir=cache_dir, progress=False)
