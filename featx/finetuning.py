"""Fine-tuning: promote a frozen-feature setup to end-to-end training.

Strategies (``strategy=``):

- ``"full"``: every layer trains with the same learning rate.
- ``"freeze"``: the first ``freeze_blocks`` blocks stay frozen, the rest trains.
- ``"llrd"``: layer-wise learning-rate decay; block ``i`` of ``n`` gets ``lr * layer_decay ** (n - i)``.
- ``"gradual"``: ULMFiT-style gradual unfreezing; only the head trains in epoch 0, then one more block
  from the top every ``unfreeze_every`` epochs.
- ``"lp-ft"``: the head starts from a fitted linear probe's weights (LP), then everything trains (FT):
  the known remedy for feature distortion by a random head.

Blocks are the backbone's own structure (timm's ``group_matcher``; embeddings / encoder layers for
transformers), ordered input → output.  Training uses AdamW, linear warm-up then cosine decay,
early stopping on a stratified validation split with the best epoch restored, image augmentation
(off for text), BatchNorm statistics frozen by default (``batchnorm=``), autocast on GPU, gradient
accumulation and a fixed seed.

>>> result = featx.finetune(setup, X_train, y_train, strategy="lp-ft", epochs=3,   # doctest: +SKIP
...                         X_test=X_test, y_test=y_test, run_dir="runs/ft")
>>> result.keep, result.scores                                                   # doctest: +SKIP
('finetuned', {'frozen': 0.74, 'finetuned': 0.80})
>>> result.predict(new_images)                                                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._fs import digest
from .backbones.base import Backbone, TorchBackbone
from .errors import BadInputError, did_you_mean, validate_params

STRATEGIES = ("full", "freeze", "llrd", "gradual", "lp-ft")
BATCHNORM = ("frozen", "update")


# -- the network: backbone encoder + (L2 normalisation) + linear head -------------------------------
def _new_backbone(name: str, options: dict | None) -> TorchBackbone:
    """A private backbone instance (never the shared one: its weights are about to change)."""
    from .plugins.registry import create_backbone

    backbone = create_backbone(name, **(options or {}))
    if not isinstance(backbone, TorchBackbone):
        raise BadInputError(f"backbone {name!r} ({type(backbone).__name__}) is not a torch model and cannot be "
                            f"fine-tuned; fine-tune a timm/... or hf/... backbone, or keep the frozen setup")
    if getattr(backbone, "layers", None):
        raise BadInputError(f"backbone {name!r} with layers={backbone.layers} outputs several layers; fine-tuning "
                            f"trains a single output: drop the layers option (or pick a setup without a view)")
    return backbone


def set_train_mode(network, batchnorm: str) -> None:
    """``network.train()``; with ``batchnorm="frozen"`` every BatchNorm layer stays in eval mode: it
    normalises with its running statistics and leaves them unchanged (its scale and shift still train)."""
    import torch

    network.train()
    if batchnorm == "frozen":
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _network(backbone: TorchBackbone, n_classes: int):
    """backbone → pooled features → L2 normalisation (× ``logit_scale``) → linear head: the linear
    probe's model.  ``logit_scale`` is 1 except while a random head trains (see ``_train``)."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = backbone.model
            self.head = torch.nn.Linear(backbone.dim, n_classes)
            self.logit_scale = 1.0

        def forward(self, *inputs):
            features = torch.nn.functional.normalize(backbone.forward(*inputs).float(), dim=1)
            return self.head(self.logit_scale * features)

    return Network()


def blocks(backbone: TorchBackbone) -> list[list[str]]:
    """Parameter names of the encoder grouped into blocks, input side first."""
    encoder = backbone.model
    if hasattr(encoder, "group_matcher"):  # timm
        from timm.models import group_parameters

        groups = group_parameters(encoder, encoder.group_matcher(coarse=False))
        return [list(names) for _, names in sorted(groups.items())]
    numbered: dict[int, list[str]] = {}
    for name, _ in encoder.named_parameters():  # transformers: embeddings, layer.0 … layer.N-1, the rest
        match = re.search(r"\.(?:layer|layers|block|h)\.(\d+)\.", f".{name}")
        index = int(match.group(1)) + 1 if match else (0 if "embed" in name else 10**6)
        numbered.setdefault(index, []).append(name)
    return [numbered[k] for k in sorted(numbered)]


def head_from_probe(head, probe, classes) -> None:
    """Copy a fitted ``LinearProbe``'s coefficients into the torch ``head`` (binary → two logits)."""
    import torch

    logreg = probe.model_[-1]
    if list(probe.classes_) != list(classes):
        raise BadInputError(f"the probe was fitted on classes {list(probe.classes_)}, the fine-tuning data has "
                            f"{list(classes)}: fit the probe on the same (X, y)")
    coef, intercept = logreg.coef_, logreg.intercept_
    if coef.shape[0] == 1:  # sigmoid(z) == softmax([0, z])[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(intercept, dtype=head.bias.dtype))


@dataclass
class Plan:
    """Which parameters train, with which learning rate, at each epoch."""

    groups: list[dict]          # optimizer param groups: {"params", "lr", "names", "block"}
    trainable_at: list[set[str]]  # per epoch: names with requires_grad=True


def plan(strategy: str, network, backbone: TorchBackbone, *, epochs: int, lr: float, head_lr: float,
         freeze_blocks: int = 0, layer_decay: float = 0.75, unfreeze_every: int = 1) -> Plan:
    """Parameter groups and the trainable set per epoch for ``strategy`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise BadInputError(f"strategy={strategy!r}: choose one of {', '.join(STRATEGIES)}")
    encoder_blocks = blocks(backbone)
    n = len(encoder_blocks)
    if strategy == "freeze" and not 0 <= freeze_blocks <= n:
        raise BadInputError(f"freeze_blocks={freeze_blocks}: this backbone has {n} blocks")
    params = dict(network.named_parameters())
    head = [f"head.{k}" for k, _ in network.head.named_parameters()]
    groups = []
    for i, names in enumerate(encoder_blocks):
        block_lr = lr * layer_decay ** (n - i) if strategy == "llrd" else lr
        full_names = [f"encoder.{k}" for k in names]
        groups.append({"params": [params[k] for k in full_names], "lr": block_lr, "names": full_names, "block": i})
    groups.append({"params": [params[k] for k in head], "lr": head_lr, "names": head, "block": n})

    everything = set(params)
    trainable_at = []
    for epoch in range(epochs):
        if strategy == "freeze":
            trainable = {k for g in groups if g["block"] >= freeze_blocks for k in g["names"]}
        elif strategy == "gradual":
            opened = epoch // max(unfreeze_every, 1)  # blocks unfrozen from the top
            trainable = {k for g in groups if g["block"] >= n - opened for k in g["names"]}
        else:
            trainable = everything
        trainable_at.append(trainable)
    return Plan(groups, trainable_at)


# -- data --------------------------------------------------------------------------------------------
class _Batches:
    """Model inputs for one modality: image tensors (augmented when training) or padded token ids."""

    def __init__(self, backbone: TorchBackbone, X, augment: bool):
        from .data.samples import as_samples

        self.backbone = backbone
        samples = as_samples(X, backbone.modality)
        if backbone.modality == "image":
            self.items = [samples.load(i) for i in range(len(samples))]
            self.train_transform = _augmentation(backbone) if augment else backbone.transform()
        else:
            self.items = backbone.tokenizer(list(samples.items), truncation=True, max_length=backbone.max_length)["input_ids"]

    def __len__(self) -> int:
        return len(self.items)

    def make(self, idx, train: bool) -> tuple:
        import torch

        if self.backbone.modality == "image":
            transform = self.train_transform if train else self.backbone.transform()
            return (torch.stack([transform(self.items[i]) for i in idx]),)
        width = max(len(self.items[i]) for i in idx)
        ids = torch.full((len(idx), width), self.backbone.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(self.items[i])] = torch.as_tensor(self.items[i])
            mask[row, :len(self.items[i])] = 1
        return ids, mask


def _augmentation(backbone):
    from timm.data import create_transform

    config = backbone.data_config
    return create_transform(input_size=tuple(config["input_size"]), is_training=True, scale=(0.6, 1.0), hflip=0.5,
                            vflip=0.0, color_jitter=0.2, interpolation=config["interpolation"], mean=config["mean"],
                            std=config["std"], auto_augment=None, re_prob=0.0)


# -- the fitted model ------------------------------------------------------------------------------
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
        "seed": [Integral],
        "device": [str],
        "cache_dir": [str, os.PathLike, None],
        "progress": ["boolean"],
    }

    def __init__(self, backbone: str = "", backbone_options: dict | None = None, *, strategy: str = "lp-ft",
                 epochs: int = 5, lr: float = 1e-4, head_lr: float | None = None, weight_decay: float = 0.01,
                 batch_size: int = 32, grad_accum: int = 1, warmup: float = 0.1, freeze_blocks: int = 0,
                 layer_decay: float = 0.75, unfreeze_every: int = 1, val_size: float = 0.2, patience: int = 3,
                 batchnorm: str = "frozen", augment: bool | None = None, seed: int = 0, device: str = "auto",
                 cache_dir=None, progress: bool = False):
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
        self.seed = seed
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress

    def check_params(self) -> TorchBackbone:
        """Raise a ``BadInputError`` naming the first invalid parameter; return a private (unloaded)
        instance of the backbone to train."""
        validate_params(self)
        return _new_backbone(self.backbone, self.backbone_options)

    def fit(self, X, y, probe=None) -> "FineTunedClassifier":
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

        Returns
        -------
        FineTunedClassifier
            ``self``, fitted.
        """
        from .data.labels import labels_or_raise

        backbone = self.check_params()
        y = labels_or_raise(y, len(X))
        if self.strategy == "lp-ft" and probe is None:
            probe = linear_probe(self.backbone, self.backbone_options, X, y, cache_dir=self.cache_dir,
                                 progress=self.progress)
        elif self.strategy == "lp-ft" and not (hasattr(probe, "head_") and _is_linear_probe(probe)):
            raise BadInputError("fit(probe=...) needs a fitted TransferClassifier with head='logreg' on this backbone "
                                "(LP-FT copies its coefficients); or leave probe=None to fit one")
        network, history, best_epoch, val_idx = _train(self, backbone, probe, X, y)
        self.history_, self.best_epoch_, self.val_indices_ = history, best_epoch, val_idx
        return self._set_state(network, backbone, np.unique(y))

    def _set_state(self, network, base: TorchBackbone, classes) -> "FineTunedClassifier":
        network.eval()
        self.network_ = network
        self.classes_ = np.asarray(classes)
        encoder_state = {f"encoder.{k}": v for k, v in network.encoder.state_dict().items()}
        self.backbone_ = FineTunedBackbone(base, state_digest(encoder_state))
        self.backbone_name_ = self.backbone_.name
        self.fingerprint_ = self.backbone_.fingerprint()
        self.weight_ = network.head.weight.detach().cpu().numpy().astype(np.float32)
        self.bias_ = network.head.bias.detach().cpu().numpy().astype(np.float32)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n_samples, n_classes)``: fine-tuned embeddings (cached), L2-normalised, times the head."""
        from .extraction import extract

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


@dataclass
class FineTuneResult:
    """The fine-tuned model, the frozen setup it is compared with, their held-out scores and the
    verdict; ``predict``, ``predict_proba``, ``score`` and ``classes_`` are the kept model's (``best_``).

    ``scores`` holds the held-out accuracy of ``"frozen"`` (the setup as given, its own head refit
    on the training data) and ``"finetuned"``, and of ``"probe"`` when LP-FT started from a linear
    probe other than the frozen setup (whose head is then not logistic regression).  ``keep`` is
    ``"finetuned"`` when it scored higher, else ``"frozen"``; ``held_out`` says on what
    (``"test"`` or ``"validation"``).
    """

    model: FineTunedClassifier
    frozen: Any
    strategy: str
    scores: dict[str, float]
    keep: str
    held_out: str = "validation"
    probe: Any = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    run_dir: Path | None = None

    @property
    def best_(self):
        """The model to keep: the fine-tuned one if it beat the frozen setup on held-out data, else that setup."""
        return self.model if self.keep == "finetuned" else self.frozen

    @property
    def classes_(self) -> np.ndarray:
        return self.best_.classes_

    def predict(self, X) -> np.ndarray:
        return self.best_.predict(X)

    def predict_proba(self, X) -> np.ndarray:
        return self.best_.predict_proba(X)

    def score(self, X, y) -> float:
        """Accuracy of the kept model on ``(X, y)``."""
        return self.best_.score(X, y)

    def summary(self) -> str:
        """One line: both held-out scores and the verdict."""
        from .heads import head_name

        head = "linear probe" if _is_linear_probe(self.frozen) else f"{head_name(self.frozen.head)} head"
        start = f" (LP-FT started from a linear probe: {self.scores['probe']:.3f})" if "probe" in self.scores else ""
        kept = "fine-tuned" if self.keep == "finetuned" else "frozen"
        return (f"{self.held_out} accuracy: frozen {head} {self.scores['frozen']:.3f}{start}, fine-tuned "
                f"({self.strategy}) {self.scores['finetuned']:.3f} -> keep the {kept} model")


# -- training ----------------------------------------------------------------------------------------
def _is_linear_probe(classifier) -> bool:
    from .heads import LinearProbe

    return isinstance(classifier.head_, LinearProbe)


def linear_probe(backbone: str, backbone_options: dict | None, X, y, *, cache_dir=None, progress: bool = False):
    """A ``TransferClassifier`` with the logistic-regression head, fitted on ``(X, y)`` (the LP of LP-FT)."""
    from .estimators import TransferClassifier

    return TransferClassifier(backbone, head="logreg", backbone_options=backbone_options, cache_dir=cache_dir,
                              progress=progress).fit(X, y)


def _frozen_setup(setup, X, cache_dir, progress: bool):
    """An unfitted copy of the ``TransferClassifier`` to promote (from a sweep result, a classifier or a
    name), naming its backbone so that fine-tuning can build a private copy of it."""
    from sklearn.base import clone

    from .data.samples import infer_modality
    from .estimators import DEFAULT_BACKBONES, TransferClassifier

    setup = getattr(setup, "best_", setup)
    if isinstance(setup, str):
        setup = TransferClassifier(setup)
    if not isinstance(setup, TransferClassifier):
        raise BadInputError(f"finetune needs a backbone name, a TransferClassifier or a sweep result as the setup, "
                            f"got {type(setup).__name__}")
    if setup.view is not None:
        raise BadInputError(f"the setup uses view {setup.view!r} of a multi-layer backbone; fine-tuning trains a "
                            f"single output: promote a setup without a view (a backbone without layers=)")
    frozen = clone(setup).set_params(cache_dir=cache_dir or setup.cache_dir, progress=progress)
    if isinstance(setup.backbone, str) and setup.backbone == "auto":  # named by what X holds
        frozen.set_params(backbone=DEFAULT_BACKBONES[infer_modality(X, setup.input)])
    if isinstance(setup.backbone, Backbone):  # rebuilt from its name: only if that gives the same backbone
        from .plugins.registry import create_backbone

        if create_backbone(setup.backbone.name).fingerprint() != setup.backbone.fingerprint():
            raise BadInputError(f"the setup's backbone {setup.backbone.name!r} is an instance with its own options; "
                                f"fine-tuning rebuilds it from a name: give TransferClassifier(name, "
                                f"backbone_options={{...}}) instead")
        frozen.set_params(backbone=setup.backbone.name)
    return frozen


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _split(y: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation row indices, or a ``BadInputError`` saying what to change."""
    from sklearn.model_selection import train_test_split

    counts = dict(zip(*np.unique(y, return_counts=True)))
    n_val, n_classes = math.ceil(val_size * len(y)), len(counts)
    rare = min(counts, key=counts.get)
    if counts[rare] < 2 or not n_classes <= n_val <= len(y) - n_classes:
        raise BadInputError(
            f"val_size={val_size} cannot hold out a stratified validation split of {len(y)} samples in {n_classes} "
            f"classes (least populated: {rare!r} with {counts[rare]}): every class needs 2 samples or more, and "
            f"val_size * {len(y)} must be between {n_classes} and {len(y) - n_classes}; change val_size or add samples")
    return train_test_split(np.arange(len(y)), test_size=val_size, stratify=y, random_state=seed)


def _train(est: FineTunedClassifier, backbone: TorchBackbone, probe, X, y):
    """The training loop behind ``FineTunedClassifier.fit``; returns the best network and its record."""
    import torch

    from .backbones.base import resolve_device
    from .progress import progress_bar

    X = X if isinstance(X, np.ndarray) else list(X)
    train_idx, val_idx = _split(y, est.val_size, est.seed)
    classes = np.unique(y)
    target = np.searchsorted(classes, y)

    torch.manual_seed(est.seed)
    random.seed(est.seed)  # timm's random crops draw from Python's generator
    rng = np.random.default_rng(est.seed)
    device = resolve_device(est.device)
    backbone.to(device)
    network = _network(backbone, len(classes)).to(device)
    if est.strategy == "lp-ft":
        head_from_probe(network.head, probe.head_, classes)
    else:  # a random head on unit-norm features starts with logits near 0 and grows them too slowly (one
        network.logit_scale = math.sqrt(backbone.dim)  # class predicted after an epoch): coordinates scaled to ~1
    head_lr = est.head_lr if est.head_lr is not None else (est.lr if est.strategy == "lp-ft" else est.lr * 10)
    the_plan = plan(est.strategy, network, backbone, epochs=est.epochs, lr=est.lr, head_lr=head_lr,
                    freeze_blocks=est.freeze_blocks, layer_decay=est.layer_decay, unfreeze_every=est.unfreeze_every)
    optimizer = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"]} for g in the_plan.groups],
                                  weight_decay=est.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    augment = backbone.modality == "image" if est.augment is None else est.augment
    data = _Batches(backbone, X, augment)
    batch_size, grad_accum = est.batch_size, est.grad_accum
    steps_per_epoch = math.ceil(len(train_idx) / (batch_size * grad_accum))
    total = steps_per_epoch * est.epochs
    warm = max(1, int(est.warmup * total))
    use_amp = device.startswith("cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    device_type = torch.device(device).type

    def evaluate(idx) -> tuple[float, float]:
        network.eval()
        loss, correct = 0.0, 0
        with torch.inference_mode():
            for lo in range(0, len(idx), batch_size):
                chunk = idx[lo:lo + batch_size]
                inputs = [t.to(device) for t in data.make(chunk, train=False)]
                with torch.autocast(device_type, dtype=amp_dtype, enabled=use_amp):
                    logits = network(*inputs).float()
                truth = torch.as_tensor(target[chunk], device=device)
                loss += torch.nn.functional.cross_entropy(logits, truth, reduction="sum").item()
                correct += int((logits.argmax(1) == truth).sum())
        return loss / len(idx), correct / len(idx)

    history: list[dict] = []
    best = (-1.0, math.inf, -1, None)
    step, stale = 0, 0
    for epoch in range(est.epochs):
        t0 = time.perf_counter()
        for name, param in network.named_parameters():
            param.requires_grad_(name in the_plan.trainable_at[epoch])
        set_train_mode(network, est.batchnorm)
        order = rng.permutation(train_idx)
        if est.batchnorm == "update" and len(order) % batch_size == 1:
            order = order[:-1]  # BatchNorm cannot compute statistics of one sample; it rejoins next epoch
        running = 0.0
        label = f"epoch {epoch + 1}/{est.epochs}"
        bar = progress_bar(math.ceil(len(order) / batch_size), label, unit="batch", enabled=est.progress)
        optimizer.zero_grad(set_to_none=True)
        for b, lo in enumerate(range(0, len(order), batch_size)):
            chunk = order[lo:lo + batch_size]
            inputs = [t.to(device, non_blocking=True) for t in data.make(chunk, train=True)]
            with torch.autocast(device_type, dtype=amp_dtype, enabled=use_amp):
                logits = network(*inputs).float()
            loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(target[chunk], device=device))
            scaler.scale(loss / grad_accum).backward()
            running += loss.item() * len(chunk)
            if (b + 1) % grad_accum == 0 or lo + batch_size >= len(order):
                factor = _schedule(step, total, warm)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            bar.set_postfix_str(f"loss {running / (lo + len(chunk)):.4f}", refresh=False)
            bar.update(1)
        bar.close()
        val_loss, val_acc = evaluate(val_idx)
        row = {"epoch": epoch, "train_loss": running / len(order), "val_loss": val_loss, "val_accuracy": val_acc,
               "trainable_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
               "lr": optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - t0}
        history.append(row)
        if est.progress:
            print(f"{label}: train loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  val acc {val_acc:.4f}  "
                  f"({row['seconds']:.0f}s)", file=sys.stderr, flush=True)
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, stale = (val_acc, val_loss, epoch, copy.deepcopy(network.state_dict())), 0
        else:
            stale += 1
            if stale >= est.patience:
                break
    network.load_state_dict(best[3])
    for param in network.parameters():
        param.requires_grad_(False)
    network.head.weight.mul_(network.logit_scale)  # the same logits from the plain unit-norm features
    network.logit_scale = 1.0
    return network, history, best[2], val_idx


def finetune(setup, X, y, *, X_test=None, y_test=None, cache_dir=None, run_dir=None, progress: bool = True,
             **params: Any) -> FineTuneResult:
    """Promote ``setup`` to end-to-end training and compare it with the frozen setup as given.

    Parameters
    ----------
    setup : SweepResult, TransferClassifier or str
        What to promote: a sweep result (its ``best_``), a ``TransferClassifier`` (fitted or not;
        its backbone, options, head and head parameters) or a backbone name (logreg head).
    X, y :
        Training samples and labels; the frozen setup is refit on them, and the fine-tuning holds
        ``val_size`` of them out for early stopping.
    X_test, y_test : optional
        Held-out data both models are scored on (else the validation split).
    cache_dir : optional
        Embedding cache (default: the setup's).
    run_dir : optional
        Folder for ``log.csv`` (per epoch), ``learning_curve.png``, ``finetune.json``,
        ``finetuned.featx`` and ``frozen.featx``.
    progress : bool
        Progress bars and epoch lines on stderr.
    **params :
        ``FineTunedClassifier`` parameters (``strategy``, ``epochs``, ``lr``, ``batchnorm``, …).

    Returns
    -------
    FineTuneResult
        Both models, their held-out ``scores``, the verdict ``keep`` and the kept model's
        ``predict`` / ``predict_proba`` / ``score``.  For ``strategy="lp-ft"`` the head starts from the
        frozen setup's head when that is logistic regression, else from a linear probe fitted
        for it (scored as ``"probe"``).
    """
    from .data.labels import labels_or_raise

    allowed = set(FineTunedClassifier._get_param_names()) - {"backbone", "backbone_options", "cache_dir", "progress"}
    for name in params:
        if name not in allowed:
            raise BadInputError(f"finetune got an unknown parameter {name}=.{did_you_mean(name, allowed)} "
                                f"Parameters: {', '.join(sorted(allowed))}")
    y = labels_or_raise(y, len(X))
    frozen = _frozen_setup(setup, X, cache_dir, progress)
    model = FineTunedClassifier(frozen.backbone, frozen.backbone_options, cache_dir=frozen.cache_dir,
                                progress=progress, **params)
    model.check_params()  # before any embedding
    frozen.fit(X, y)
    probe = None
    if model.strategy == "lp-ft":
        probe = frozen if _is_linear_probe(frozen) else linear_probe(
            frozen.backbone, frozen.backbone_options, X, y, cache_dir=frozen.cache_dir, progress=progress)
    model.fit(X, y, probe=probe)
    if X_test is not None:
        X_eval, y_eval, held_out = X_test, y_test, "test"
    else:
        val = model.val_indices_
        X_eval = X[val] if isinstance(X, np.ndarray) else [X[i] for i in val]
        y_eval, held_out = y[val], "validation"
    scores = {"frozen": float(frozen.score(X_eval, y_eval)), "finetuned": float(model.score(X_eval, y_eval))}
    if probe is not None and probe is not frozen:
        scores["probe"] = float(probe.score(X_eval, y_eval))
    keep = "finetuned" if scores["finetuned"] > scores["frozen"] else "frozen"
    result = FineTuneResult(model, frozen, model.strategy, scores, keep, held_out, probe, model.history_,
                            model.best_epoch_)
    if run_dir is not None:
        result.run_dir = write_run(result, run_dir)
    return result


def write_run(result: FineTuneResult, run_dir) -> Path:
    """``log.csv`` (per epoch), ``learning_curve.png``, ``finetune.json`` and both models, in ``run_dir``."""
    from .heads import head_name
    from .persist import save

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    summary = {"strategy": result.strategy, "held_out": result.held_out, "scores": result.scores, "keep": result.keep,
               "best_epoch": result.best_epoch, "backbone": result.model.backbone,
               "frozen_head": head_name(result.frozen.head), "batchnorm": result.model.batchnorm,
               "finetuned_fingerprint": result.model.fingerprint_, "frozen_fingerprint": result.frozen.fingerprint_}
    (run_dir / "finetune.json").write_text(json.dumps(summary, indent=2))
    save(result.model, run_dir / "finetuned.featx")
    save(result.frozen, run_dir / "frozen.featx")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in result.history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in result.history], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in result.history], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    right.plot(epochs, [r["val_accuracy"] for r in result.history], "o-", label="fine-tuned (validation)")
    right.axhline(result.scores["frozen"], color="grey", ls="--", label=f"frozen setup ({result.held_out})")
    right.axvline(result.best_epoch, color="green", ls=":", label="restored epoch")
    right.set(xlabel="epoch", ylabel="accuracy", title=f"{result.strategy}: accuracy")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=110)
    plt.close(fig)
    return run_dir
