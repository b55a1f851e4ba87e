"""``FineTunedClassifier``: a backbone + linear head trained end to end, with the scikit-learn API."""

from __future__ import annotations

import hashlib
import os
from numbers import Integral, Real

import numpy as np

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .strategies import ADAPT, BATCHNORM, STRATEGIES, build_network, new_backbone
from .training import Targets, adapt_batchnorm, train_network
from .._fs import digest
from ..backbones.base import Backbone, TorchBackbone
from ..errors import BadInputError, validate_params


WEIGHTS = "weights.safetensors"  # the file of a saved model holding the network
TASKS = ("auto", "classification", "multilabel", "regression")


class FineTunedBackbone(Backbone):
    """A backbone whose weights were fine-tuned: same preprocessing, a fingerprint of its own."""

    def __init__(self, base: TorchBackbone, weights_digest: str):
        self.base, self.weights_digest = base, weights_digest
        self.name, self.modality, self.dim = f"{base.name}+finetuned", base.modality, base.dim
        self.default_batch_size = base.default_batch_size
        self.random_init = base.random_init

    @property
    def options(self) -> dict:
        return {**self.base.options, "finetuned": self.weights_digest}

    def fingerprint(self) -> str:
        return digest("finetuned", self.base.fingerprint(), self.weights_digest)

    def to(self, device: str) -> "FineTunedBackbone":
        self.base.to(device)
        return self

    def embed_batch(self, items) -> np.ndarray:
        return self.base.embed_batch(items)

    def embed_many(self, items, batch_size: int) -> np.ndarray:
        return self.base.embed_many(items, batch_size)


def state_digest(state: dict) -> str:
    """Digest of a state dict's tensors (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


class FineTunedClassifier(ClassifierMixin, BaseEstimator):
    """A backbone + linear head trained end to end, with the scikit-learn classifier API; also for
    multi-label targets (BCE per label) and, with ``task="regression"``, a continuous target (MSE).

    ``fit`` trains with ``strategy`` (see the module docstring); for ``"lp-ft"`` the head starts
    from a linear probe fitted on cached embeddings (or the one given to ``fit``).  Predictions
    embed through the cache under the fine-tuned fingerprint (never mixed with the frozen
    backbone's vectors), then apply the head.  Saved/loaded with ``featx.save`` / ``featx.load``
    (weights as safetensors).

    Parameters
    ----------
    backbone : str
        A registered timm or transformers backbone name (``featx backbones``).
    backbone_options : dict or None
        Its options (``image_size``, ``pooling``…); ``layers`` is refused (one output trains).
    strategy : {"full", "freeze", "llrd", "gradual", "lp-ft"}
        What trains, and at which rate (module docstring).
    epochs : int
        Epochs at most (early stopping after ``patience`` epochs without a better validation score).
    lr, head_lr : float
        Learning rate of the backbone, and of the head (default: ``lr`` for lp-ft, else ``10 * lr``).
    batchnorm : {"frozen", "update"}
        ``"frozen"`` (default): BatchNorm layers normalise with the pretrained running statistics
        and never update them (their scale and shift still train), so a learning rate of 0 changes
        nothing; ``"update"``: plain train mode, batch statistics and running averages updated
        (only with large batches and enough data; on 900 textile images it loses accuracy, see
        docs/finetune.md).
    adapt : {None, "adabn", "dann"}
        Domain adaptation to the unlabelled ``X_target`` given to ``fit``: ``"adabn"`` (AdaBN, Li et al.
        2016) re-estimates every BatchNorm layer's running statistics on ``X_target`` after training
        (networks with BatchNorm only); ``"dann"`` (Ganin & Lempitsky 2015) trains a small domain
        classifier on the pooled features of source and target batches behind a gradient-reversal
        layer, so that the encoder learns features the two domains share.
    val_size : float
        Fraction of ``X`` held out (stratified for classes) for early stopping and the best-epoch choice.
    task : {"auto", "classification", "multilabel", "regression"}
        What ``y`` is.  ``"auto"``: multi-label for label lists or a 0/1 indicator matrix (as
        ``TransferClassifier`` reads them), else classes.  Loss and validation metric follow:
        cross-entropy and accuracy; BCE-with-logits and subset accuracy (``predict_proba`` per label,
        ``predict`` in the form ``y`` was given); MSE on the standardised target and R² (one output,
        predictions in the target's units, ``score`` = R²).

    The other parameters: ``weight_decay`` (AdamW), ``batch_size``, ``grad_accum`` (batches per
    step), ``warmup`` (fraction of the steps), ``freeze_blocks`` / ``layer_decay`` /
    ``unfreeze_every`` (of the strategies), ``patience``, ``augment`` (default: images yes, text
    no), ``seed``, ``device``, ``cache_dir``, ``progress`` (bars on stderr).

    Attributes
    ----------
    backbone_ : FineTunedBackbone
        What predictions embed with (``modality``, ``random_init`` as its base's).
    backbone_name_, fingerprint_, classes_ :
        Its name and fingerprint, and the class labels (multi-label: the labels; regression: none).
    task_, label_binarizer_, target_scale_ :
        The task fitted; the binarizer of label lists (or None); the regression target's (mean, std).
    network_, history_, best_epoch_, val_indices_ :
        The trained torch module, per-epoch records, the restored epoch and the validation rows.
    """

    _parameter_constraints: dict = {
        "backbone": [str],
        "backbone_options": [dict, None],
        "strategy": [StrOptions(set(STRATEGIES))],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="left")],
        "head_lr": [Interval(Real, 0, None, closed="left"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "grad_accum": [Interval(Integral, 1, None, closed="left")],
        "warmup": [Interval(Real, 0, 1, closed="both")],
        "freeze_blocks": [Interval(Integral, 0, None, closed="left")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "unfreeze_every": [Interval(Integral, 1, None, closed="left")],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "task": [StrOptions(set(TASKS))],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "batchnorm": [StrOptions(set(BATCHNORM))],
        "augment": ["boolean", None],
        "adapt": [StrOptions(set(ADAPT)), None],
        "seed": [Integral],
        "device": [str],
        "cache_dir": [str, os.PathLike, None],
        "progress": ["boolean"],
    }

    def __init__(self, backbone: str = "", backbone_options: dict | None = None, *, strategy: str = "lp-ft",
                 epochs: int = 5, lr: float = 1e-4, head_lr: float | None = None, weight_decay: float = 0.01,
                 batch_size: int = 32, grad_accum: int = 1, warmup: float = 0.1, freeze_blocks: int = 0,
                 layer_decay: float = 0.75, unfreeze_every: int = 1, val_size: float = 0.2, task: str = "auto",
                 patience: int = 3,
                 batchnorm: str = "frozen", augment: bool | None = None, adapt: str | None = None, seed: int = 0,
                 device: str = "auto", cache_dir=None, progress: bool = False):
        self.backbone = backbone
        self.backbone_options = backbone_options
        self.strategy = strategy
        self.epochs = epochs
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.warmup = warmup
        self.freeze_blocks = freeze_blocks
        self.layer_decay = layer_decay
        self.unfreeze_every = unfreeze_every
        self.val_size = val_size
        self.task = task
        self.patience = patience
        self.batchnorm = batchnorm
        self.augment = augment
        self.adapt = adapt
        self.seed = seed
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress

    def check_params(self) -> TorchBackbone:
        """Raise a ``BadInputError`` naming the first invalid parameter; return a private (unloaded)
        instance of the backbone to train."""
        validate_params(self)
        return new_backbone(self.backbone, self.backbone_options)

    def fit(self, X, y, probe=None, X_target=None) -> "FineTunedClassifier":
        """Train on ``(X, y)``.

        Parameters
        ----------
        X : list
            Image paths / images, or texts, as for ``featx.extract``.
        y : array-like
            One label per sample, multi-label targets, or numbers for ``task="regression"``.
        probe : TransferClassifier or TransferRegressor, optional
            For ``strategy="lp-ft"``: a fitted linear probe on this backbone (``linear_probe``), whose
            head the network starts from (fitted here when None).
        X_target : list, optional
            Unlabelled samples of the domain the model will meet, same modality as ``X``; needed
            by ``adapt`` and only with it.

        Returns
        -------
        FineTunedClassifier
            ``self``, fitted.
        """
        backbone = self.check_params()
        targets, binarizer = training_targets(self.task, y, len(X))
        check_target(self.adapt, X_target, backbone)
        if self.strategy == "lp-ft" and probe is None:
            probe = linear_probe(self.backbone, self.backbone_options, X, y, task=targets.task,
                                 cache_dir=self.cache_dir, progress=self.progress)
        elif self.strategy == "lp-ft" and not (hasattr(probe, "head_") and is_linear_probe(probe)):
            raise BadInputError("fit(probe=...) needs a fitted linear probe on this backbone (featx.finetuning"
                                ".estimator.linear_probe; LP-FT copies its coefficients); or leave probe=None")
        network, history, best_epoch, val_idx = train_network(self, backbone, probe, X, targets, X_target)
        if self.adapt == "adabn":
            adapt_batchnorm(network, backbone, X_target, self.batch_size, str(next(network.parameters()).device))
        self.history_, self.best_epoch_, self.val_indices_ = history, best_epoch, val_idx
        self.task_, self.label_binarizer_, self.target_scale_ = targets.task, binarizer, targets.scale
        return self._set_state(network, backbone, targets.classes)

    def _set_state(self, network, base: TorchBackbone, classes) -> "FineTunedClassifier":
        network.eval()
        base.weights_changed()  # its encoder is the trained network's
        self.network_ = network
        self.classes_ = np.asarray(classes)
        encoder_state = {f"encoder.{k}": v for k, v in network.encoder.state_dict().items()}
        self.backbone_ = FineTunedBackbone(base, state_digest(encoder_state))
        self.backbone_name_ = self.backbone_.name
        self.fingerprint_ = self.backbone_.fingerprint()
        self.weight_ = network.head.weight.detach().cpu().numpy().astype(np.float32)
        self.bias_ = network.head.bias.detach().cpu().numpy().astype(np.float32)
        return self

    def __featx_state__(self) -> tuple[dict, dict[str, bytes]]:
        """What ``featx.save`` stores: manifest fields (parameters, classes, fingerprint) and files
        (the network's weights as safetensors; no pickle)."""
        from safetensors.torch import save as to_safetensors

        check_is_fitted(self, "network_")
        fields = {"params": {k: v for k, v in self.get_params(deep=False).items() if k != "cache_dir"},
                  "backbone": self.backbone_name_, "fingerprint": self.fingerprint_, "classes": self.classes_.tolist(),
                  "task": self.task_, "label_lists": self.label_binarizer_ is not None,
                  "target_scale": list(self.target_scale_)}
        state = {k: v.detach().cpu().contiguous() for k, v in self.network_.state_dict().items()}
        return fields, {WEIGHTS: to_safetensors(state)}

    @classmethod
    def __featx_restore__(cls, manifest: dict, files: dict[str, bytes], *, cache_dir=None) -> "FineTunedClassifier":
        """The model ``__featx_state__`` described, its backbone rebuilt and checked against the
        recorded fingerprint (``featx.load`` calls it; errors name the part at fault)."""
        from safetensors.torch import load as from_safetensors

        params = manifest["params"]
        try:
            state = from_safetensors(files[WEIGHTS])
        except Exception as exc:
            raise BadInputError(f"the weights are damaged ({exc})") from None
        backbone = new_backbone(params["backbone"], params["backbone_options"])
        task, classes = manifest.get("task", "classification"), np.asarray(manifest["classes"])
        network = build_network(backbone, 1 if task == "regression" else len(classes))
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise BadInputError(f"the weights do not fit {params['backbone']!r} ({str(exc)[:200]})") from None
        model = cls(**{**params, "cache_dir": cache_dir})
        model.task_, model.target_scale_ = task, tuple(manifest.get("target_scale", (0.0, 1.0)))
        model.label_binarizer_ = label_binarizer(classes) if manifest.get("label_lists") else None
        model._set_state(network, backbone, classes)
        if model.fingerprint_ != manifest["fingerprint"]:
            raise BadInputError(f"the weights do not match the recorded fingerprint (file changed, or base backbone "
                                f"{params['backbone']!r} has other weights here)")
        return model

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n_samples, n_outputs)``: fine-tuned embeddings (cached), L2-normalised, times the head
        (regression: the standardised prediction)."""
        from ..extraction.pipeline import extract

        check_is_fitted(self, "network_")
        vectors = extract(self.backbone_, X, cache_dir=self.cache_dir, batch_size=self.batch_size,
                          device=self.device, progress=self.progress).vectors
        Z = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Z @ self.weight_.T + self.bias_

    @available_if(lambda self: self.task != "regression")
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax), or each label's own (sigmoid) for multi-label targets."""
        from scipy.special import expit, softmax

        logits = self.decision_function(X)
        return expit(logits) if self.task_ == "multilabel" else softmax(logits, axis=1)

    def predict(self, X):
        """Classes; multi-label: a 0/1 matrix, or label tuples when ``y`` was label lists; regression: numbers."""
        outputs = self.decision_function(X)
        if self.task_ == "regression":
            mean, std = self.target_scale_
            return outputs[:, 0] * std + mean
        if self.task_ == "multilabel":
            predicted = (outputs > 0).astype(np.int64)
            binarizer = self.label_binarizer_
            return binarizer.inverse_transform(predicted) if binarizer is not None else predicted
        return self.classes_[outputs.argmax(axis=1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy; multi-label: subset accuracy (every label right); regression: R²."""
        from sklearn.metrics import accuracy_score, r2_score

        check_is_fitted(self, "network_")
        if self.task_ == "regression":
            return float(r2_score(y, self.predict(X), sample_weight=sample_weight))
        if self.task_ == "multilabel":
            truth = self.label_binarizer_.transform(y) if self.label_binarizer_ is not None else np.asarray(y)
            predicted = (self.decision_function(X) > 0).astype(np.int64)
            return float(accuracy_score(truth, predicted, sample_weight=sample_weight))
        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))


def label_binarizer(classes):
    """A ``MultiLabelBinarizer`` fitted on ``classes`` (as the one that read label lists)."""
    from sklearn.preprocessing import MultiLabelBinarizer

    return MultiLabelBinarizer(classes=list(classes)).fit([])


def training_targets(task: str, y, n: int):
    """``y`` checked for ``task`` and encoded for training (``Targets``), with the label binarizer of
    label lists (else None)."""
    from ..data.labels import labels_or_raise, multilabel_or_none, regression_targets_or_raise

    if task == "regression":
        values = regression_targets_or_raise(y, n)
        mean, std = float(values.mean()), float(values.std()) or 1.0
        scaled = ((values - mean) / std).astype(np.float32)[:, None]
        return Targets("regression", scaled, 1, classes=np.array([]), scale=(mean, std)), None
    multilabel = multilabel_or_none(y, n) if task != "classification" else None
    if multilabel is not None:
        Y, binarizer = multilabel
        classes = binarizer.classes_ if binarizer is not None else np.arange(Y.shape[1])
        return Targets("multilabel", Y.astype(np.float32), Y.shape[1], classes=classes), binarizer
    if task == "multilabel":
        raise BadInputError("task='multilabel' needs label lists or a 0/1 indicator matrix as y; "
                            "for one label per sample use task='classification'")
    labels = labels_or_raise(y, n)
    classes = np.unique(labels)
    return Targets("classification", np.searchsorted(classes, labels), len(classes), labels, classes), None


def check_target(adapt: str | None, X_target, backbone: TorchBackbone) -> None:
    """A ``BadInputError`` naming ``X_target`` / ``adapt`` unless they come together, ``X_target`` in
    the backbone's modality with 2 samples or more."""
    from ..data.samples import infer_modality, sample_list

    if adapt is None and X_target is not None:
        raise BadInputError(f"X_target was given but adapt=None: set adapt to one of {', '.join(ADAPT)} "
                            f"to use the target samples, or drop X_target")
    if adapt is None:
        return
    if X_target is None:
        raise BadInputError(f"adapt={adapt!r} adapts to unlabelled samples of the target domain: pass them as X_target=")
    samples = sample_list(X_target)
    if len(samples) < 2:
        raise BadInputError(f"X_target holds {len(samples)} sample(s); adapt={adapt!r} needs 2 or more")
    modality = infer_modality(samples)
    if modality != backbone.modality:
        raise BadInputError(f"X_target holds {modality}s but backbone {backbone.name!r} embeds {backbone.modality}s: "
                            f"pass target samples of the same kind as X")


def is_linear_probe(model) -> bool:
    """Whether ``model``'s fitted head is the network's head on frozen features: logistic regression on
    L2-normalised vectors (one per label for multi-label), or ridge regression on them (``linear_probe``)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    from ..heads import LinearProbe

    head = getattr(model.head_, "estimator", model.head_)  # multi-label: one-vs-rest copies of one head
    if isinstance(head, Pipeline):
        return [type(step) for _, step in head.steps] == [Normalizer, RidgeCV]
    return isinstance(head, LinearProbe)


def linear_probe(backbone: str, backbone_options: dict | None, X, y, *, task: str = "classification",
                 cache_dir=None, progress: bool = False):
    """The LP of LP-FT, fitted on ``(X, y)``: a ``TransferClassifier`` with the logistic-regression head
    (one per label for multi-label targets), or for regression a ``TransferRegressor`` whose head is
    ridge regression on the L2-normalised vectors (the network's features), its penalty chosen by
    leave-one-out (unit vectors of one backbone lie close together: a fixed penalty flattens the fit)."""
    from ..estimators import TransferClassifier, TransferRegressor

    options = {"backbone_options": backbone_options, "cache_dir": cache_dir, "progress": progress}
    if task == "regression":
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        ridge = RidgeCV(alphas=np.logspace(-6, 3, 10))
        return TransferRegressor(backbone, head=make_pipeline(Normalizer(), ridge), **options).fit(X, y)
    return TransferClassifier(backbone, head="logreg", **options).fit(X, y)
