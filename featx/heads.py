"""Classification and regression heads trained on embeddings: scikit-learn estimators with tuning grids.

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
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import BadInputError, UnknownHeadError, did_you_mean, validate_params

_POSITIVE = Interval(Real, 0, None, closed="neither")
_COUNT = Interval(Integral, 1, None, closed="left")
_CLASS_WEIGHT = [dict, StrOptions({"balanced"}), None]


class _PipelineHead(BaseEstimator):
    """Fits ``self._build()`` (a scikit-learn pipeline) and delegates predictions to it."""

    _parameter_constraints: dict = {}

    def _build(self):
        raise NotImplementedError

    def _fit_params(self, y) -> dict:
        """Keyword arguments of the pipeline's ``fit`` (none by default)."""
        return {}

    def _check_targets(self, X, y):
        return validate_data(self, X, y)

    def fit(self, X, y):
        """Fit on embeddings.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
            Embeddings.
        y : array-like of shape (n_samples,)
            Class labels (classification heads) or numbers (regression heads).

        Returns
        -------
        self
        """
        validate_params(self)
        X, y = self._check_targets(X, y)
        self.model_ = self._model().fit(X, y, **self._fit_params(y))
        n_iter = getattr(self._fitted_step(), "n_iter_", None)
        if n_iter is not None:
            self.n_iter_ = np.max(n_iter)
        return self

    def _model(self):
        """The unfitted model ``fit`` trains: the pipeline itself, or a wrapper around it."""
        return self._build()

    def _fitted_step(self):
        """The last step of the fitted pipeline (the estimator proper)."""
        return self.model_[-1]

    def _checked(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False)

    def predict(self, X):
        X = self._checked(X)
        return self.model_.predict(X)


class _Head(ClassifierMixin, _PipelineHead):
    """A classification head.

    Every head has the same methods: ``fit(X, y)`` on an embedding matrix ``X`` of shape
    ``(n_samples, dim)``, then ``predict``, ``predict_proba`` and ``decision_function`` (where its
    model has one); fitted attributes ``model_`` (the pipeline), ``classes_``, ``n_features_in_``.
    """

    def _check_targets(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        return X, y

    def fit(self, X, y):
        super().fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    fit.__doc__ = _PipelineHead.fit.__doc__

    def predict_proba(self, X):
        X = self._checked(X)
        return self.model_.predict_proba(X)

    @available_if(lambda self: hasattr(self._build()[-1], "decision_function"))
    def decision_function(self, X):
        X = self._checked(X)
        return self.model_.decision_function(X)


def _sample_weights(class_weight, y, step: str) -> dict:
    """``class_weight`` as per-sample weights for the pipeline step ``step`` (none without it)."""
    if class_weight is None:
        return {}
    from sklearn.utils.class_weight import compute_sample_weight

    return {f"{step}__sample_weight": compute_sample_weight(class_weight, y)}


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


SVM_FOLDS = 3  # the calibration folds of the svm head


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
        return make_pipeline(StandardScaler(), CalibratedClassifierCV(svm, ensemble=False, cv=SVM_FOLDS))

    def _check_targets(self, X, y):
        X, y = super()._check_targets(X, y)
        labels, counts = np.unique(y, return_counts=True)
        if len(labels) > 1 and counts.min() < SVM_FOLDS:  # one class: scikit-learn says so itself
            raise BadInputError(f"the svm head calibrates its probabilities on {SVM_FOLDS} folds, so it needs at least "
                                f"{SVM_FOLDS} samples of each class; class {labels[counts.argmin()].item()!r} has "
                                f"{counts.min()}: add samples of that class or use the logreg head")
        return X, y

    def _fit_params(self, y) -> dict:
        """``class_weight`` as sample weights, so that both the SVM and its calibration see them
        (weights given to the SVM alone are undone by calibrating on unweighted folds)."""
        return _sample_weights(self.class_weight, y, "calibratedclassifiercv")


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
    class_weight : dict, "balanced" or None
        Per-class weights, applied as sample weights of the loss (``"balanced"``: inversely
        proportional to class frequencies).
    """

    _parameter_constraints = {"hidden": [_COUNT], "alpha": [Interval(Real, 0, None, closed="left")],
                              "max_iter": [_COUNT], "random_state": ["random_state"], "class_weight": _CLASS_WEIGHT}

    def __init__(self, hidden: int = 256, alpha: float = 1e-4, max_iter: int = 500, random_state: int = 0,
                 class_weight=None):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state
        self.class_weight = class_weight

    def _build(self):
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                                             max_iter=self.max_iter, random_state=self.random_state))

    def _fit_params(self, y) -> dict:
        return _sample_weights(self.class_weight, y, "mlpclassifier")


class KNNHead(_Head):
    """L2-normalised features + k nearest neighbours (cosine similarity).

    Parameters
    ----------
    n_neighbors : int, default 5
        Neighbours that vote.
    class_weight : dict, "balanced" or None
        Weight of each neighbour's vote by its class: with ``"balanced"`` a vote counts inversely
        to its class's frequency in the training data (``n_samples / (n_classes * count)``), so a
        rare class wins with fewer neighbours.  Probabilities are the weighted votes, normalised.
    """

    _parameter_constraints = {"n_neighbors": [_COUNT], "class_weight": _CLASS_WEIGHT}

    def __init__(self, n_neighbors: int = 5, class_weight=None):
        self.n_neighbors = n_neighbors
        self.class_weight = class_weight

    def _build(self):
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=self.n_neighbors))

    def fit(self, X, y):
        from sklearn.utils.class_weight import compute_class_weight

        super().fit(X, y)
        y = np.asarray(y)
        # scikit-learn's neighbours take no class or sample weights: the votes are reweighted here
        self.vote_weights_ = (np.ones(len(self.classes_)) if self.class_weight is None
                              else compute_class_weight(self.class_weight, classes=self.classes_, y=y))
        return self

    fit.__doc__ = _PipelineHead.fit.__doc__

    def predict_proba(self, X):
        votes = super().predict_proba(X) * self.vote_weights_
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class _RegressionHead(RegressorMixin, _PipelineHead):
    """A regression head: ``fit(X, y)`` on embeddings and numeric targets, then ``predict``.

    The target is standardised for fitting and mapped back for predictions (scikit-learn's
    ``TransformedTargetRegressor``), so penalties and kernel widths do not depend on its units.
    """

    def _check_targets(self, X, y):
        return validate_data(self, X, y, y_numeric=True)

    def _model(self):
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.preprocessing import StandardScaler

        return TransformedTargetRegressor(self._build(), transformer=StandardScaler())

    def _fitted_step(self):
        return self.model_.regressor_[-1]


class RidgeHead(_RegressionHead):
    """L2-normalised features + ridge regression (the linear probe for a continuous target).

    Normalised like ``LinearProbe``, not standardised: pooled CNN features have many nearly dead
    dimensions (661 of Lite0's 1280 on the textile images), which standardising blows up on new
    samples (5-fold R² −18.9 against 0.49 on the textile roughness example).

    Parameters
    ----------
    alpha : float or None, default None
        L2 penalty (> 0); larger is stronger.  ``None``: chosen among 10^-4 … 10^4 by efficient
        leave-one-out cross-validation (scikit-learn's ``RidgeCV``).
    """

    _parameter_constraints = {"alpha": [_POSITIVE, None]}

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha

    def _build(self):
        from sklearn.linear_model import Ridge, RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        ridge = RidgeCV(alphas=np.logspace(-4, 4, 17)) if self.alpha is None else Ridge(alpha=self.alpha)
        return make_pipeline(Normalizer(), ridge)


class SVRHead(_RegressionHead):
    """Standardised features + support vector regression.

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength (> 0).
    epsilon : float, default 0.1
        Width of the no-penalty tube, in standard deviations of the target (>= 0).
    kernel : {"rbf", "linear", "poly", "sigmoid"}, default "rbf"
        The SVM kernel.
    gamma : "scale", "auto" or float, default "scale"
        Kernel coefficient, as for scikit-learn's ``SVR``.
    """

    _parameter_constraints = {
        "C": [_POSITIVE], "epsilon": [Interval(Real, 0, None, closed="left")],
        "kernel": [StrOptions({"rbf", "linear", "poly", "sigmoid"})],
        "gamma": [StrOptions({"scale", "auto"}), Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, C: float = 1.0, epsilon: float = 0.1, kernel: str = "rbf", gamma="scale"):
        self.C = C
        self.epsilon = epsilon
        self.kernel = kernel
        self.gamma = gamma

    def _build(self):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVR

        return make_pipeline(StandardScaler(), SVR(C=self.C, epsilon=self.epsilon, kernel=self.kernel, gamma=self.gamma))


class MLPRegressorHead(_RegressionHead):
    """Standardised features + a one-hidden-layer perceptron with a squared-error loss.

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
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                                            max_iter=self.max_iter, random_state=self.random_state))


class KNNRegressorHead(_RegressionHead):
    """L2-normalised features + the mean target of the k nearest neighbours (cosine similarity).

    Parameters
    ----------
    n_neighbors : int, default 5
        Neighbours averaged.
    weights : {"uniform", "distance"}, default "uniform"
        Equal weights, or weights inversely proportional to the distance.
    """

    _parameter_constraints = {"n_neighbors": [_COUNT], "weights": [StrOptions({"uniform", "distance"})]}

    def __init__(self, n_neighbors: int = 5, weights: str = "uniform"):
        self.n_neighbors = n_neighbors
        self.weights = weights

    def _build(self):
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        return make_pipeline(Normalizer(), KNeighborsRegressor(n_neighbors=self.n_neighbors, weights=self.weights))


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

REGRESSION_HEADS: dict[str, HeadSpec] = {
    "ridge": HeadSpec(RidgeHead, {"alpha": [0.001, 0.01, 0.1, 1.0, 10.0]}),
    "svr": HeadSpec(SVRHead, {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}),
    "mlp": HeadSpec(MLPRegressorHead, {"alpha": [1e-4, 1e-2]}),
    "knn": HeadSpec(KNNRegressorHead, {"n_neighbors": [5, 15], "weights": ["uniform", "distance"]}),
}


def make_head(head: Any = "logreg", task: str = "classification", **params: Any):
    """A fresh, unfitted head.

    Parameters
    ----------
    head : str or scikit-learn estimator
        A name from ``HEADS`` (``"logreg"``, ``"svm"``, ``"mlp"``, ``"knn"``) or, for
        ``task="regression"``, from ``REGRESSION_HEADS`` (``"ridge"``, ``"svr"``, ``"mlp"``,
        ``"knn"``); or any scikit-learn classifier (regressor) instance (cloned, never changed).
    task : {"classification", "regression"}
        What the head predicts.
    **params
        Parameters of the head; an unknown one is a ``BadInputError`` listing the valid ones.

    Returns
    -------
    estimator
        An unfitted classifier (regressor).

    >>> type(make_head("ridge", task="regression", alpha=10.0)).__name__
    'RidgeHead'
    """
    from sklearn.base import clone
    from sklearn.utils import get_tags

    registry, kind_wanted = (REGRESSION_HEADS, "regressor") if task == "regression" else (HEADS, "classifier")
    if isinstance(head, str):
        if head not in registry:
            other = HEADS if registry is REGRESSION_HEADS else REGRESSION_HEADS
            hint = (f" ({head!r} is a {'classification' if other is HEADS else 'regression'} head)"
                    if head in other else did_you_mean(head, registry))
            raise UnknownHeadError(
                f"unknown head {head!r}.{hint} Built-in {task} heads: {', '.join(registry)}; "
                f"or pass any scikit-learn {kind_wanted} instance"
            )
        _check_head_params(repr(head), registry[head].estimator._get_param_names(), params)
        return registry[head].estimator(**params)
    if not (hasattr(head, "fit") and hasattr(head, "predict") and hasattr(head, "get_params")):
        raise UnknownHeadError(f"head {head!r} is neither a built-in name ({', '.join(registry)}) nor a scikit-learn {kind_wanted}")
    try:
        kind = get_tags(head).estimator_type
    except AttributeError:  # not a scikit-learn estimator: taken on trust
        kind = None
    if kind not in (None, kind_wanted):
        kind = kind.replace("_", " ")
        example = "RidgeClassifier() for Ridge()" if kind_wanted == "classifier" else "Ridge() for RidgeClassifier()"
        raise BadInputError(
            f"head={type(head).__name__}() is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, but a head must be a {kind_wanted}: use a built-in head "
            f"({', '.join(registry)}) or a scikit-learn {kind_wanted} (e.g. {example})"
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
