"""Domain adaptation of a head on frozen embeddings: CORAL, subspace alignment, self-training, and
an unsupervised choice among them (``adapt="auto"``).

CORAL and subspace alignment are skada's (``CORALAdapter``, ``SubspaceAlignmentAdapter``), run in a
skada DA pipeline with ``sample_domain`` routing (source rows 1, target rows -1, target labels
masked); at predict time every sample is taken as the target domain, so the target-side transform
the adapter learned is applied.  Self-training is scikit-learn's ``SelfTrainingClassifier``; the
unsupervised scorer of ``"auto"`` is skada's ``CircularValidation`` on held-out splits of both domains.

>>> import numpy as np
>>> from featx.heads import make_head
>>> rng = np.random.default_rng(0)
>>> source, target = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) * 2 + 1
>>> head = AdaptedHead(make_head("logreg"), adapt="coral").fit(source, source[:, 0] > 0, target)
>>> head.adapt_, head.predict(target).shape
('coral', (30,))
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..errors import BadInputError, validate_params

ADAPTERS = ("coral", "sa", "self-training")
AUTO_CANDIDATES = ("none",) + ADAPTERS  # "none" first: on a tie "auto" keeps it
SA_COMPONENTS = 64  # subspace dimension of SA (all 1280 components would make it a mere rotation)
SELF_TRAINING_THRESHOLD = 0.9  # a target sample gets a pseudo-label when the head is this confident
SELF_TRAINING_ROUNDS = 10
AUTO_SPLITS, AUTO_TEST_SIZE = 3, 0.3  # held-out splits of both domains the scorer is averaged over


@contextmanager
def skada_routing() -> Iterator[None]:
    """scikit-learn's metadata routing on inside the block only (skada's pipelines route
    ``sample_domain`` through it; importing skada switches it on for the whole process, which the
    context undoes on exit)."""
    from sklearn import config_context

    with config_context(enable_metadata_routing=True):
        import skada  # noqa: F401
        yield


def scorer():
    """The unsupervised scorer of ``adapt="auto"`` (greater is better): skada's circular validation —
    the model's target predictions train a backward model, scored on the source labels."""
    from skada.metrics import CircularValidation

    return CircularValidation()


class SelfTraining(ClassifierMixin, BaseEstimator):
    """A head refitted on its own confident target predictions (scikit-learn's
    ``SelfTrainingClassifier``): it asks the DA pipeline for ``sample_domain`` so that the masked
    target rows reach it (skada drops them for estimators that do not)."""

    __metadata_request__fit = {"sample_domain": True}

    def __init__(self, head: Any = None, threshold: float = SELF_TRAINING_THRESHOLD,
                 max_iter: int = SELF_TRAINING_ROUNDS) -> None:
        self.head = head
        self.threshold = threshold
        self.max_iter = max_iter

    def fit(self, X, y, sample_domain=None) -> "SelfTraining":
        """Fit on labelled source rows and unlabelled target rows (label -1, as both skada and
        scikit-learn mark them); nothing else is seen."""
        from sklearn.semi_supervised import SelfTrainingClassifier

        self.model_ = SelfTrainingClassifier(clone(self.head), threshold=self.threshold,
                                             max_iter=self.max_iter).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def predict_proba(self, X):
        return self.model_.predict_proba(X)


def da_pipeline(adapt: Any, head: Any, n_source: int, n_target: int, dim: int, random_state: int):
    """The unfitted skada pipeline of one adaptation (``"none"``: the head alone)."""
    from skada import CORALAdapter, SubspaceAlignmentAdapter, make_da_pipeline

    head = clone(head)
    if adapt == "none":
        return make_da_pipeline(head)
    if adapt == "coral":
        return make_da_pipeline(CORALAdapter(), head)
    if adapt == "sa":
        components = min(SA_COMPONENTS, n_source, n_target, dim)
        return make_da_pipeline(SubspaceAlignmentAdapter(n_components=components, random_state=random_state), head)
    if adapt == "self-training":
        return make_da_pipeline(SelfTraining(head))
    return make_da_pipeline(clone(adapt), head)  # a skada adapter given by the user


def domain_data(X, y_codes, X_target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source and target rows stacked, target labels masked (-1), ``sample_domain`` 1 / -1."""
    X_all = np.vstack([np.asarray(X, dtype=np.float64), np.asarray(X_target, dtype=np.float64)])
    y_all = np.concatenate([y_codes, np.full(len(X_target), -1)])
    domain = np.concatenate([np.ones(len(X), dtype=int), -np.ones(len(X_target), dtype=int)])
    return X_all, y_all, domain


class AdaptedHead(ClassifierMixin, BaseEstimator):
    """A head fitted on source embeddings, adapted to unlabelled target embeddings.

    ``predict`` takes target-domain samples: the adapter's target-side transform is applied, then the head.

    Parameters
    ----------
    head : scikit-learn classifier
        The head (unfitted; a clone is fitted).
    adapt : {"coral", "sa", "self-training", "auto"} or skada adapter, default "coral"
        The adaptation; ``"auto"`` scores none/coral/sa/self-training with ``scorer()`` on held-out
        splits and keeps ``"none"`` unless an adapter scores higher.
    random_state : int, default 0
        Seeds subspace alignment and the splits of ``"auto"``.

    Attributes
    ----------
    adapt_ : str or estimator
        The adaptation used (what ``"auto"`` chose).
    adapt_scores_ : dict
        ``"auto"`` only: the mean held-out score of each candidate.
    pipeline_ : skada pipeline
        The fitted adapter and head.
    classes_ : ndarray
    """

    _parameter_constraints = {
        "head": [HasMethods(["fit", "predict"])],
        "adapt": [StrOptions({*ADAPTERS, "auto"}), HasMethods(["fit_transform"])],
        "random_state": ["random_state"],
    }

    def __init__(self, head: Any = None, adapt: Any = "coral", random_state: int = 0) -> None:
        self.head = head
        self.adapt = adapt
        self.random_state = random_state

    def fit(self, X, y, X_target) -> "AdaptedHead":
        """Fit on labelled source embeddings ``X`` and unlabelled target embeddings ``X_target``.

        Parameters
        ----------
        X : ndarray of shape (n_source, dim)
        y : array-like of shape (n_source,)
        X_target : ndarray of shape (n_target, dim)

        Returns
        -------
        self
        """
        from sklearn.preprocessing import LabelEncoder

        validate_params(self)
        if len(X_target) < 2 or np.shape(X_target)[1:] != np.shape(X)[1:]:
            raise BadInputError(f"X_target must hold at least 2 vectors of length {np.shape(X)[1]} "
                                f"(got shape {np.shape(X_target)})")
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        X_all, y_all, domain = domain_data(X, encoder.transform(y), X_target)
        with skada_routing():
            if isinstance(self.adapt, str) and self.adapt == "auto":
                self.adapt_scores_ = {name: self._score(name, X_all, y_all, domain) for name in AUTO_CANDIDATES}
                self.adapt_ = max(AUTO_CANDIDATES, key=self.adapt_scores_.get)  # the first best: "none" on a tie
            else:
                self.adapt_ = self.adapt
            self.pipeline_ = self._pipeline(self.adapt_, len(X), len(X_target), X_all.shape[1])
            self.pipeline_.fit(X_all, y_all, sample_domain=domain)
        return self

    def _pipeline(self, adapt, n_source: int, n_target: int, dim: int):
        return da_pipeline(adapt, self.head, n_source, n_target, dim, self.random_state)

    def _score(self, adapt: str, X_all, y_all, domain) -> float:
        from skada.model_selection import SourceTargetShuffleSplit
        from sklearn.model_selection import cross_validate

        n_source, n_target = int((domain > 0).sum()), int((domain < 0).sum())
        n_train = lambda n: n - int(np.ceil(AUTO_TEST_SIZE * n))  # noqa: E731  (rows each split fits on)
        pipeline = self._pipeline(adapt, n_train(n_source), n_train(n_target), X_all.shape[1])
        splits = SourceTargetShuffleSplit(AUTO_SPLITS, test_size=AUTO_TEST_SIZE, random_state=self.random_state)
        result = cross_validate(pipeline, X_all, y_all, cv=splits, scoring=scorer(), params={"sample_domain": domain})
        return float(np.mean(result["test_score"]))

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        with skada_routing():
            return self.classes_[self.pipeline_.predict(np.asarray(X, dtype=np.float64))]

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        with skada_routing():
            return self.pipeline_.predict_proba(np.asarray(X, dtype=np.float64))

    @available_if(lambda self: hasattr(self.head, "decision_function"))
    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        with skada_routing():
            return self.pipeline_.decision_function(np.asarray(X, dtype=np.float64))
