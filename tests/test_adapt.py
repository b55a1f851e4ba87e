"""Domain adaptation of TransferClassifier heads (featx.shift.adapt): CORAL, SA, self-training, auto."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

import featx
from featx.errors import BadInputError
from featx.heads import make_head
from featx.shift import adapt as adapt_module
from featx.shift.adapt import AdaptedHead

from conftest import CountingTextBackbone


def shifted_blobs(seed: int = 0):
    """Two classes in 5-d; the target domain is the source scaled per dimension and moved."""
    rng = np.random.default_rng(seed)
    y = np.arange(120) % 2
    X = rng.normal(size=(120, 5)) + 2.5 * y[:, None] * np.eye(5)[0]
    y_target = np.arange(90) % 2
    X_target = (rng.normal(size=(90, 5)) + 2.5 * y_target[:, None] * np.eye(5)[0]) * [3, 1, 0.5, 2, 1] + 4
    return X, y, X_target, y_target


def test_coral_makes_the_source_covariance_equal_the_targets():
    with adapt_module.skada_routing():  # importing skada outside it would switch routing on for every test
        from skada import CORALAdapter
    X, y, X_target, _ = shifted_blobs()
    head = AdaptedHead(LogisticRegression(), adapt=CORALAdapter(reg=None)).fit(X, y, X_target)  # no shrinkage
    coral = head.pipeline_.steps[0][1].get_estimator()
    with adapt_module.skada_routing():
        aligned = coral.transform(X, sample_domain=np.ones(len(X), dtype=int), allow_source=True)
    assert not np.allclose(np.cov(X, rowvar=False), np.cov(X_target, rowvar=False), atol=0.5)
    # skada estimates covariances with 1/n (bias=True)
    np.testing.assert_allclose(np.cov(aligned, rowvar=False, bias=True), np.cov(X_target, rowvar=False, bias=True),
                               atol=1e-8)
    np.testing.assert_allclose(aligned.mean(axis=0), 0, atol=1e-10)


def test_coral_by_name_uses_shrunk_covariances_and_predicts_targets_with_their_transform():
    X, y, X_target, y_target = shifted_blobs()
    head = AdaptedHead(LogisticRegression(), adapt="coral").fit(X, y, X_target)
    coral = head.pipeline_.steps[0][1].get_estimator()
    np.testing.assert_allclose(coral.mean_target_, X_target.mean(axis=0))
    # predict = the head on target vectors centred by the target mean (CORAL's target-side transform)
    inner = head.pipeline_.steps[-1][1].get_estimator()
    np.testing.assert_array_equal(head.predict(X_target), inner.predict(X_target - coral.mean_target_))
    source_only = LogisticRegression().fit(X, y)  # 0.59 on the target, CORAL 0.90
    assert (head.predict(X_target) == y_target).mean() > (source_only.predict(X_target) == y_target).mean() + 0.2


class RecordingHead(ClassifierMixin, BaseEstimator):
    """Logistic regression that records every matrix it is fitted on (in the class, as clones are fitted)."""

    fitted_on: list = []

    def fit(self, X, y):
        RecordingHead.fitted_on.append(np.array(X))
        self.model_ = LogisticRegression().fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def predict_proba(self, X):
        return self.model_.predict_proba(X)


def test_self_training_fits_on_source_and_x_target_rows_only_never_on_test_rows():
    X, y, X_target, _ = shifted_blobs()
    X_test = shifted_blobs(seed=1)[2]  # more target-domain rows, only ever predicted
    RecordingHead.fitted_on = []
    head = AdaptedHead(RecordingHead(), adapt="self-training").fit(X, y, X_target)
    head.predict(X_test)
    allowed = {row.tobytes() for row in np.vstack([X, X_target]).astype(np.float64)}
    test_rows = {row.tobytes() for row in X_test.astype(np.float64)}
    assert len(RecordingHead.fitted_on) >= 2  # refitted on pseudo-labels at least once
    seen = {row.tobytes() for fitted in RecordingHead.fitted_on for row in fitted}
    assert seen <= allowed and not seen & test_rows
    target_rows = {row.tobytes() for row in X_target}
    assert seen & target_rows  # pseudo-labelled X_target rows were trained on
    assert (head.pipeline_.steps[-1][1].get_estimator().model_.transduction_[:len(X)] == y).all()


@pytest.mark.parametrize("preferred", ["none", "coral"])
def test_auto_keeps_what_the_scorer_prefers_and_none_on_a_tie(monkeypatch, preferred):
    monkeypatch.setattr(adapt_module, "AUTO_SPLITS", 1)
    def fake_scorer(estimator, X, y, sample_domain=None):
        steps = [type(s.base_estimator).__name__ for _, s in estimator.steps]
        return 1.0 if (preferred == "coral") == ("CORALAdapter" in steps) else 0.0

    fake_scorer.get_metadata_routing = lambda: _requests_sample_domain()
    monkeypatch.setattr(adapt_module, "scorer", lambda: fake_scorer)
    X, y, X_target, _ = shifted_blobs()
    head = AdaptedHead(make_head("logreg"), adapt="auto").fit(X, y, X_target)
    assert head.adapt_ == preferred and set(head.adapt_scores_) == {"none", "coral", "sa", "self-training"}
    assert head.adapt_scores_[preferred] == 1.0
    assert len(head.pipeline_.steps) == (2 if preferred == "coral" else 1)

    monkeypatch.setattr(adapt_module, "scorer", lambda: _constant_scorer())
    tie = AdaptedHead(make_head("logreg"), adapt="auto").fit(X, y, X_target)
    assert tie.adapt_ == "none" and set(tie.adapt_scores_.values()) == {0.5}


def _requests_sample_domain():
    from sklearn.utils.metadata_routing import MetadataRequest

    request = MetadataRequest(owner="scorer")
    request.score.add_request(param="sample_domain", alias=True)
    return request


def _constant_scorer():
    def constant(estimator, X, y, sample_domain=None):
        return 0.5

    constant.get_metadata_routing = _requests_sample_domain
    return constant


def test_auto_with_the_real_scorer_reports_a_score_per_candidate(monkeypatch):
    monkeypatch.setattr(adapt_module, "AUTO_SPLITS", 1)
    X, y, X_target, _ = shifted_blobs()
    head = AdaptedHead(make_head("logreg"), adapt="auto").fit(X, y, X_target)
    assert head.adapt_ in head.adapt_scores_ and all(0 <= s <= 1 for s in head.adapt_scores_.values())
    assert head.adapt_scores_[head.adapt_] == max(head.adapt_scores_.values())


def test_importing_skada_leaves_metadata_routing_off():
    import sklearn

    X, y, X_target, _ = shifted_blobs()
    AdaptedHead(make_head("logreg"), adapt="sa").fit(X, y, X_target).predict(X_target)
    assert sklearn.get_config()["enable_metadata_routing"] is False


def shifted_images(image_folder):
    from PIL import Image

    paths = sorted(image_folder.rglob("*.png"))
    labels = [p.parent.name for p in paths]
    darker = [(np.asarray(Image.open(p).convert("RGB")) * 0.6).astype(np.uint8) for p in paths]
    return [str(p) for p in paths], labels, darker


@pytest.mark.parametrize("adapt", ["coral", "sa", "self-training"])
def test_adapted_classifier_saves_loads_clones_and_predicts_without_state_change(adapt, image_folder, cache_dir,
                                                                                 tmp_path):
    paths, labels, darker = shifted_images(image_folder)
    clf = featx.TransferClassifier("acme/colorhist", backbone_options={"bins": 4}, adapt=adapt, cache_dir=cache_dir)
    clf.fit(paths, labels, X_target=darker[::2])
    assert clf.adapt_ == adapt and clf.get_params()["adapt"] == adapt
    before = clf.predict_proba(darker[1::2])
    state = {k: v for k, v in vars(clf).items() if k.endswith("_")}
    np.testing.assert_array_equal(clf.predict_proba(darker[1::2]), before)
    assert {k: v for k, v in vars(clf).items() if k.endswith("_")}.keys() == state.keys()
    loaded = featx.load(featx.save(clf, tmp_path / "adapted.featx"), cache_dir=cache_dir)
    np.testing.assert_array_equal(loaded.predict(darker[1::2]), clf.predict(darker[1::2]))
    np.testing.assert_allclose(loaded.predict_proba(darker[1::2]), before)
    assert clone(clf).get_params()["adapt"] == adapt and not hasattr(clone(clf), "head_")


def test_adapted_classifier_in_a_pipeline_gets_x_target_through_fit_params(image_folder, cache_dir):
    paths, labels, darker = shifted_images(image_folder)
    pipe = make_pipeline(featx.TransferClassifier("acme/colorhist", backbone_options={"bins": 4}, adapt="coral",
                                                  cache_dir=cache_dir))
    pipe.fit(paths, labels, transferclassifier__X_target=darker)
    assert pipe[-1].adapt_ == "coral" and len(pipe.predict(darker)) == len(darker)


def test_without_adapt_nothing_changes(cache_dir):
    X, y = ["good a", "bad b", "good c", "bad d"], ["pos", "neg", "pos", "neg"]
    clf = featx.TransferClassifier(CountingTextBackbone(), head="knn", head_params={"n_neighbors": 1},
                                   cache_dir=cache_dir).fit(X, y)
    assert clf.adapt_ == "none" and type(clf.head_).__name__ == "KNNHead" and list(clf.predict(X)) == y


@pytest.mark.parametrize("adapt, X_target, message", [
    (None, ["new text", "another"], "X_target is given but adapt=None"),
    ("coral", None, "adapt='coral' needs X_target"),
    ("coral", [], "X_target is empty"),
    ("sa", [np.zeros((8, 8, 3), np.uint8)] * 3, "X_target holds images but X holds texts"),
    ("cora", ["new text", "another"], "adapt"),
])
def test_bad_x_target_is_named(adapt, X_target, message, cache_dir):
    counting = CountingTextBackbone()
    clf = featx.TransferClassifier(counting, head="logreg", adapt=adapt, cache_dir=cache_dir)
    with pytest.raises(BadInputError, match=message):
        clf.fit(["good a", "bad b", "good c", "bad d"], ["pos", "neg", "pos", "neg"], X_target=X_target)
    assert counting.calls == 0  # refused before anything is embedded


def test_texts_as_x_target_of_an_image_backbone_are_refused(image_folder, cache_dir):
    paths, labels, _ = shifted_images(image_folder)
    clf = featx.TransferClassifier("acme/colorhist", adapt="coral", cache_dir=cache_dir)
    with pytest.raises(BadInputError, match="X_target holds texts but X holds images"):
        clf.fit(paths, labels, X_target=["a caption", "another caption"])


def test_fit_embeddings_refuses_adapt():
    clf = featx.TransferClassifier("acme/colorhist", adapt="coral")
    with pytest.raises(BadInputError, match="fit_embeddings does not adapt"):
        clf.fit_embeddings(np.eye(4), [0, 1, 0, 1])
