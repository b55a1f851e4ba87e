"""scikit-learn estimators: ``Embedder`` (a transformer), ``TransferClassifier`` and
``TransferRegressor`` (backbone + head).

All take a backbone name (``"auto"``, the default, picks a pretrained one by what X holds:
``"timm/tf_efficientnet_lite0"`` for images, ``"hf/all-MiniLM-L6-v2"`` for texts) or a
``featx.Backbone`` instance, and embed through the content-addressed cache.

>>> from featx import TransferClassifier
>>> from sklearn.base import clone
>>> clone(TransferClassifier(head="svm")).get_params()["backbone"]
'auto'
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Integral
from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .backbones.base import Backbone
from .data.samples import INPUTS, infer_modality, sample_list
from .data.labels import labels_or_raise, multilabel_or_none, regression_targets_or_raise
from .errors import BadInputError, RandomInitWarning, validate_params
from .extraction.pipeline import Extraction, extract
from .heads import make_head
from .plugins.registry import resolve_backbone

DEFAULT_BACKBONES = {"image": "timm/tf_efficientnet_lite0", "text": "hf/all-MiniLM-L6-v2"}

# While ``featx.save`` serialises a model: the (name, fingerprint) of every featx estimator met,
# and their state is written without the backbone object (rebuilt from its name when loaded).
_saving: ContextVar[list | None] = ContextVar("featx_saving", default=None)
# While ``featx.load`` deserialises one: the backbone override (or None), the cache_dir to use
# and the backbones met.
_loading: ContextVar[tuple[Any, Any, list] | None] = ContextVar("featx_loading", default=None)


@contextmanager
def portable_state() -> Iterator[list[dict]]:
    """Within the block, the state of featx estimators leaves out their backbone (a ``Backbone``
    parameter is written as its name) and their ``cache_dir`` (where *this* machine keeps
    embeddings); yields the backbones met, for the manifest.  Pickling outside it keeps all."""
    met: list[dict] = []
    token = _saving.set(met)
    try:
        yield met
    finally:
        _saving.reset(token)


@contextmanager
def restoring(backbone: Any = None, cache_dir: Any = None) -> Iterator[list[dict]]:
    """Within the block, featx estimators restored without their backbone rebuild it (or take
    ``backbone``), check its fingerprint and use ``cache_dir``; yields the backbones met."""
    met: list[dict] = []
    token = _loading.set((backbone, cache_dir, met))
    try:
        yield met
    finally:
        _loading.reset(token)


def _note(met: list[dict], estimator: "_Embeds") -> None:
    entry = {"name": estimator.backbone_name_, "fingerprint": estimator.fingerprint_}
    if entry not in met:  # once per backbone, however often its state is asked for
        met.append(entry)


class _Embeds:
    """What both estimators share: the backbone parameters and the cached extraction."""

    _parameter_constraints: dict = {
        "backbone": [str, Backbone],
        "backbone_options": [dict, None],
        "input": [StrOptions(set(INPUTS))],
        "view": [str, None],
        "cache_dir": [str, os.PathLike, None],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "engine": [StrOptions({"local", "ray"})],
        "cache_dtype": [StrOptions({"float32", "float16"})],
        "errors": [StrOptions({"raise", "skip"})],
        "progress": ["boolean"],
    }

    def _backbone(self, X: Any = None) -> Backbone:
        """The fitted backbone, else the one the parameters name (``"auto"``: by what X holds)."""
        return self.backbone_ if hasattr(self, "backbone_") else self._named_backbone(X)

    def _named_backbone(self, X: Any = None) -> Backbone:
        name = self.backbone
        if isinstance(name, str) and name == "auto":
            if X is None:
                raise BadInputError('backbone="auto" is chosen by what X holds: pass X, or name a backbone')
            name = DEFAULT_BACKBONES[infer_modality(X, self.input)]
        return resolve_backbone(name, self.backbone_options)

    def _columns(self, backbone: Backbone) -> slice:
        """The columns of ``view`` (one layer of a multi-layer backbone), or all of them."""
        if self.view is None:
            return slice(0, backbone.dim)
        if self.view not in backbone.views:
            raise BadInputError(f"view {self.view!r} is not one of {backbone.name!r}'s views: {list(backbone.views)}")
        return backbone.views[self.view]

    def _extract(self, backbone: Backbone, X) -> Extraction:
        result = extract(
            backbone, X, cache_dir=self.cache_dir, batch_size=self.batch_size, device=self.device,
            dtype=self.cache_dtype, num_workers=self.num_workers, engine=self.engine, errors=self.errors,
            progress=self.progress, input=self.input,
        )
        columns = self._columns(backbone)
        if columns != slice(0, backbone.dim):
            result = Extraction(np.ascontiguousarray(result.vectors[:, columns]), result.ok, result.stats)
        return result

    def _set_backbone(self, backbone: Backbone) -> None:
        self.backbone_ = backbone
        self.backbone_name_ = backbone.name
        self.fingerprint_ = backbone.fingerprint()

    def _warn_if_random(self, backbone: Backbone) -> None:
        if backbone.random_init and (self.backbone_options or {}).get("pretrained") is not False:
            warnings.warn(
                f"backbone {backbone.name!r} has random weights (no weights file): its features are a baseline, "
                f"not transferred knowledge. Use a pretrained backbone (the default backbone='auto' picks one), or "
                f"pass backbone_options={{'pretrained': False}} if random weights are intended (for a Backbone "
                f"instance: warnings.filterwarnings('ignore', category=featx.RandomInitWarning)).",
                RandomInitWarning, stacklevel=3,
            )

    # -- featx.save / featx.load ----------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        met = _saving.get()
        if met is None:  # pickling (joblib workers, copies): everything as is
            return state
        state = {**state, "cache_dir": None}
        if isinstance(state["backbone"], Backbone):
            state["backbone"] = state["backbone"].name
        if state.pop("backbone_", None) is not None:
            _note(met, self)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        loading = _loading.get()
        if loading is None or "backbone_" in state:
            return
        if "fingerprint_" not in state:  # never fitted (an Embedder used without fit)
            self.cache_dir = loading[1]
            return
        override, self.cache_dir, met = loading
        if override is not None:
            self.backbone, self.backbone_options = override, None
        named = self.backbone if not (isinstance(self.backbone, str) and self.backbone == "auto") else self.backbone_name_
        built = resolve_backbone(named, self.backbone_options)
        if built.fingerprint() != self.fingerprint_:
            raise BadInputError(
                f"the model was fitted on backbone {self.backbone_name_!r} with fingerprint {self.fingerprint_}, but "
                f"{built.name!r} here has fingerprint {built.fingerprint()} (different weights, preprocessing or "
                f"options). Install the same weights or pass backbone="
            )
        self.backbone_ = built
        _note(met, self)


_SHARED_DOC = """
    backbone : str or Backbone, default "auto"
        A registered name (see ``featx.list_backbones``), ``"auto"`` (a pretrained backbone for
        what X holds: ``"timm/tf_efficientnet_lite0"`` for images, ``"hf/all-MiniLM-L6-v2"`` for
        texts) or a ``featx.Backbone`` instance.
    backbone_options : dict, optional
        Options for a backbone given by name (``{"image_size": 160}``, ``{"pretrained": False}``…).
    input : {"auto", "text", "image"}, default "auto"
        What X holds.  ``"auto"`` refuses image file paths given to a text backbone (their names
        would be embedded, not the pictures) and text given to an image backbone; ``"text"`` says
        strings are texts to embed even if they name files.
    view : str, optional
        One of ``backbone.views`` (a layer of a multi-layer backbone); default all columns.
    cache_dir : str or path, optional
        The embedding cache (default ``$FEATX_CACHE_DIR`` or ``./cache``).
    batch_size : int, optional
        Samples per forward pass (default: tuned once per backbone and machine, or the backbone's own).
    device : str, default "auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    num_workers : int, default 0
        DataLoader processes decoding images.
    engine : {"local", "ray"}, default "local"
        Where cache misses are embedded.
    cache_dtype : {"float32", "float16"}, default "float32"
        How vectors are stored in the cache.
    errors : {"raise", "skip"}, default "raise"
        Unreadable samples: one error listing them all, or NaN rows (``fit`` leaves them out).
    progress : bool, default False
        A progress meter on stderr.
"""


class Embedder(_Embeds, TransformerMixin, BaseEstimator):
    """Embed samples with a backbone through the content-addressed cache.

    X is a list of image paths, PIL images or uint8 arrays (image backbones) or a list of ``str``
    (text backbones).  Nothing is learned, so ``transform`` works without ``fit``.  For what an
    extraction did (samples cached, embedded, unreadable), call ``featx.extract(backbone, X)``.

    Parameters
    ----------""" + _SHARED_DOC + """
    Attributes
    ----------
    backbone_ : Backbone
        The backbone, once fitted.
    backbone_name_, fingerprint_ : str
        Its name and fingerprint.
    n_features_out_ : int
        Columns of the output.

    >>> emb = Embedder("timm/resnet18", backbone_options={"pretrained": False})   # random weights, on purpose
    >>> emb.fit().n_features_out_
    512
    """

    def __init__(self, backbone: str | Backbone = "auto", *, backbone_options: dict | None = None, input: str = "auto",
                 view: str | None = None, cache_dir=None, batch_size: int | None = None, device: str = "auto",
                 num_workers: int = 0, engine: str = "local", cache_dtype: str = "float32", errors: str = "raise",
                 progress: bool = False) -> None:
        self.backbone = backbone
        self.backbone_options = backbone_options
        self.input = input
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
        """Resolve the backbone (nothing is learned from X; X is needed only for ``backbone="auto"``).

        Parameters
        ----------
        X : list of samples, optional
            Texts or images, to choose the ``"auto"`` backbone by.
        y : ignored

        Returns
        -------
        self
        """
        validate_params(self)
        backbone = self._named_backbone(None if X is None else sample_list(X))
        columns = self._columns(backbone)
        self._set_backbone(backbone)
        self.n_features_out_ = columns.stop - columns.start
        self._warn_if_random(backbone)
        return self

    def transform(self, X) -> np.ndarray:
        """Embed X.

        Parameters
        ----------
        X : list of samples
            Texts, or image paths / PIL images / uint8 arrays.

        Returns
        -------
        ndarray of shape (n_samples, n_features_out)
            float32 vectors, in input order; NaN rows for unreadable samples with ``errors="skip"``.
        """
        if not hasattr(self, "backbone_"):
            validate_params(self)
        X = sample_list(X)
        return self._extract(self._backbone(X), X).vectors

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


class _TransferModel(_Embeds):
    """What ``TransferClassifier`` and ``TransferRegressor`` share: a head fitted on cached embeddings.

    Subclasses say what the head predicts (``_task``), how targets are checked (``_targets``)
    and what the fitted head adds (``_fitted``).
    """

    _task = "classification"
    _parameter_constraints = {
        **_Embeds._parameter_constraints,
        "head": [str, HasMethods(["fit", "predict"])],
        "head_params": [dict, None],
    }

    def __init__(self, backbone: str | Backbone = "auto", head: Any = None, *, head_params: dict | None = None,
                 backbone_options: dict | None = None, input: str = "auto", view: str | None = None, cache_dir=None,
                 batch_size: int | None = None, device: str = "auto", num_workers: int = 0, engine: str = "local",
                 cache_dtype: str = "float32", errors: str = "raise", progress: bool = False) -> None:
        self.backbone = backbone
        self.head = head
        self.head_params = head_params
        self.backbone_options = backbone_options
        self.input = input
        self.view = view
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.engine = engine
        self.cache_dtype = cache_dtype
        self.errors = errors
        self.progress = progress

    def _targets(self, y, n: int) -> tuple[np.ndarray, dict]:
        """The checked targets as the head takes them, and fitted attributes they define."""
        raise NotImplementedError

    def _new_head(self, y: np.ndarray | None = None):
        """A fresh head for targets ``y`` (``None``: the head the parameters name, unchecked targets)."""
        return make_head(self.head, self._task, **(self.head_params or {}))

    def fit(self, X, y):
        """Embed X (through the cache) and fit the head.

        Parameters
        ----------
        X : list of samples
            Texts, or image paths / PIL images / uint8 arrays (a pandas Series is fine).
        y : array-like
            The targets (see the class's description).

        Returns
        -------
        self
        """
        return self._fit(X, y)

    def _fit(self, X, y, X_target=None):
        validate_params(self)
        X = sample_list(X)
        y, attributes = self._targets(y, len(X))
        head = self._new_head(y)  # a wrong head fails before any embedding
        backbone = self._named_backbone(X)
        adapt = getattr(self, "adapt", None)
        if (X_target is None) != (adapt is None):
            raise BadInputError("X_target is given but adapt=None: pass adapt='coral', 'sa', 'self-training' or "
                                "'auto' to use it" if adapt is None else
                                f"adapt={adapt!r} needs X_target: pass fit(X, y, X_target=<unlabelled samples "
                                f"of the new domain>)")
        if adapt is not None and y.ndim != 1:
            raise BadInputError(f"adapt={adapt!r} adapts single-label classifiers; multi-label targets: adapt=None")
        Z_target = None if X_target is None else self._target_vectors(backbone, X, X_target)
        result = self._extract(backbone, X)
        Z, y = (result.vectors, y) if result.ok.all() else (result.vectors[result.ok], y[result.ok])
        self._fit_head(head, backbone, Z, y, attributes, Z_target)
        self._warn_if_random(backbone)
        return self

    def _target_vectors(self, backbone: Backbone, X: list, X_target) -> np.ndarray:
        """X_target's vectors (unreadable samples left out with ``errors="skip"``), checked to be of X's kind."""
        X_target = sample_list(X_target)
        if not X_target:
            raise BadInputError("X_target is empty: pass unlabelled samples of the new domain, or leave it out "
                                "(and adapt=None)")
        kind, target_kind = infer_modality(X, self.input), infer_modality(X_target, self.input)
        if target_kind != kind:
            raise BadInputError(f"X_target holds {target_kind}s but X holds {kind}s (backbone {backbone.name!r}): "
                                f"X_target must be {kind}s of the new domain")
        result = self._extract(backbone, X_target)
        return result.vectors[result.ok]

    def fit_embeddings(self, Z: np.ndarray, y):
        """Fit the head on embeddings already computed with this backbone (used by sweeps).

        Parameters
        ----------
        Z : ndarray of shape (n_samples, dim)
            Vectors from ``featx.extract`` with the backbone the parameters name.
        y : array-like
            The targets.

        Returns
        -------
        self
        """
        validate_params(self)
        if isinstance(self.backbone, str) and self.backbone == "auto":
            raise BadInputError('fit_embeddings needs the backbone the embeddings came from, not backbone="auto"')
        if getattr(self, "adapt", None) is not None:
            raise BadInputError(f"fit_embeddings does not adapt: use fit(X, y, X_target=...) with adapt={self.adapt!r}")
        y, attributes = self._targets(y, len(Z))
        backbone = resolve_backbone(self.backbone, self.backbone_options)
        return self._fit_head(self._new_head(y), backbone, Z, y, attributes)

    def _fit_head(self, head, backbone: Backbone, Z: np.ndarray, y: np.ndarray, attributes: dict,
                  Z_target: np.ndarray | None = None):
        for name, value in attributes.items():
            setattr(self, name, value)
        if Z_target is None:
            self.head_ = head.fit(Z, y)
        else:
            from .shift.adapt import AdaptedHead

            self.head_ = AdaptedHead(head, self.adapt).fit(Z, y, Z_target)
        self._fitted()
        self.n_features_in_ = Z.shape[1]
        self._set_backbone(backbone)
        return self

    def _fitted(self) -> None:
        """Attributes taken from the fitted head (none by default)."""

    def _embed_for_predict(self, X) -> np.ndarray:
        check_is_fitted(self, "head_")
        result = self._extract(self.backbone_, X)
        if not result.ok.all():
            raise BadInputError("cannot predict unreadable samples: " + "; ".join(result.stats.failed))
        return result.vectors

    def predict(self, X):
        """The prediction for each sample.

        Parameters
        ----------
        X : list of samples

        Returns
        -------
        ndarray of shape (n_samples,), or the multi-label form of ``y`` (see the class)
        """
        Z = self._embed_for_predict(X)
        return self.head_.predict(Z)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


class TransferClassifier(_TransferModel, ClassifierMixin, BaseEstimator):
    """A classifier head trained on cached backbone embeddings.

    ``y`` is one class label per sample, or multi-label: a list of label lists (read as
    scikit-learn's ``MultiLabelBinarizer`` does; ``predict`` returns tuples of labels) or a 2-D
    0/1 indicator matrix (``predict`` returns one).  Multi-label targets train one head per
    label (one-vs-rest); ``predict_proba`` then gives each label's probability and ``score`` the
    subset accuracy (every label of a sample right).

    Parameters
    ----------""" + _SHARED_DOC + """    head : str or scikit-learn classifier, default "logreg"
        ``"logreg"``, ``"svm"``, ``"mlp"``, ``"knn"`` (see ``featx.heads``) or any scikit-learn
        classifier instance.
    head_params : dict, optional
        Parameters of the head (``{"C": 0.1}``, ``{"class_weight": "balanced"}``).
    adapt : {"coral", "sa", "self-training", "auto"}, skada adapter or None, default None
        Domain adaptation to the unlabelled ``X_target`` given to ``fit`` (see docs/shift.md):
        ``"coral"`` (second-order statistics aligned), ``"sa"`` (subspace alignment),
        ``"self-training"`` (confident pseudo-labels of X_target, refit, repeat), ``"auto"`` (the
        one an unsupervised scorer prefers, ``"none"`` unless an adapter scores higher) or a skada
        adapter instance.  ``predict`` then takes samples of the target domain.

    Attributes
    ----------
    backbone_ : Backbone
        The backbone it embeds with.
    backbone_name_, fingerprint_ : str
        Its name and fingerprint (``featx.load`` checks the fingerprint).
    head_ : estimator
        The fitted head (a ``OneVsRestClassifier`` of heads for multi-label targets).
    classes_ : ndarray
        The class labels (multi-label: the labels, or the column numbers of an indicator matrix).
    multilabel_ : bool
        Whether it was fitted on multi-label targets.
    label_binarizer_ : MultiLabelBinarizer or None
        For targets given as label lists: the binarizer that reads and writes them.
    adapt_ : str or estimator
        The adaptation used: ``"none"`` without ``adapt``, what ``"auto"`` chose with it.
    adapt_scores_ : dict
        With ``adapt="auto"``: the unsupervised score of each candidate (greater is better).

    predict, predict_proba and score change no state.  For what an extraction did (samples
    cached, embedded, unreadable), call ``featx.extract(model.backbone_, X, errors="skip")``.

    >>> clf = TransferClassifier(head="logreg")            # doctest: +SKIP
    >>> clf.fit(texts, labels).predict(["a new text"])     # doctest: +SKIP
    >>> clf.fit(texts, [["sports"], ["sports", "politics"], []]).predict(["a new text"])  # doctest: +SKIP
    [('sports',)]
    """

    _parameter_constraints = {
        **_TransferModel._parameter_constraints,
        "adapt": [StrOptions({"coral", "sa", "self-training", "auto"}), HasMethods(["fit_transform"]), None],
    }

    def __init__(self, backbone: str | Backbone = "auto", head: Any = "logreg", *, head_params: dict | None = None,
                 adapt: Any = None, backbone_options: dict | None = None, input: str = "auto", view: str | None = None,
                 cache_dir=None, batch_size: int | None = None, device: str = "auto", num_workers: int = 0,
                 engine: str = "local", cache_dtype: str = "float32", errors: str = "raise",
                 progress: bool = False) -> None:
        super().__init__(backbone, head, head_params=head_params, backbone_options=backbone_options, input=input,
                         view=view, cache_dir=cache_dir, batch_size=batch_size, device=device,
                         num_workers=num_workers, engine=engine, cache_dtype=cache_dtype, errors=errors,
                         progress=progress)
        self.adapt = adapt

    def fit(self, X, y, X_target=None) -> "TransferClassifier":
        """Embed X (through the cache) and fit the head.

        Parameters
        ----------
        X : list of samples
            Texts, or image paths / PIL images / uint8 arrays (a pandas Series is fine).
        y : array-like
            One class label per sample, or multi-label targets (see the class's description).
        X_target : list of samples, optional
            Unlabelled samples of the domain the model will predict on, embedded through the same
            cache; required by ``adapt`` and refused without it.

        Returns
        -------
        self
        """
        return self._fit(X, y, X_target)

    def _targets(self, y, n: int) -> tuple[np.ndarray, dict]:
        multilabel = multilabel_or_none(y, n)
        if multilabel is None:
            return labels_or_raise(y, n), {"multilabel_": False, "label_binarizer_": None}
        return multilabel[0], {"multilabel_": True, "label_binarizer_": multilabel[1]}

    def _new_head(self, y: np.ndarray | None = None):
        head = super()._new_head()
        if y is None or y.ndim == 1:
            return head
        from sklearn.multiclass import OneVsRestClassifier

        if isinstance(getattr(head, "class_weight", None), dict):
            raise BadInputError(
                "class_weight is a dict of classes, but with multi-label targets each label is its own yes/no "
                "problem: use head_params={'class_weight': 'balanced'} (weights each label's yes and no), or none")
        return OneVsRestClassifier(head)

    def _fitted(self) -> None:
        self.adapt_ = getattr(self.head_, "adapt_", "none")
        if hasattr(self.head_, "adapt_scores_"):
            self.adapt_scores_ = self.head_.adapt_scores_
        if self.label_binarizer_ is not None:
            self.classes_ = self.label_binarizer_.classes_
        elif self.multilabel_:
            self.classes_ = np.arange(len(self.head_.estimators_))
        else:
            self.classes_ = self.head_.classes_

    def predict(self, X):
        """The predicted class of each sample (multi-label: its labels, in the form ``y`` was given).

        Parameters
        ----------
        X : list of samples

        Returns
        -------
        ndarray of shape (n_samples,); multi-label: a 0/1 ndarray of shape (n_samples, n_labels),
        or a list of label tuples for targets given as label lists
        """
        predicted = super().predict(X)
        return self.label_binarizer_.inverse_transform(predicted) if self.label_binarizer_ is not None else predicted

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_`` (multi-label: each label's own).

        Parameters
        ----------
        X : list of samples

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        Z = self._embed_for_predict(X)
        return self.head_.predict_proba(Z)

    @available_if(lambda self: hasattr(make_head(self.head, **(self.head_params or {})), "decision_function"))
    def decision_function(self, X) -> np.ndarray:
        """The head's decision scores.

        Parameters
        ----------
        X : list of samples

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        Z = self._embed_for_predict(X)
        return self.head_.decision_function(Z)

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy on ``(X, y)``; for multi-label targets the subset accuracy (all labels right).

        Parameters
        ----------
        X : list of samples
        y : array-like
            True labels, in the form given to ``fit``.
        sample_weight : array-like, optional

        Returns
        -------
        float
        """
        from sklearn.metrics import accuracy_score

        check_is_fitted(self, "head_")
        if not self.multilabel_:
            return super().score(X, y, sample_weight)
        truth = self.label_binarizer_.transform(y) if self.label_binarizer_ is not None else np.asarray(y)
        Z = self._embed_for_predict(X)
        return float(accuracy_score(truth, self.head_.predict(Z), sample_weight=sample_weight))


class TransferRegressor(_TransferModel, RegressorMixin, BaseEstimator):
    """A regression head trained on cached backbone embeddings: one number per sample.

    ``score`` is R² (the coefficient of determination).

    Parameters
    ----------""" + _SHARED_DOC + """    head : str or scikit-learn regressor, default "ridge"
        ``"ridge"``, ``"svr"``, ``"knn"``, ``"mlp"`` (see ``featx.heads.REGRESSION_HEADS``) or any
        scikit-learn regressor instance.
    head_params : dict, optional
        Parameters of the head (``{"alpha": 10.0}``).

    Attributes
    ----------
    backbone_ : Backbone
        The backbone it embeds with.
    backbone_name_, fingerprint_ : str
        Its name and fingerprint (``featx.load`` checks the fingerprint).
    head_ : estimator
        The fitted head.

    >>> reg = TransferRegressor(head="ridge")               # doctest: +SKIP
    >>> reg.fit(texts, ratings).predict(["a new text"])     # doctest: +SKIP
    """

    _task = "regression"

    def __init__(self, backbone: str | Backbone = "auto", head: Any = "ridge", *, head_params: dict | None = None,
                 backbone_options: dict | None = None, input: str = "auto", view: str | None = None, cache_dir=None,
                 batch_size: int | None = None, device: str = "auto", num_workers: int = 0, engine: str = "local",
                 cache_dtype: str = "float32", errors: str = "raise", progress: bool = False) -> None:
        super().__init__(backbone, head, head_params=head_params, backbone_options=backbone_options, input=input,
                         view=view, cache_dir=cache_dir, batch_size=batch_size, device=device,
                         num_workers=num_workers, engine=engine, cache_dtype=cache_dtype, errors=errors,
                         progress=progress)

    def _targets(self, y, n: int) -> tuple[np.ndarray, dict]:
        return regression_targets_or_raise(y, n), {}
