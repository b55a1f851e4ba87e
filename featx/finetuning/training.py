"""The training loop behind ``FineTunedClassifier.fit``: batches, schedule, early stopping."""

from __future__ import annotations

import copy
import functools
import math
import random
import sys
import time
from dataclasses import dataclass

import numpy as np

from .strategies import build_network, head_from_probe, plan, set_train_mode
from ..backbones.base import TorchBackbone
from ..errors import BadInputError


class _Batches:
    """Model inputs for one modality: image tensors (augmented when training) or padded token ids."""

    def __init__(self, backbone: TorchBackbone, X, augment: bool):
        from ..data.samples import as_samples

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


# -- targets, loss and validation metric per task --------------------------------------------------
METRICS = {"classification": ("val_accuracy", "accuracy"), "multilabel": ("val_subset_accuracy", "subset accuracy"),
           "regression": ("val_r2", "R²")}  # task -> (history column, words)


@dataclass
class Targets:
    """What the network trains on: ``values`` (class indices; a 0/1 label matrix; standardised numbers
    as one column), the number of outputs, ``stratify`` (the labels to stratify the split by, or None),
    the ``classes`` (labels) and, for regression, ``scale``: the target's (mean, standard deviation)."""

    task: str
    values: np.ndarray
    n_outputs: int
    stratify: np.ndarray | None = None
    classes: np.ndarray | None = None
    scale: tuple[float, float] = (0.0, 1.0)


def _loss(task: str, outputs, truth, reduction: str = "mean"):
    """Cross-entropy (classes), BCE-with-logits per label (multi-label) or MSE (regression)."""
    import torch

    if task == "classification":
        return torch.nn.functional.cross_entropy(outputs, truth, reduction=reduction)
    if task == "multilabel":
        return torch.nn.functional.binary_cross_entropy_with_logits(outputs, truth, reduction=reduction)
    return torch.nn.functional.mse_loss(outputs, truth, reduction=reduction)


# -- the fitted model ------------------------------------------------------------------------------
def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _split(y: np.ndarray | None, n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices, stratified by ``y`` (unless None), or a ``BadInputError`` saying what to change."""
    from sklearn.model_selection import train_test_split

    if y is None:
        n_val = math.ceil(val_size * n)
        if not 2 <= n_val <= n - 1:
            raise BadInputError(f"val_size={val_size} cannot hold out a validation split of {n} samples: "
                                f"val_size * {n} must be between 2 and {n - 1}; change val_size or add samples")
        return train_test_split(np.arange(n), test_size=val_size, random_state=seed)
    counts = dict(zip(*np.unique(y, return_counts=True)))
    n_val, n_classes = math.ceil(val_size * len(y)), len(counts)
    rare = min(counts, key=counts.get)
    if counts[rare] < 2 or not n_classes <= n_val <= len(y) - n_classes:
        raise BadInputError(
            f"val_size={val_size} cannot hold out a stratified validation split of {len(y)} samples in {n_classes} "
            f"classes (least populated: {rare!r} with {counts[rare]}): every class needs 2 samples or more, and "
            f"val_size * {len(y)} must be between {n_classes} and {len(y) - n_classes}; change val_size or add samples")
    return train_test_split(np.arange(len(y)), test_size=val_size, stratify=y, random_state=seed)


@functools.cache
def _gradient_reversal():
    """The layer between the features and DANN's domain classifier (Ganin & Lempitsky 2015): identity
    forward, gradient times ``-weight`` backward.  torch has none built in, hence this class."""
    import torch

    class GradientReversal(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight: float):
            ctx.weight = weight
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -ctx.weight * grad, None

    return GradientReversal


def reverse_gradient(features, weight: float = 1.0):
    """``features`` unchanged, their gradient multiplied by ``-weight`` on the way back.

    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> reverse_gradient(x, 0.5).sum().backward()
    >>> x.grad.tolist()
    [-0.5, -0.5]
    """
    return _gradient_reversal().apply(features, weight)


def _domain_classifier(dim: int):
    """The small network DANN trains to tell source features from target features."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))


def batchnorm_layers(network) -> list:
    import torch

    return [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(network, backbone: TorchBackbone, X_target, batch_size: int, device: str) -> None:
    """AdaBN (Li et al. 2016): every BatchNorm layer's running mean and variance re-estimated on
    ``X_target`` (the average over its batches, without augmentation); weights untouched."""
    import torch

    data = _Batches(backbone, X_target, augment=False)
    layers = batchnorm_layers(network)
    momenta = [m.momentum for m in layers]
    network.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the target batches
        layer.train()
    # batches of near-equal sizes (each counts the same in the average; none of one sample while n >= 2)
    with torch.no_grad():
        for chunk in np.array_split(np.arange(len(data)), math.ceil(len(data) / batch_size)):
            network(*[t.to(device) for t in data.make(chunk, train=False)])
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    network.eval()


def train_network(est: FineTunedClassifier, backbone: TorchBackbone, probe, X, targets: Targets, X_target=None):
    """The training loop behind ``FineTunedClassifier.fit``; returns the best network and its record.
    The loss and the validation metric early stopping uses are the task's (``_loss``, ``METRICS``).
    With ``est.adapt == "dann"``, each step also trains a domain classifier on source and ``X_target``
    features behind a gradient-reversal layer."""
    import torch

    from ..backbones.base import resolve_device
    from ..progress import progress_bar

    X = X if isinstance(X, np.ndarray) else list(X)
    train_idx, val_idx = _split(targets.stratify, len(targets.values), est.val_size, est.seed)
    task, target = targets.task, targets.values

    torch.manual_seed(est.seed)
    random.seed(est.seed)  # timm's random crops draw from Python's generator
    rng = np.random.default_rng(est.seed)
    device = resolve_device(est.device)
    backbone.to(device)
    network = build_network(backbone, targets.n_outputs).to(device)
    if est.adapt == "adabn" and not batchnorm_layers(network):
        raise BadInputError(f"adapt='adabn' re-estimates BatchNorm statistics, but backbone {backbone.name!r} has no "
                            f"BatchNorm layer: use adapt='dann', or adapt=None")
    if est.strategy == "lp-ft":
        head_from_probe(network.head, probe, targets)
    else:  # a random head on unit-norm features starts with logits near 0 and grows them too slowly (one
        network.logit_scale = math.sqrt(backbone.dim)  # class predicted after an epoch): coordinates scaled to ~1
    head_lr = est.head_lr if est.head_lr is not None else (est.lr if est.strategy == "lp-ft" else est.lr * 10)
    the_plan = plan(est.strategy, network, backbone, epochs=est.epochs, lr=est.lr, head_lr=head_lr,
                    freeze_blocks=est.freeze_blocks, layer_decay=est.layer_decay, unfreeze_every=est.unfreeze_every)
    groups = [{"params": g["params"], "lr": g["lr"]} for g in the_plan.groups]
    dann = est.adapt == "dann"
    if dann:
        domain_classifier = _domain_classifier(backbone.dim).to(device)
        groups.append({"params": list(domain_classifier.parameters()), "lr": head_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=est.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    augment = backbone.modality == "image" if est.augment is None else est.augment
    data = _Batches(backbone, X, augment)
    target_data = _Batches(backbone, X_target, augment) if dann else None
    batch_size, grad_accum = est.batch_size, est.grad_accum
    steps_per_epoch = math.ceil(len(train_idx) / (batch_size * grad_accum))
    total = steps_per_epoch * est.epochs
    warm = max(1, int(est.warmup * total))
    use_amp = device.startswith("cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    device_type = torch.device(device).type

    def evaluate(idx) -> tuple[float, float]:
        """Mean loss and the task's metric on rows ``idx``: accuracy, subset accuracy or R²."""
        network.eval()
        loss, correct, squared = 0.0, 0, 0.0
        with torch.inference_mode():
            for lo in range(0, len(idx), batch_size):
                chunk = idx[lo:lo + batch_size]
                inputs = [t.to(device) for t in data.make(chunk, train=False)]
                with torch.autocast(device_type, dtype=amp_dtype, enabled=use_amp):
                    logits = network(*inputs).float()
                truth = torch.as_tensor(target[chunk], device=device)
                loss += _loss(task, logits, truth, reduction="sum").item()
                if task == "classification":
                    correct += int((logits.argmax(1) == truth).sum())
                elif task == "multilabel":
                    correct += int(((logits > 0) == (truth > 0.5)).all(1).sum())
        if task == "regression":  # the loss summed squared errors; R² = 1 - SSE / SST
            spread = float(((target[idx] - target[idx].mean()) ** 2).sum())
            return loss / len(idx), 1.0 - loss / max(spread, 1e-12)
        return loss / target[idx].size, correct / len(idx)

    metric = METRICS[task][0]
    history: list[dict] = []
    best = (-math.inf, math.inf, -1, None)
    step, stale = 0, 0
    for epoch in range(est.epochs):
        t0 = time.perf_counter()
        for name, param in network.named_parameters():
            param.requires_grad_(name in the_plan.trainable_at[epoch])
        set_train_mode(network, est.batchnorm)
        if dann:
            domain_classifier.train()
        domain_running = 0.0
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
                if dann:
                    features = network.features(*inputs)
                    logits = network.head(network.logit_scale * features).float()
                else:
                    logits = network(*inputs).float()
            loss = _loss(task, logits, torch.as_tensor(target[chunk], device=device))
            if dann:
                domain_loss = _domain_loss(network, domain_classifier, features, target_data, len(chunk), rng,
                                           device, weight=2.0 / (1.0 + math.exp(-10.0 * step / total)) - 1.0)
                domain_running += domain_loss.item() * len(chunk)
                loss = loss + domain_loss
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
        val_loss, val_score = evaluate(val_idx)
        row = {"epoch": epoch, "train_loss": running / len(order), "val_loss": val_loss, metric: val_score,
               "trainable_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
               "lr": optimizer.param_groups[len(the_plan.groups) - 1]["lr"], "seconds": time.perf_counter() - t0}
        if dann:
            row["domain_loss"] = domain_running / len(order)
        history.append(row)
        if est.progress:
            print(f"{label}: train loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                  f"val {METRICS[task][1]} {val_score:.4f}  "
                  f"({row['seconds']:.0f}s)", file=sys.stderr, flush=True)
        if (val_score, -val_loss) > (best[0], -best[1]):
            best, stale = (val_score, val_loss, epoch, copy.deepcopy(network.state_dict())), 0
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


def _domain_loss(network, domain_classifier, source_features, target_data: _Batches, n: int, rng, device: str,
                 weight: float):
    """DANN's domain term: ``n`` random target samples through the encoder, both feature sets through the
    gradient reversal (``weight`` ramps 0 → 1 as in Ganin & Lempitsky) into the domain classifier."""
    import torch

    chunk = rng.choice(len(target_data), size=n, replace=len(target_data) < n)
    target_features = network.features(*[t.to(device) for t in target_data.make(chunk, train=True)])
    features = reverse_gradient(torch.cat([source_features, target_features.float()]), weight)
    domains = torch.cat([torch.zeros(len(source_features)), torch.ones(len(target_features))]).to(device)
    return torch.nn.functional.binary_cross_entropy_with_logits(domain_classifier(features).squeeze(1), domains)
