"""Classification heads trained on embeddings: scikit-learn estimators with tuning grids.

Each head is a small estimator class that normalises its input the way its model expects, so
it can be tuned with ``GridSearchCV`` directly on cached embeddings.

>>> import numpy as np
>>> from featx.heads import make_head
>>> head = make_head("logreg", C=0.5).fit(np.eye(4), [0, 1, 0, 1])
>>> head.predict(np.eye(4)).tolist()
[0, 1, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import BadInputError, UnknownHeadError, did_you_mean, validate_params

_POSITIVE = Interval(Real, 0, None, closed="neither")
_COUNT = Interval(Integral, 1, None, closed="left")
_CLASS_WEIGHT = [dict, StrOptions({"balanced"}), None]


class _Head(ClassifierMixin, BaseEstimator):
    """Fits ``self._build()`` (a scikit-learn pipeline) and delegates predictions to it.

    Every head has the same methods: ``fit(X, y)`` on an embedding matrix ``X`` of shape
    ``(n_samples, dim)``, then ``predict``, ``predict_proba`` and ``decision_function`` (where its
    model has one); fitted attributes ``model_`` (the pipeline), ``classes_``, ``n_features_in_``.
    """

    _parameter_constraints: dict = {}

    def _build(self):
        raise NotImplementedError

    def _fit_params(self, y) -> dict:
        """Keyword arguments of the pipeline's ``fit`` (none by default)."""
        return {}

    def fit(self, X, y):
        """Fit on embeddings.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
            Embeddings.
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self
        """
        validate_params(self)
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.model_ = self._build().fit(X, y, **self._fit_params(y))
        self.classes_ = self.model_.classes_
        n_iter = getattr(self.model_[-1], "n_iter_", None)
        if n_iter is not None:
            self.n_iter_ = np.max(n_iter)
        return self

    def _checked(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False)

    def predict(self, X):
        X = self._checked(X)
        return self.model_.predict(X)

    def predict_proba(self, X):
        X = self._checked(X)
        return self.model_.predict_proba(X)

    @available_if(lambda self: hasattr(self._build()[-1], "decision_function"))
    def decision_function(self, X):
        X = self._checked(X)
        return self.model_.decision_function(X)


class LinearProbe(_Head):
    """L2-normalised features + multinomial logistic regression (the CLIP/DINOv2 linear probe).

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength (> 0); smaller is stronger.
    class_weight : dict, "balanced" or None
        Per-class weights, as for scikit-learn's ``LogisticRegression``.
    max_iter : int, default 2000
        Solver iterations.
    """

    _parameter_constraints = {"C": [_POSITIVE], "class_weight": _CLASS_WEIGHT, "max_iter": [_COUNT]}

    def __init__(self, C: float = 1.0, class_weight=None, max_iter: int = 2000):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def _build(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        return make_pipeline(Normalizer(), LogisticRegression(C=self.C, class_weight=self.class_weight,
                                                              max_iter=self.max_iter))


class SVMHead(_Head):
    """Standardised features + a support vector machine, with probabilities calibrated on
    internal folds (Platt scaling).

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength (> 0).
    kernel : {"rbf", "linear", "poly", "sigmoid"}, default "rbf"
        The SVM kernel.
    gamma : "scale", "auto" or float, default "scale"
        Kernel coefficient, as for scikit-learn's ``SVC``.
    class_weight : dict, "balanced" or None
        Per-class weights.
    """

    _parameter_constraints = {
        "C": [_POSITIVE], "kernel": [StrOptions({"rbf", "linear", "poly", "sigmoid"})],
        "gamma": [StrOptions({"scale", "auto"}), Interval(Real, 0, None, closed="left")], "class_weight": _CLASS_WEIGHT,
    }

    def __init__(self, C: float = 1.0, kernel: str = "rbf", gamma="scale", class_weight=None):
        self.C = C
        self.kernel = kernel
        self.gamma = gamma
        self.class_weight = class_weight

    def _build(self):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        svm = SVC(C=self.C, kernel=self.kernel, gamma=self.gamma, random_state=0)
        return make_pipeline(StandardScaler(), CalibratedClassifierCV(svm, ensemble=False, cv=3))

    def _fit_params(self, y) -> dict:
        """``class_weight`` as sample weights, so that both the SVM and its calibration see them
        (weights given to the SVM alone are undone by calibrating on unweighted folds)."""
        if self.class_weight is None:
            return {}
        from sklearn.utils.class_weight import compute_sample_weight

        return {"calibratedclassifiercv__sample_weight": compute_sample_weight(self.class_weight, y)}


class MLPHead(_Head):
    """Standardised features + a one-hidden-layer perceptron.

    Parameters
    ----------
    hidden : int, default 256
        Width of the hidden layer.
    alpha : float, default 1e-4
        L2 penalty (>= 0).
    max_iter : int, default 500
        Training epochs at most.
    random_state : int, RandomState or None, default 0
        Seed of the initial weights and of the batch order.
    """

    _parameter_constraints = {"hidden": [_COUNT], "alpha": [Interval(Real, 0, None, closed="left")],
                              "max_iter": [_COUNT], "random_state": ["random_state"]}

    def __init__(self, hidden: int = 256, alpha: float = 1e-4, max_iter: int = 500, random_state: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _build(self):
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                                             max_iter=self.max_iter, random_state=self.random_state))


class KNNHead(_Head):
    """L2-normalised features + k nearest neighbours (cosine similarity).

    Parameters
    ----------
    n_neighbors : int, default 5
        Neighbours that vote.
    """

    _parameter_constraints = {"n_neighbors": [_COUNT]}

    def __init__(self, n_neighbors: int = 5):
        self.n_neighbors = n_neighbors

    def _build(self):
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=self.n_neighbors))


@dataclass(frozen=True)
class HeadSpec:
    """A named head: its estimator class and the grid a sweep tunes it over."""

    estimator: type
    grid: dict[str, list]


HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec(LinearProbe, {"C": [0.01, 0.1, 1.0, 10.0, 100.0]}),
    "svm": HeadSpec(SVMHead, {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}),
    "mlp": HeadSpec(MLPHead, {"alpha": [1e-4, 1e-2]}),
    "knn": HeadSpec(KNNHead, {"n_neighbors": [1, 5, 15]}),
}


def make_head(head: Any = "logreg", **params: Any):
    """A fresh, unfitted head.

    Parameters
    ----------
    head : str or scikit-learn classifier
        A name from ``HEADS`` (``"logreg"``, ``"svm"``, ``"mlp"``, ``"knn"``) or any scikit-learn
        classifier instance (cloned, never changed).
    **params
        Parameters of the head; an unknown one is a ``BadInputError`` listing the valid ones.

    Returns
    -------
    estimator
        An unfitted classifier.
    """
    from sklearn.base import clone
    from sklearn.utils import get_tags

    if isinstance(head, str):
        if head not in HEADS:
            raise UnknownHeadError(
                f"unknown head {head!r}.{did_you_mean(head, HEADS)} Built-in heads: {', '.join(HEADS)}; "
                f"or pass any scikit-learn classifier instance"
            )
        _check_head_params(repr(head), HEADS[head].estimator._get_param_names(), params)
        return HEADS[head].estimator(**params)
    if not (hasattr(head, "fit") and hasattr(head, "predict") and hasattr(head, "get_params")):
        raise UnknownHeadError(f"head {head!r} is neither a built-in name ({', '.join(HEADS)}) nor a scikit-learn classifier")
    try:
        kind = get_tags(head).estimator_type
    except AttributeError:  # not a scikit-learn estimator: taken on trust
        kind = None
    if kind not in (None, "classifier"):
        kind = kind.replace("_", " ")
        raise BadInputError(
            f"head={type(head).__name__}() is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, but a head must be a classifier: use a built-in head "
            f"({', '.join(HEADS)}) or a scikit-learn classifier (e.g. RidgeClassifier() for Ridge())"
        )
    _check_head_params(type(head).__name__, list(head.get_params(deep=True)), params)
    return clone(head).set_params(**params)


def _check_head_params(head: str, valid: list[str], params: dict) -> None:
    unknown = [key for key in params if key not in valid]
    if unknown:
        raise BadInputError(
            f"head {head} has no parameter {unknown[0]!r}.{did_you_mean(unknown[0], valid)} "
            f"Its parameters: {', '.join(valid)}"
        )


def head_name(head: Any) -> str:
    """A readable name: the built-in name, or the estimator's class name."""
    return head if isinstance(head, str) else type(head).__name__
