"""``FineTunedClassifier``: a backbone + linear head trained end to end, with the scikit-learn API."""

from __future__ import annotations

import hashlib
import os
from numbers import Integral, Real

import numpy as np

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .strategies import ADAPT, BATCHNORM, STRATEGIES, build_network, new_backbone
from .training import adapt_batchnorm, train_network
from .._fs import digest
from ..backbones.base import Backbone, TorchBackbone
from ..errors import BadInputError, validate_params


WEIGHTS = "weights.safetensors"  # the file of a saved model holding the network


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
    """A backbone + linear head trained end to end, with the scikit-learn classifier API.

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
        Fraction of ``X`` held out, stratified, for early stopping and the best-epoch choice.

    The other parameters: ``weight_decay`` (AdamW), ``batch_size``, ``grad_accum`` (batches per
    step), ``warmup`` (fraction of the steps), ``freeze_blocks`` / ``layer_decay`` /
    ``unfreeze_every`` (of the strategies), ``patience``, ``augment`` (default: images yes, text
    no), ``seed``, ``device``, ``cache_dir``, ``progress`` (bars on stderr).

    Attributes
    ----------
    backbone_ : FineTunedBackbone
        What predictions embed with (``modality``, ``random_init`` as its base's).
    backbone_name_, fingerprint_, classes_ :
        Its name and fingerprint, and the class labels.
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
                 layer_decay: float = 0.75, unfreeze_every: int = 1, val_size: float = 0.2, patience: int = 3,
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
            One label per sample.
        probe : TransferClassifier, optional
            For ``strategy="lp-ft"``: a fitted logistic-regression ``TransferClassifier`` on this
            backbone, whose head the network starts from (fitted here when None).
        X_target : list, optional
            Unlabelled samples of the domain the model will meet, same modality as ``X``; needed
            by ``adapt`` and only with it.

        Returns
        -------
        FineTunedClassifier
            ``self``, fitted.
        """
        from ..data.labels import labels_or_raise

        backbone = self.check_params()
        y = labels_or_raise(y, len(X))
        check_target(self.adapt, X_target, backbone)
        if self.strategy == "lp-ft" and probe is None:
            probe = linear_probe(self.backbone, self.backbone_options, X, y, cache_dir=self.cache_dir,
                                 progress=self.progress)
        elif self.strategy == "lp-ft" and not (hasattr(probe, "head_") and is_linear_probe(probe)):
            raise BadInputError("fit(probe=...) needs a fitted TransferClassifier with head='logreg' on this backbone "
                                "(LP-FT copies its coefficients); or leave probe=None to fit one")
        network, history, best_epoch, val_idx = train_network(self, backbone, probe, X, y, X_target)
        if self.adapt == "adabn":
            adapt_batchnorm(network, backbone, X_target, self.batch_size, str(next(network.parameters()).device))
        self.history_, self.best_epoch_, self.val_indices_ = history, best_epoch, val_idx
        return self._set_state(network, backbone, np.unique(y))

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
                  "backbone": self.backbone_name_, "fingerprint": self.fingerprint_, "classes": self.classes_.tolist()}
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
        network = build_network(backbone, len(manifest["classes"]))
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise BadInputError(f"the weights do not fit {params['backbone']!r} ({str(exc)[:200]})") from None
        model = cls(**{**params, "cache_dir": cache_dir})._set_state(network, backbone, np.asarray(manifest["classes"]))
        if model.fingerprint_ != manifest["fingerprint"]:
            raise BadInputError(f"the weights do not match the recorded fingerprint (file changed, or base backbone "
                                f"{params['backbone']!r} has other weights here)")
        return model

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n_samples, n_classes)``: fine-tuned embeddings (cached), L2-normalised, times the head."""
        from ..extraction.pipeline import extract

        check_is_fitted(self, "network_")
        vectors = extract(self.backbone_, X, cache_dir=self.cache_dir, batch_size=self.batch_size,
                          device=self.device, progress=self.progress).vectors
        Z = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Z @ self.weight_.T + self.bias_

    def predict_proba(self, X) -> np.ndarray:
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]


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


def is_linear_probe(classifier) -> bool:
    from ..heads import LinearProbe

    return isinstance(classifier.head_, LinearProbe)


def linear_probe(backbone: str, backbone_options: dict | None, X, y, *, cache_dir=None, progress: bool = False):
    """A ``TransferClassifier`` with the logistic-regression head, fitted on ``(X, y)`` (the LP of LP-FT)."""
    from ..estimators import TransferClassifier

    return TransferClassifier(backbone, head="logreg", backbone_options=backbone_options, cache_dir=cache_dir,
                              progress=progress).fit(X, y)
