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

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .estimator import FineTunedClassifier, check_target, is_linear_probe, linear_probe
from .training import METRICS
from .._fs import write_json_atomic
from ..backbones.base import Backbone
from ..errors import BadInputError, did_you_mean


@dataclass
class FineTuneResult:
    """The fine-tuned model, the frozen setup it is compared with, their held-out scores and the
    verdict; ``predict``, ``predict_proba``, ``score`` and ``classes_`` are the kept model's (``best_``).

    ``scores`` holds the held-out score (``model.score``'s: accuracy, subset accuracy for multi-label
    targets, R² for regression) of ``"frozen"`` (the setup as given, its own head refit
    on the training data) and ``"finetuned"``, and of ``"probe"`` when LP-FT started from a linear
    probe other than the frozen setup (whose head is then not logistic regression).  ``keep`` is
    ``"finetuned"`` when it scored higher, else ``"frozen"``; ``held_out`` says on what
    (``"test"`` or ``"validation"``).  ``skipped`` lists the unreadable samples ``errors="skip"`` left out.
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
    skipped: list[str] = field(default_factory=list)

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
        """The kept model's score on ``(X, y)``: accuracy, subset accuracy (multi-label) or R² (regression)."""
        return self.best_.score(X, y)

    def summary(self) -> str:
        """One line: both held-out scores and the verdict."""
        from ..heads import head_name

        head = "linear probe" if is_linear_probe(self.frozen) else f"{head_name(self.frozen.head)} head"
        start = f" (LP-FT started from a linear probe: {self.scores['probe']:.3f})" if "probe" in self.scores else ""
        kept = "fine-tuned" if self.keep == "finetuned" else "frozen"
        metric = METRICS[self.model.task_][1]
        return (f"{self.held_out} {metric}: frozen {head} {self.scores['frozen']:.3f}{start}, fine-tuned "
                f"({self.strategy}) {self.scores['finetuned']:.3f} -> keep the {kept} model")


def _frozen_setup(setup, X, cache_dir, progress: bool, task: str):
    """An unfitted copy of the ``TransferClassifier`` (``TransferRegressor``) to promote (from a sweep
    result, a model or a name), naming its backbone so that fine-tuning can build a private copy of it."""
    from sklearn.base import clone

    from ..data.samples import infer_modality
    from ..estimators import DEFAULT_BACKBONES, TransferClassifier, TransferRegressor

    setup = getattr(setup, "best_", setup)
    if isinstance(setup, str):
        setup = TransferRegressor(setup) if task == "regression" else TransferClassifier(setup)
    if not isinstance(setup, (TransferClassifier, TransferRegressor)):
        raise BadInputError(f"finetune needs a backbone name, a TransferClassifier, a TransferRegressor or a sweep "
                            f"result as the setup, got {type(setup).__name__}")
    if isinstance(setup, TransferRegressor) != (task == "regression") and task != "auto":
        wanted = "TransferRegressor" if task == "regression" else "TransferClassifier"
        raise BadInputError(f"task={task!r} does not fit the setup, a {type(setup).__name__}: leave task out "
                            f"(the setup says it) or promote a {wanted}")
    if setup.view is not None:
        raise BadInputError(f"the setup uses view {setup.view!r} of a multi-layer backbone; fine-tuning trains a "
                            f"single output: promote a setup without a view (a backbone without layers=)")
    frozen = clone(setup).set_params(cache_dir=cache_dir or setup.cache_dir, progress=progress)
    if isinstance(setup.backbone, str) and setup.backbone == "auto":  # named by what X holds
        frozen.set_params(backbone=DEFAULT_BACKBONES[infer_modality(X, setup.input)])
    if isinstance(setup.backbone, Backbone):  # rebuilt from its name: only if that gives the same backbone
        from ..plugins.registry import create_backbone

        if create_backbone(setup.backbone.name).fingerprint() != setup.backbone.fingerprint():
            raise BadInputError(f"the setup's backbone {setup.backbone.name!r} is an instance with its own options; "
                                f"fine-tuning rebuilds it from a name: give TransferClassifier(name, "
                                f"backbone_options={{...}}) instead")
        frozen.set_params(backbone=setup.backbone.name)
    return frozen


def finetune(setup, X, y, *, X_test=None, y_test=None, X_target=None, cache_dir=None, run_dir=None,
             progress: bool = True, errors: str = "raise", **params: Any) -> FineTuneResult:
    """Promote ``setup`` to end-to-end training and compare it with the frozen setup as given.

    Parameters
    ----------
    setup : SweepResult, TransferClassifier, TransferRegressor or str
        What to promote: a sweep result (its ``best_``), a ``TransferClassifier`` or
        ``TransferRegressor`` (fitted or not; its backbone, options, head and head parameters) or a
        backbone name (logreg head; ridge with ``task="regression"``).  A regressor trains with MSE,
        multi-label targets with BCE (see ``FineTunedClassifier``'s ``task``).
    X, y :
        Training samples and targets (class labels, multi-label targets or numbers); the frozen setup is
        refit on them, and the fine-tuning holds ``val_size`` of them out for early stopping.
    X_test, y_test : optional
        Held-out data both models are scored on (else the validation split).
    X_target : optional
        Unlabelled samples of the target domain, for ``adapt="adabn"`` or ``"dann"`` (and only
        with one of them); the frozen setup is not adapted.
    cache_dir : optional
        Embedding cache (default: the setup's).
    run_dir : optional
        Folder for ``log.csv`` (per epoch), ``learning_curve.png``, ``finetune.json``,
        ``finetuned.featx`` and ``frozen.featx``.
    progress : bool
        Progress bars and epoch lines on stderr.
    errors : {"raise", "skip"}, default "raise"
        Unreadable samples: ``"raise"`` stops with a list of them before any training; ``"skip"``
        leaves them out of ``X``, ``X_test`` and ``X_target`` (listed in the result's ``skipped``).
    **params :
        ``FineTunedClassifier`` parameters (``strategy``, ``epochs``, ``lr``, ``batchnorm``, ``adapt``,
        ``task``, …).

    Returns
    -------
    FineTuneResult
        Both models, their held-out ``scores``, the verdict ``keep`` and the kept model's
        ``predict`` / ``predict_proba`` / ``score``.  For ``strategy="lp-ft"`` the head starts from the
        frozen setup's head when that is logistic regression, else from a linear probe fitted
        for it (scored as ``"probe"``).
    """
    from ..estimators import TransferRegressor
    from ..extraction.pipeline import check_errors

    allowed = set(FineTunedClassifier._get_param_names()) - {"backbone", "backbone_options", "cache_dir", "progress"}
    for name in params:
        if name not in allowed:
            raise BadInputError(f"finetune got an unknown parameter {name}=.{did_you_mean(name, allowed)} "
                                f"Parameters: {', '.join(sorted(allowed))}")
    frozen = _frozen_setup(setup, X, cache_dir, progress, params.get("task", "auto"))
    if isinstance(frozen, TransferRegressor):
        params["task"] = "regression"
    model = FineTunedClassifier(frozen.backbone, frozen.backbone_options, cache_dir=frozen.cache_dir,
                                progress=progress, **params)
    check_target(model.adapt, X_target, model.check_params())  # before any embedding
    check_errors(errors)
    (X, y), (X_test, y_test), (X_target, _), skipped = _readable(frozen, errors, (X, y), (X_test, y_test),
                                                                 (X_target, None))
    frozen.fit(X, y)
    probe = None
    if model.strategy == "lp-ft":
        probe = frozen if is_linear_probe(frozen) else linear_probe(
            frozen.backbone, frozen.backbone_options, X, y, task=params.get("task", "classification"),
            cache_dir=frozen.cache_dir, progress=progress)
    model.fit(X, y, probe=probe, X_target=X_target)
    if X_test is not None:
        X_eval, y_eval, held_out = X_test, y_test, "test"
    else:
        val = model.val_indices_
        X_eval = X[val] if isinstance(X, np.ndarray) else [X[i] for i in val]
        y_eval = [y[i] for i in val] if isinstance(y, (list, tuple)) else np.asarray(y)[val]
        held_out = "validation"
    scores = {"frozen": float(frozen.score(X_eval, y_eval)), "finetuned": float(model.score(X_eval, y_eval))}
    if probe is not None and probe is not frozen:
        scores["probe"] = float(probe.score(X_eval, y_eval))
    keep = "finetuned" if scores["finetuned"] > scores["frozen"] else "frozen"
    result = FineTuneResult(model, frozen, model.strategy, scores, keep, held_out, probe, model.history_,
                            model.best_epoch_, skipped=skipped)
    if run_dir is not None:
        result.run_dir = write_run(result, run_dir)
    return result


def _readable(frozen, errors: str, *splits: tuple) -> tuple:
    """Each ``(X, y)`` of ``splits`` (``X`` may be None) and the unreadable samples' lines: with
    ``errors="skip"`` the samples the backbone cannot read are left out (they are embedded, so the
    frozen setup's fit reads them from the cache); with ``"raise"`` the splits as given."""
    from sklearn.base import clone

    from ..data.samples import take

    if errors == "raise":
        return (*splits, [])
    backbone, kept, skipped = frozen._named_backbone(splits[0][0]), [], []
    for X, y in splits:
        if X is None:
            kept.append((X, y))
            continue
        result = clone(frozen).set_params(errors="skip")._extract(backbone, X)
        skipped += result.stats.failed
        kept.append((take(X, result.ok), None if y is None else take(y, result.ok)))
    return (*kept, skipped)


def write_run(result: FineTuneResult, run_dir) -> Path:
    """``log.csv`` (per epoch), ``learning_curve.png``, ``finetune.json`` and both models, in ``run_dir``."""
    from ..heads import head_name
    from ..persist import save

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    summary = {"strategy": result.strategy, "held_out": result.held_out, "scores": result.scores, "keep": result.keep,
               "best_epoch": result.best_epoch, "backbone": result.model.backbone,
               "frozen_head": head_name(result.frozen.head), "batchnorm": result.model.batchnorm,
               "adapt": result.model.adapt, "task": result.model.task_,
               "finetuned_fingerprint": result.model.fingerprint_, "frozen_fingerprint": result.frozen.fingerprint_,
               "skipped": result.skipped}
    write_json_atomic(run_dir / "finetune.json", summary, indent=2)
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
    metric, words = METRICS[result.model.task_]
    right.plot(epochs, [r[metric] for r in result.history], "o-", label="fine-tuned (validation)")
    right.axhline(result.scores["frozen"], color="grey", ls="--", label=f"frozen setup ({result.held_out})")
    right.axvline(result.best_epoch, color="green", ls=":", label="restored epoch")
    right.set(xlabel="epoch", ylabel=words, title=f"{result.strategy}: {words}")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=110)
    plt.close(fig)
    return run_dir
