"""The network fine-tuning trains (backbone encoder, L2 normalisation, linear head) and the
strategies: which blocks train, at which learning rate, in which epoch."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..backbones.base import TorchBackbone
from ..errors import BadInputError


STRATEGIES = ("full", "freeze", "llrd", "gradual", "lp-ft")
BATCHNORM = ("frozen", "update")
ADAPT = ("adabn", "dann")


# -- the network: backbone encoder + (L2 normalisation) + linear head -------------------------------
def new_backbone(name: str, options: dict | None) -> TorchBackbone:
    """A private backbone instance (never the shared one: its weights are about to change)."""
    from ..plugins.registry import create_backbone

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


def build_network(backbone: TorchBackbone, n_classes: int):
    """backbone → pooled features → L2 normalisation (× ``logit_scale``) → linear head: the linear
    probe's model.  ``logit_scale`` is 1 except while a random head trains (see ``train_network``)."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = backbone.model
            self.head = torch.nn.Linear(backbone.dim, n_classes)
            self.logit_scale = 1.0

        def features(self, *inputs):
            """The pooled, L2-normalised features the head reads."""
            return torch.nn.functional.normalize(backbone.forward(*inputs).float(), dim=1)

        def forward(self, *inputs):
            return self.head(self.logit_scale * self.features(*inputs))

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


def head_from_probe(head, probe, targets) -> None:
    """Copy a fitted linear probe's coefficients into the torch ``head``: logistic regression (binary →
    two logits), one logistic regression per label (multi-label) or ridge regression on the
    standardised target (regression)."""
    import torch

    if targets.task == "regression":
        ridge = probe.head_[-1]
        mean, std = targets.scale
        coef, intercept = ridge.coef_.reshape(1, -1) / std, (np.atleast_1d(ridge.intercept_) - mean) / std
    else:
        if list(probe.classes_) != list(targets.classes):
            raise BadInputError(f"the probe was fitted on classes {list(probe.classes_)}, the fine-tuning data has "
                                f"{list(targets.classes)}: fit the probe on the same (X, y)")
        if targets.task == "multilabel":  # a label every sample has (or none has) gets a constant predictor
            fitted = [getattr(e, "model_", None) for e in probe.head_.estimators_]
            coef = np.vstack([m[-1].coef_ if m is not None else np.zeros((1, head.in_features)) for m in fitted])
            intercept = np.array([float(m[-1].intercept_[0]) if m is not None else 10.0 * (2 * float(e.y_[0]) - 1)
                                  for m, e in zip(fitted, probe.head_.estimators_)])
        else:
            logreg = probe.head_.model_[-1]
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
