"""Classification heads trained on embeddings: named scikit-learn estimators with tuning grids.

>>> from featx.heads import make_head
>>> make_head("logreg", C=0.5).get_params()["clf__C"]
0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import UnknownHeadError, did_you_mean


@dataclass(frozen=True)
class HeadSpec:
    """A named head: a factory for the estimator and the grid a sweep tunes it over."""

    factory: Callable[..., Any]
    grid: dict[str, list]
    description: str


def _logreg(C: float = 1.0, max_iter: int = 2000, class_weight=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline([("l2", Normalizer()),
                     ("clf", LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight))])


def _svm(C: float = 1.0, kernel: str = "rbf", gamma="scale", class_weight=None):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return Pipeline([("scale", StandardScaler()),
                     ("clf", SVC(C=C, kernel=kernel, gamma=gamma, probability=True,
                                 class_weight=class_weight, random_state=0))])


def _mlp(hidden: int = 256, alpha: float = 1e-4, max_iter: int = 500):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("clf", MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha,
                                           max_iter=max_iter, random_state=0))])


def _knn(n_neighbors: int = 5):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline([("l2", Normalizer()), ("clf", KNeighborsClassifier(n_neighbors=n_neighbors))])


HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec(_logreg, {"clf__C": [0.01, 0.1, 1.0, 10.0, 100.0]},
                       "L2-normalised features + logistic regression (the linear-probe protocol)"),
    "svm": HeadSpec(_svm, {"clf__C": [0.1, 1.0, 10.0], "clf__kernel": ["linear", "rbf"]},
                    "standardised features + support vector machine (linear or RBF)"),
    "mlp": HeadSpec(_mlp, {"clf__alpha": [1e-4, 1e-2]},
                    "standardised features + one-hidden-layer perceptron"),
    "knn": HeadSpec(_knn, {"clf__n_neighbors": [1, 5, 15]},
                    "L2-normalised features + k nearest neighbours (cosine)"),
}


def make_head(head: Any = "logreg", **params: Any):
    """A fresh, unfitted head: a name from ``HEADS`` or a clone of any scikit-learn classifier."""
    from sklearn.base import clone, is_classifier

    if isinstance(head, str):
        if head not in HEADS:
            raise UnknownHeadError(
                f"unknown head {head!r}.{did_you_mean(head, HEADS)} Built-in heads: {', '.join(HEADS)}; "
                f"or pass any scikit-learn classifier instance"
            )
        return HEADS[head].factory(**params)
    if is_classifier(head) or (hasattr(head, "fit") and hasattr(head, "predict")):
        return clone(head).set_params(**params) if params else clone(head)
    raise UnknownHeadError(
        f"head {head!r} is neither a built-in name ({', '.join(HEADS)}) nor a scikit-learn classifier"
    )


def head_name(head: Any) -> str:
    """A readable name: the built-in name, or the estimator's class name."""
    return head if isinstance(head, str) else type(head).__name__
