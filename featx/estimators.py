"""scikit-learn estimators: ``Embedder`` (a transformer) and ``TransferClassifier`` (backbone + head).

>>> from featx import Embedder, TransferClassifier
>>> from sklearn.base import clone
>>> clone(TransferClassifier("timm/resnet18", head="svm")).head
'svm'
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .backbones.base import Backbone
from .errors import BadInputError
from .extraction import Extraction, extract
from .heads import make_head

_shared: dict[str, Backbone] = {}


def resolve_backbone(backbone: str | Backbone, options: dict | None = None) -> Backbone:
    """A ``Backbone`` from a registered name (+ options) or an instance.

    Instances built from the same name and options are shared within the process, so clones in a
    grid search load the weights once.
    """
    if isinstance(backbone, Backbone):
        if options:
            raise TypeError("backbone_options apply to a backbone name, not to a Backbone instance")
        return backbone
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered name or a featx.Backbone, got {type(backbone).__name__}")
    from .registry import create_backbone

    key = json.dumps([backbone, options or {}], sort_keys=True, default=repr)
    if key not in _shared:
        _shared[key] = create_backbone(backbone, **(options or {}))
    return _shared[key]


class _Embeds:
    """What both estimators share: the backbone parameters and the cached extraction."""

    def _backbone(self) -> Backbone:
        return resolve_backbone(self.backbone, self.backbone_options)

    def _columns(self, backbone: Backbone) -> slice:
        """The columns of ``view`` (one layer of a multi-layer backbone), or all of them."""
        if self.view is None:
            return slice(0, backbone.dim)
        if self.view not in backbone.views:
            raise BadInputError(f"view {self.view!r} is not one of {backbone.name!r}'s views: {list(backbone.views)}")
        return backbone.views[self.view]

    def _extract(self, X) -> Extraction:
        backbone = self._backbone()
        result = extract(
            backbone, X, cache_dir=self.cache_dir, batch_size=self.batch_size,
            device=self.device, dtype=self.cache_dtype, num_workers=self.num_workers, engine=self.engine,
            errors=self.errors, progress=self.progress,
        )
        self.last_extraction_ = result.stats
        columns = self._columns(backbone)
        if columns != slice(0, backbone.dim):
            result = Extraction(np.ascontiguousarray(result.vectors[:, columns]), result.ok, result.stats)
        return result


class Embedder(_Embeds, TransformerMixin, BaseEstimator):
    """Embed samples with a backbone through the content-addressed cache.

    ``transform(X)`` returns a float32 array ``(n_samples, dim)`` (only the columns of ``view``, one
    of ``backbone.views``, when given); X is a list of image paths,
    PIL images or uint8 arrays (image backbones) or a list of ``str`` (text backbones).
    Nothing is learned, so ``transform`` works without ``fit``.  Samples that could not be read
    with ``errors="skip"`` come back as NaN rows (listed in ``last_extraction_.failed``).

    >>> emb = Embedder("timm/resnet18", backbone_options={"pretrained": False})
    >>> emb.get_params()["batch_size"] is None
    True
    """

    def __init__(self, backbone: str | Backbone = "timm/resnet18", *, backbone_options: dict | None = None,
                 view: str | None = None, cache_dir=None, batch_size: int | None = None, device: str = "auto", num_workers: int = 0, engine: str = "local",
                 cache_dtype: str = "float32", errors: str = "raise", progress: bool = False) -> None:
        self.backbone = backbone
        self.backbone_options = backbone_options
        self.view = view
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.engine = engine
        self.cache_dtype = cache_dtype
        self.errors = errors
        self.progress = progress

    def fit(self, X=None, y=None) -> "Embedder":
        """Resolve the backbone (nothing is learned from X)."""
        backbone = self._backbone()
        columns = self._columns(backbone)
        self.n_features_out_ = columns.stop - columns.start
        self.fingerprint_ = backbone.fingerprint()
        return self

    def transform(self, X) -> np.ndarray:
        return self._extract(X).vectors

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        backbone = self._backbone()
        columns = self._columns(backbone)
        return np.asarray([f"{backbone.name}:{i}" for i in range(columns.start, columns.stop)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


class TransferClassifier(_Embeds, ClassifierMixin, BaseEstimator):
    """A classifier head (``"logreg"``, ``"svm"``, ``"mlp"``, ``"knn"`` or any scikit-learn
    classifier) trained on cached backbone embeddings.

    >>> clf = TransferClassifier("hf/all-MiniLM-L6-v2", head="logreg")   # doctest: +SKIP
    >>> clf.fit(texts, labels).predict(["a new text"])                  # doctest: +SKIP
    """

    def __init__(self, backbone: str | Backbone = "timm/resnet18", head: Any = "logreg", *,
                 head_params: dict | None = None, backbone_options: dict | None = None, view: str | None = None,
                 cache_dir=None,
                 batch_size: int | None = None, device: str = "auto", num_workers: int = 0, engine: str = "local",
                 cache_dtype: str = "float32", errors: str = "raise", progress: bool = False) -> None:
        self.backbone = backbone
        self.head = head
        self.head_params = head_params
        self.backbone_options = backbone_options
        self.view = view
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.engine = engine
        self.cache_dtype = cache_dtype
        self.errors = errors
        self.progress = progress

    def fit(self, X, y) -> "TransferClassifier":
        from .datasets import labels_or_raise

        y = labels_or_raise(y, len(X))
        result = self._extract(X)
        if result.ok.all():  # no copy of the matrix just to drop nothing
            return self.fit_embeddings(result.vectors, y)
        return self.fit_embeddings(result.vectors[result.ok], y[result.ok])

    def fit_embeddings(self, Z: np.ndarray, y) -> "TransferClassifier":
        """Fit the head on embeddings already computed with this backbone (used by sweeps)."""
        backbone = self._backbone()
        self.head_ = make_head(self.head, **(self.head_params or {})).fit(Z, np.asarray(y))
        self.classes_ = self.head_.classes_
        self.n_features_in_ = Z.shape[1]
        self.backbone_name_ = backbone.name
        self.fingerprint_ = backbone.fingerprint()
        return self

    def _embed_for_predict(self, X) -> np.ndarray:
        check_is_fitted(self, "head_")
        result = self._extract(X)
        if not result.ok.all():
            from .errors import BadInputError

            raise BadInputError(
                "cannot predict unreadable samples: " + "; ".join(result.stats.failed)
            )
        return result.vectors

    def predict(self, X) -> np.ndarray:
        Z = self._embed_for_predict(X)
        return self.head_.predict(Z)

    def predict_proba(self, X) -> np.ndarray:
        Z = self._embed_for_predict(X)
        return self.head_.predict_proba(Z)

    @available_if(lambda self: hasattr(make_head(self.head, **(self.head_params or {})), "decision_function"))
    def decision_function(self, X) -> np.ndarray:
        Z = self._embed_for_predict(X)
        return self.head_.decision_function(Z)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
