"""Model selection: sweep backbones × layers × heads on cached embeddings.

Each backbone is extracted once through the cache; every view (layer), head and hyper-parameter
setting trains on the cached matrix.  Heads are tuned by stratified k-fold cross-validation on the
training data only; a held-out test split, when given, is touched once per row, by the refitted
winner of that row's grid.  Cross-validation results and transferability scores are themselves
cached, keyed by the embeddings' store, the data and the protocol, so repeating a sweep (or adding
one backbone to it) recomputes only what is new.

>>> result = featx.sweep(paths, labels, backbones=["timm/tf_efficientnet_lite0", "acme/colorhist"],
...                      heads=["logreg", "svm"], test_size=0.3, run_dir="runs/textile")  # doctest: +SKIP
>>> result.leaderboard[0]["backbone"], result.best_.predict(new_paths)                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import numbers
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._fs import digest, write_json_atomic
from ..backbones.base import Backbone
from ..cache import EmbeddingCache
from ..errors import BadInputError, FeatxWarning
from ..heads import HEADS, head_name, make_head

METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "macro_f1": "f1_macro"}
PROTOCOL_VERSION = 1


@dataclass
class SweepResult:
    """A leaderboard (one row per backbone/view/head, best first), the fitted winner and the manifest.

    ``evaluation`` describes the winner on the test split (or, without one, from out-of-fold
    cross-validation predictions): ``split``, ``labels``, the confusion ``matrix`` (counts) and
    ``per_class`` precision/recall/F1.  ``report`` is the rendered ``report.html`` (``None`` when not
    rendered).
    """

    leaderboard: list[dict]
    best_: Any
    manifest: dict
    correlations: dict[str, float]
    evaluation: dict = field(default_factory=dict)
    source: dict | None = None
    run_dir: Path | None = None
    report: Path | None = None
    agreement: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    scored_only: list = field(default_factory=list)

    def table(self, limit: int | None = None) -> str:
        """The leaderboard as aligned text; rows of random-init backbones end in ``[random init]``."""
        if self.manifest.get("task") == "regression":
            return _regression_table(self.leaderboard[:limit])
        target_columns = [(key, title) for key, title in (("target_accuracy", "target"), ("target_score", "tgt score"))
                          if any(key in r for r in self.leaderboard)]  # only in sweeps given X_target / y_target
        header = (f"{'#':>2} {'backbone':34s} {'view':8s} {'head':7s} {'cv acc':>14s} {'bal acc':>7s} {'macroF1':>7s} "
                  f"{'test':>6s}" + "".join(f" {title:>9s}" for _, title in target_columns)
                  + f" {'extract s':>9s} {'fit s':>6s}")
        lines = [header, "-" * len(header)]
        for rank, r in enumerate(self.leaderboard[:limit], 1):
            test = f"{r['test_accuracy']:.3f}" if r.get("test_accuracy") is not None else "-"
            target = "".join(f" {r[key]:9.3f}" if r.get(key) is not None else f" {'-':>9s}" for key, _ in target_columns)
            lines.append(f"{rank:2d} {r['backbone'][:34]:34s} {r['view'][:8]:8s} {r['head'][:7]:7s} "
                         f"{r['cv_accuracy']:.3f} ± {r['cv_accuracy_std']:.3f} {r['cv_balanced_accuracy']:7.3f} "
                         f"{r['cv_macro_f1']:7.3f} {test:>6s}{target} {r['extract_seconds']:9.1f} {r['fit_seconds']:6.2f}"
                         + ("  [random init]" if r.get("random_init") else ""))
        if any(r.get("random_init") for r in self.leaderboard[:limit]):
            lines.append("[random init]: the backbone has no pretrained weights; its rows score an untrained network")
        if self.scored_only:
            lines.append(f"not cross-validated (outside the top {self.selection.get('cv_top_k')} by "
                         f"{self.selection.get('rank_by')}): " + ", ".join(f"{r['backbone']} [{r['view']}]" for r in self.scored_only))
        return "\n".join(lines)

    def agreement_table(self) -> str:
        """Each transferability score's Spearman ρ, weighted Kendall τ_w and top-1 hit against CV accuracy."""
        lines = [f"{'score':8s} {'rho':>6s} {'tau_w':>6s} top-1", "-" * 27]
        for name, a in self.agreement.items():
            hit = "-" if a["top1"] is None else ("yes" if a["top1"] else "no")
            lines.append(f"{name:8s} {a['spearman']:6.3f} {a['weighted_tau']:6.3f} {hit}")
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("featx", "torch", "timm", "transformers", "scikit-learn", "numpy", "h5py"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _specs(backbones, backbone_options: dict | None) -> list[tuple[Any, dict | None]]:
    specs = []
    for b in backbones:
        if isinstance(b, tuple):
            specs.append((b[0], dict(b[1]) if b[1] else None))
        elif isinstance(b, Backbone):
            specs.append((b, None))
        else:
            specs.append((b, (backbone_options or {}).get(b)))
    if not specs:
        raise BadInputError("sweep needs at least one backbone: give backbones=[\"timm/tf_efficientnet_lite0\", ...]")
    return specs


def _describe(backbone: Backbone, requested: dict | None) -> dict:
    """What the manifest and the leaderboard record about a backbone (contract: ``random_init``, ``options``)."""
    return {"name": backbone.name, "modality": backbone.modality, "requested_options": requested,
            "options": backbone.options, "random_init": backbone.random_init}


def _class_name(label) -> str:
    return repr(str(label))


def _least_populated(y: np.ndarray) -> tuple[str, int, int]:
    """The least populated class of ``y`` (its name for messages), its count and the number of classes."""
    classes, counts = np.unique(y, return_counts=True)
    i = int(np.argmin(counts))
    return _class_name(classes[i]), int(counts[i]), len(classes)


def _check_cv(cv) -> None:
    if isinstance(cv, bool) or not isinstance(cv, numbers.Integral) or cv < 2:
        raise BadInputError(f"cv={cv!r}: cross-validation needs a whole number of folds, at least 2; "
                            f"give e.g. cv=5 (the default)")


def _check_test_size(test_size) -> None:
    if test_size is None or (isinstance(test_size, numbers.Real) and not isinstance(test_size, bool)
                             and (test_size == 0 or 0 < test_size < 1)):
        return
    raise BadInputError(f"test_size={test_size!r} is not a fraction between 0 and 1: give e.g. test_size=0.3 to hold "
                        f"out 30 % of the samples, or None (or 0) for no test split")


def holdout_split(X, y, test_size: float, seed: int = 0):
    """Split off a stratified test set, the way ``sweep(..., test_size=...)`` does.

    Parameters
    ----------
    X : sequence or numpy array
        Samples (paths, texts, arrays).
    y : array-like
        One label per sample.
    test_size : float
        Fraction of the samples to hold out, strictly between 0 and 1.
    seed : int
        Random state of the split.

    Returns
    -------
    tuple
        ``(X_train, y_train, X_test, y_test)``; samples keep their type (arrays stay arrays, others become lists).

    >>> X_train, y_train, X_test, y_test = holdout_split([f"s{i}" for i in range(8)], ["a", "b"] * 4, test_size=0.25)
    >>> len(X_train), sorted(y_test.tolist())
    (6, ['a', 'b'])
    """
    from sklearn.model_selection import train_test_split

    _check_test_size(test_size)
    y = np.asarray(y)
    name, count, n_classes = _least_populated(y)
    if count < 2:
        raise BadInputError(f"class {name} has only {count} sample; a stratified test split (test_size={test_size}) needs "
                            f"at least 2 of every class: add samples of {name}, drop that class, or give test_size=None")
    n_test = int(np.ceil(test_size * len(y)))
    if min(n_test, len(y) - n_test) < n_classes:
        raise BadInputError(f"test_size={test_size} holds out {n_test} of {len(y)} samples, but both sides of a "
                            f"stratified split need one sample of each of the {n_classes} classes: give more data or "
                            f"a test_size between {n_classes / len(y):.2f} and {1 - n_classes / len(y):.2f}")
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
    pick = (lambda idx: X[idx]) if isinstance(X, np.ndarray) else (lambda idx: [X[i] for i in idx])
    return pick(train), y[train], pick(test), y[test]


def _train_and_test(X, y, X_test, y_test, test_size, seed):
    """The training samples and the test split (given, split off by ``test_size``, or none), checked."""
    from ..data.labels import labels_or_raise

    _check_test_size(test_size)
    if X_test is None and y_test is None:
        return holdout_split(X, y, test_size, seed) if test_size else (X, y, None, None)
    if test_size:
        raise BadInputError(f"test_size={test_size} and X_test/y_test were both given: give a test split or a "
                            f"fraction to split off, not both")
    if y_test is None:
        raise BadInputError("X_test was given without y_test: give the test labels too (y_test=...), or drop X_test")
    if X_test is None:
        raise BadInputError("y_test was given without X_test: give the test samples too (X_test=...), or drop y_test")
    if len(X_test) != len(y_test):
        raise BadInputError(f"len(X_test) = {len(X_test)} but len(y_test) = {len(y_test)}: give one label per test sample")
    return X, y, X_test, labels_or_raise(y_test, len(X_test))


def _target_domain(X, X_target, y_target):
    """The target-domain samples and their labels (``None`` when not given), checked before anything is embedded."""
    from ..data.labels import labels_or_raise
    from ..data.samples import infer_modality, sample_list

    if X_target is None:
        if y_target is not None:
            raise BadInputError("y_target was given without X_target: give the target samples too (X_target=...), "
                                "or drop y_target")
        return None, None
    try:
        X_target = sample_list(X_target)
    except BadInputError as exc:
        raise BadInputError(f"X_target: {exc}") from None
    if len(X_target) == 0:
        raise BadInputError("X_target is empty: pass samples of the new domain, or leave it out")
    kind, target_kind = infer_modality(X), infer_modality(X_target)
    if target_kind != kind:
        raise BadInputError(f"X_target holds {target_kind}s but X holds {kind}s: X_target must be {kind}s of the "
                            f"new domain")
    if y_target is None:
        return X_target, None
    if len(y_target) != len(X_target):
        raise BadInputError(f"len(X_target) = {len(X_target)} but len(y_target) = {len(y_target)}: give one label "
                            f"per target sample")
    try:
        return X_target, labels_or_raise(y_target, len(X_target))
    except BadInputError as exc:
        raise BadInputError(f"y_target: {exc}") from None


def _target_score(model, Z_target: np.ndarray) -> float | None:
    """Negative mean prediction entropy (nats) of ``model`` on the target vectors: 0 when every
    prediction is certain, ``-log(n_classes)`` when all are uniform; ``None`` without ``predict_proba``.

    The quantity skada's ``PredictionEntropyScorer`` measures; computed here with scipy because
    that scorer needs a skada pipeline fitted with ``sample_domain``, and this head is a plain one.

    >>> from sklearn.dummy import DummyClassifier
    >>> round(_target_score(DummyClassifier(strategy="uniform").fit([[0], [1]], [0, 1]), np.zeros((3, 1))), 3)
    -0.693
    """
    from scipy.stats import entropy

    if not hasattr(model, "predict_proba"):
        return None
    return -float(np.mean(entropy(model.predict_proba(Z_target), axis=1)))


def _folds(y: np.ndarray, cv: int, seed: int, after_split: bool, warn: bool = True):
    """Stratified folds; fewer than ``cv`` (with a warning, unless ``warn`` is False) when the least
    populated class is smaller."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    name, count, _ = _least_populated(y)
    where = " after the test split" if after_split else ""
    if count < 2:
        raise BadInputError(f"class {name} has only {count} training sample{where}; cross-validation needs at least 2 of "
                            f"every class: add samples of {name} or drop that class"
                            + (", or hold out fewer (a smaller test_size)" if after_split else ""))
    if count < cv and warn:
        warnings.warn(f"cv={cv} lowered to {count} folds: class {name} has only {count} training samples{where}, "
                      f"and every fold needs each class", FeatxWarning, stacklevel=3)
    return StratifiedKFold(n_splits=min(cv, count), shuffle=True, random_state=seed)


class _ResultsCache:
    """JSON results keyed by content (store key + data + protocol): CV scores, transferability."""

    def __init__(self, cache_dir) -> None:
        self.root = EmbeddingCache(cache_dir).results_dir

    def get(self, key: str):
        try:
            return json.loads((self.root / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.root / f"{key}.json", value)
        except OSError:
            pass  # a results cache that cannot be written only costs time


def _check_ranking(rank_by, cv_top_k, transferability: bool) -> None:
    from .transferability import SCORES, STATIC

    names = ["cv", *SCORES, STATIC]  # featx/cli.py RANKINGS lists the same
    if rank_by not in names:
        raise BadInputError(f"rank_by={rank_by!r} is not a ranking featx knows; use one of {', '.join(map(repr, names))}")
    if rank_by != "cv" and not transferability:
        raise BadInputError(f"rank_by={rank_by!r} needs the transferability scores: drop transferability=False")
    if cv_top_k is None:
        return
    if isinstance(cv_top_k, bool) or not isinstance(cv_top_k, numbers.Integral) or cv_top_k < 1:
        raise BadInputError(f"cv_top_k={cv_top_k!r} must be a whole number of setups to cross-validate, at least 1 "
                            f"(or None to cross-validate every setup)")
    if rank_by == "cv":
        raise BadInputError(f"cv_top_k={cv_top_k} needs a cheap score to choose the setups to cross-validate: give "
                            f"rank_by='logme' (or another score), or drop cv_top_k")


def _selection(rank_by: str, cv_top_k, rows: list[dict], candidates: list[dict], n_chosen: int, heads,
               results: "_ResultsCache", cv_key) -> dict:
    """How the winner was chosen; the exhaustive (all setups cross-validated) pick when it is known,
    from this sweep or from CV results already in the cache, and whether the two agree."""
    from .transferability import setup_key

    fields = ("backbone", "backbone_options", "view", "head", "cv_accuracy")
    pick = {k: rows[0][k] for k in fields}
    exhaustive = None
    if rank_by == "cv" or cv_top_k is None:
        exhaustive = max(rows, key=lambda r: (r["cv_accuracy"], -r["cv_accuracy_std"]))
    elif all(isinstance(h, str) for h in heads):
        known = [(c, h, results.get(cv_key(c, h))) for c in candidates for h in heads]
        if all(cv is not None for _, _, cv in known):
            best = max(known, key=lambda t: (t[2]["cv_accuracy"], -t[2]["cv_accuracy_std"]))
            exhaustive = {"backbone": best[0]["described"]["name"], "backbone_options": best[0]["described"]["options"],
                          "view": best[0]["view"], "head": head_name(best[1]), "cv_accuracy": best[2]["cv_accuracy"]}
    if exhaustive is not None:
        exhaustive = {k: exhaustive[k] for k in fields}
    same = None if exhaustive is None else setup_key(pick) == setup_key(exhaustive)
    return {"rank_by": rank_by, "cv_top_k": cv_top_k, "setups": len(candidates), "cross_validated": n_chosen,
            "pick": pick, "exhaustive_pick": exhaustive, "same_pick": same}


def _check_heads_on_folds(heads: list, y: np.ndarray, folds) -> None:
    """Each head's own checks of its targets (the svm head's samples per class, ...) on every
    cross-validation training fold, so that a head that cannot fit them fails before any embedding."""
    for head in heads:
        check = getattr(make_head(head), "_check_targets", None)  # featx's heads; a scikit-learn one has none
        if check is None:
            continue
        for train, _ in folds.split(np.zeros((len(y), 1)), y):
            try:
                check(np.zeros((len(train), 1)), y[train])
            except BadInputError as exc:
                raise BadInputError(f"head {head_name(head)!r} cannot be cross-validated on {len(y)} training "
                                    f"samples in {folds.get_n_splits()} folds (each fold trains on about "
                                    f"{len(train)}): {exc}") from None


def _grid_search(head, Z: np.ndarray, y: np.ndarray, folds, grid: dict | None, n_jobs, metric: str = "accuracy") -> dict:
    """Cross-validate every setting of ``head``'s grid; the setting best by ``metric`` (a ``METRICS`` key) wins."""
    from sklearn.model_selection import GridSearchCV

    import warnings

    from sklearn.exceptions import FitFailedWarning

    grid = grid if grid is not None else (HEADS[head].grid if isinstance(head, str) else {})
    search = GridSearchCV(make_head(head), grid or {}, cv=folds, scoring=METRICS, refit=False, n_jobs=n_jobs,
                          error_score=np.nan)
    with warnings.catch_warnings():  # candidates that cannot fit this data (k > fold size …) score NaN
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            search.fit(Z, y)
        except ValueError as exc:  # scikit-learn raises when every candidate failed on every fold
            cause = str(exc).strip().splitlines()[-1]  # the last failure's own message
            raise BadInputError(f"head {head_name(head)!r}: no setting of its grid could be fitted on {len(y)} "
                                f"samples with {folds.get_n_splits()} folds ({cause}); give more data or a smaller "
                                f"grid") from None
    r = search.cv_results_
    best = int(np.nanargmax(r[f"mean_test_{metric}"]))
    return {
        "params": {k: (v.item() if hasattr(v, "item") else v) for k, v in r["params"][best].items()},
        "cv_accuracy": float(r["mean_test_accuracy"][best]), "cv_accuracy_std": float(r["std_test_accuracy"][best]),
        "cv_balanced_accuracy": float(r["mean_test_balanced_accuracy"][best]),
        "cv_macro_f1": float(r["mean_test_macro_f1"][best]),
        "candidates": len(r["params"]), "cv_fit_seconds": float(np.sum(r["mean_fit_time"]) * folds.get_n_splits()),
    }


def _refit_and_test(head, params: dict, Z, y, test, columns, y_test, results: _ResultsCache, key: str,
                    reuse: bool, target=None, y_target=None) -> dict:
    """Refit one row's winning setting on all training data and score it on the test split, and on
    the target domain when given: ``target_score`` (``_target_score``), ``target_accuracy`` with ``y_target``.

    With ``reuse`` (the row's CV came from the cache) a cached outcome is taken as is, so a repeated
    sweep refits only the overall winner.
    """
    cached = results.get(key) if reuse and isinstance(head, str) else None
    if cached is not None:
        return cached
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.perf_counter()
    model = make_head(head, **params).fit(Z, y)
    outcome = {"fit_seconds": time.perf_counter() - t0, "test_accuracy": None, "test_macro_f1": None}
    if test is not None:
        predicted = model.predict(np.ascontiguousarray(test.vectors[:, columns]))
        outcome["test_accuracy"] = float(accuracy_score(y_test, predicted))
        outcome["test_macro_f1"] = float(f1_score(y_test, predicted, average="macro"))
    if target is not None:
        Z_target = np.ascontiguousarray(target.vectors[:, columns])
        if y_target is not None:
            outcome["target_accuracy"] = float(accuracy_score(y_target, model.predict(Z_target)))
        outcome["target_score"] = _target_score(model, Z_target)
    if isinstance(head, str):
        results.put(key, outcome)
    return outcome


def sweep(X, y, backbones: Sequence, heads: Sequence = ("logreg", "svm", "mlp", "knn"), *,
          backbone_options: dict | None = None, X_test=None, y_test=None, test_size: float | None = None,
          cv: int = 5, grids: dict | None = None, views: bool = True, transferability: bool = True,
          cache_dir=None, run_dir=None, seed: int = 0, n_jobs: int | None = None, progress: bool = True,
          report: bool = True, engine: str = "local", source: dict | None = None, rank_by: str = "cv",
          cv_top_k: int | None = None, scoring: str = "accuracy", task: str = "auto", X_target=None,
          y_target=None, errors: str = "raise") -> SweepResult:
    """Rank every backbone × view × head on ``(X, y)`` by cross-validated accuracy (or ``scoring``).

    Every argument is checked before anything is embedded.  With ``run_dir`` the results are saved
    first (``source.json``, ``leaderboard.csv``/``.json``, ``manifest.json``, ``best.featx``) and the
    HTML report is rendered last: if rendering fails, a warning names the cause and the results stay
    (render them later with ``featx report RUN_DIR``).

    Parameters
    ----------
    X, y : sequence, array-like
        Training samples (image paths/images or texts) and their labels.
    backbones : sequence
        Registered names, ``(name, options)`` pairs or ``featx.Backbone`` instances.
    heads : sequence
        Built-in head names (``featx.heads.HEADS``) or scikit-learn classifier instances.
    backbone_options : dict, optional
        Options by backbone name (for names given without options).
    X_test, y_test : sequence, array-like, optional
        A test split, scored once per row and never seen by cross-validation.
    test_size : float, optional
        Instead of ``X_test``/``y_test``: the fraction of ``(X, y)`` to split off (stratified, by ``seed``).
    cv : int
        Stratified folds (at least 2; fewer, with a warning, when a class has fewer training samples).
    grids : dict, optional
        Hyper-parameter grids by head name, replacing the built-in ones.
    views : bool
        ``False`` evaluates only the full vector of multi-layer backbones.
    transferability : bool
        Compute the feature-only scores (``featx.selection.transferability``) of every backbone/view.
    cache_dir, engine, n_jobs, progress
        As in ``featx.extract``; ``n_jobs`` parallelises the grid searches.
    run_dir : path, optional
        Folder for the run's files and report.
    seed : int
        Seed of the split and the folds.
    report : bool
        Render ``report.html`` (and its plots) into ``run_dir``.
    source : dict, optional
        How the data was loaded (``data``, ``text_column``, ``label_column``, ``test_size``, ``seed``,
        ``options``), written to ``run_dir/source.json``; the report turns it into the ``featx sweep``
        command that reproduces the run.
    rank_by : str
        ``"cv"`` (default) orders the leaderboard by CV accuracy.  A transferability score
        (``"logme"``, ``"h_score"``, ``"nleep"``, ``"nce"``, ``"sfda"``, or ``"static"``, the no-data
        baseline) orders the backbone/view setups by that score instead (heads within a setup by CV)
        and its top setup is the winner; ``selection`` says whether CV would have picked the same.
    cv_top_k : int, optional
        Budgeted mode, with a score as ``rank_by``: cross-validate only the ``cv_top_k`` setups that
        score best, pick the winner among them by CV; the others get their scores only
        (``scored_only``).  ``selection`` compares with the exhaustive pick when every setup's CV
        result is in the cache.
    scoring : {"accuracy", "balanced_accuracy", "f1_macro"}
        The cross-validated metric that picks each head's setting and ranks the rows (all three
        are reported).  For imbalanced classes, ``"balanced_accuracy"`` or ``"f1_macro"``.
    task : {"auto", "classification", "regression"}
        ``"auto"``: a regression when ``y`` is continuous (many distinct non-integer floats).  A
        regression sweep (``sweep_regression``) ranks by CV R², reports MAE and scores
        transferability with LogME's regression form.
    X_target, y_target : sequence, array-like, optional
        Samples of a new domain (same modality as ``X``), embedded once per backbone like the test
        split and never used for training or ranking.  Each row then reports ``target_score``, an
        unsupervised score of its refitted head on ``X_target`` (negative mean prediction entropy,
        in nats: nearer 0 is more confident; ``None`` for a head without ``predict_proba``) and, with
        ``y_target``, ``target_accuracy``: read them to pick the setup that transfers.  The ranking
        stays by cross-validation.  Classification sweeps only.
    errors : {"raise", "skip"}, default "raise"
        Unreadable samples: ``"raise"`` stops with a list of them (the others are cached);
        ``"skip"`` leaves them out of every split, for every backbone alike (a sample any backbone
        cannot read is dropped for all, so the rows compare the same samples), and lists them in
        ``manifest["skipped"]``.

    Returns
    -------
    SweepResult
        The leaderboard (best first), the refitted winner ``best_``, the manifest, the rank
        correlations of the transferability scores, and the winner's evaluation.

    >>> result = featx.sweep(texts, labels, backbones=["hf/all-MiniLM-L6-v2"], heads=["logreg", "knn"],
    ...                      test_size=0.3, run_dir="runs/news")          # doctest: +SKIP
    >>> print(result.table())                                            # doctest: +SKIP
    """
    from ..data.samples import as_samples, take
    from ..data.labels import labels_or_raise
    from ..estimators import TransferClassifier, resolve_backbone
    from ..extraction.pipeline import check_errors, extract
    from .transferability import (SCORES, STATIC, parameter_count, rank_agreement, rank_correlations, score_all,
                                  setup_key, static_prior)

    metric = _scoring_metric(scoring)
    check_errors(errors)
    if _is_regression(y, task):
        if X_target is not None or y_target is not None:
            raise BadInputError("X_target/y_target: a regression sweep does not score a target domain yet; drop them")
        if errors != "raise":
            raise BadInputError(f"errors={errors!r}: a regression sweep cannot leave samples out yet; fix or remove "
                                f"the unreadable ones and sweep with errors='raise'")
        return sweep_regression(X, y, backbones, heads, backbone_options=backbone_options, cv=cv, grids=grids,
                                views=views, transferability=transferability, cache_dir=cache_dir, seed=seed,
                                n_jobs=n_jobs, progress=progress, engine=engine, X_test=X_test, y_test=y_test,
                                test_size=test_size, run_dir=run_dir)
    say = print if progress else (lambda *a, **k: None)
    heads = [heads] if isinstance(heads, str) else list(heads)
    if not heads:
        raise BadInputError("sweep needs at least one head: give heads=[\"logreg\", ...] (see featx.heads.HEADS)")
    for head in heads:
        make_head(head)  # unknown names fail now, not after the extraction
    specs = _specs(backbones, backbone_options)
    _check_cv(cv)
    _check_ranking(rank_by, cv_top_k, transferability)
    y = labels_or_raise(y, len(X))
    X, y, X_test, y_test = _train_and_test(X, y, X_test, y_test, test_size, seed)
    X_target, y_target = _target_domain(X, X_target, y_target)
    folds = _folds(y, cv, seed, after_split=bool(test_size), warn=errors == "raise")  # "skip": once y is final
    _check_heads_on_folds(heads, y, folds)
    results = _ResultsCache(cache_dir)
    rows: list[dict] = []
    fitted: dict[tuple, tuple] = {}
    manifest_backbones = []
    data_key = test_key = target_key = None
    hashed: dict[str, tuple] = {}  # modality -> (train, test) samples: content hashed once for every backbone

    extracted = []  # (spec, options, backbone, described, (train, test, target)) per backbone
    for spec, options in specs:
        backbone = resolve_backbone(spec, options)
        described = _describe(backbone, options)
        say(f"[sweep] {backbone.name}: extracting {len(X)} train" + (f" + {len(X_test)} test" if X_test is not None else "")
            + (" (random init: no pretrained weights)" if described["random_init"] else ""))
        if backbone.modality not in hashed:
            hashed[backbone.modality] = (as_samples(X, backbone.modality),
                                         as_samples(X_test, backbone.modality) if X_test is not None else None,
                                         as_samples(X_target, backbone.modality) if X_target is not None else None)
        parts = tuple(None if samples is None else extract(backbone, samples, cache_dir=cache_dir, progress=progress,
                                                           engine=engine, errors=errors)
                      for samples in hashed[backbone.modality])
        extracted.append((spec, options, backbone, described, parts))
    skipped = _unreadable([parts for *_, parts in extracted])
    if skipped:
        keep = [None if split[0] is None else np.logical_and.reduce([part.ok for part in split])
                for split in zip(*(parts for *_, parts in extracted))]  # train, test, target: readable by all
        extracted = [(*setup, tuple(None if part is None else _kept(part, mask) for part, mask in zip(parts, keep)))
                     for *setup, parts in extracted]
        hashed = {modality: tuple(None if samples is None else samples.subset(np.flatnonzero(mask))
                                  for samples, mask in zip(triple, keep)) for modality, triple in hashed.items()}
        X, y = take(X, keep[0]), y[keep[0]]
        if X_test is not None:
            X_test, y_test = take(X_test, keep[1]), y_test[keep[1]]
        if X_target is not None:
            X_target, y_target = take(X_target, keep[2]), None if y_target is None else y_target[keep[2]]
        say(f"[sweep] left out {len(skipped)} unreadable sample{'s' if len(skipped) > 1 else ''} (errors='skip')")
    if errors == "skip":
        folds = _folds(y, cv, seed, after_split=bool(test_size))
        _check_heads_on_folds(heads, y, folds)

    candidates: list[dict] = []  # one per backbone/view: its features and scores, cross-validated below
    for spec, options, backbone, described, (train, test, target) in extracted:
        train_samples, test_samples, target_samples = hashed[backbone.modality]
        if data_key is None:
            data_key = digest("data", train_samples.keys.tobytes().hex(), [str(v) for v in y])
        if test is not None and test_key is None:
            test_key = digest("test", test_samples.keys.tobytes().hex(), [str(v) for v in y_test])
        if target is not None and target_key is None:
            target_key = digest("target", target_samples.keys.tobytes().hex(),
                                None if y_target is None else [str(v) for v in y_target])
        extract_s = sum(part.stats.seconds for part in (train, test, target) if part is not None)
        hits = sum(part.stats.hits for part in (train, test, target) if part is not None)
        embedded = sum(part.stats.embedded for part in (train, test, target) if part is not None)
        manifest_backbones.append({**described, "fingerprint": backbone.fingerprint(), "store_key": train.stats.store_key,
                                   "dim": backbone.dim, "views": list(backbone.views)})
        whole = [("all", slice(0, backbone.dim))]
        view_items = whole + list(backbone.views.items()) if views and len(backbone.views) > 1 else whole
        n_parameters = parameter_count(backbone) if transferability else None
        for view, columns in view_items:
            Z = np.ascontiguousarray(train.vectors[:, columns])
            base_key = digest("sweep", PROTOCOL_VERSION, train.stats.store_key, view, data_key, folds.get_n_splits(), seed)
            scores = {}
            if transferability:
                scores = results.get(digest(base_key, "transferability"))
                if scores is None or set(scores) != set(SCORES):
                    scores = score_all(Z, y, seed=seed)
                    results.put(digest(base_key, "transferability"), scores)
                if n_parameters is not None:  # a backbone featx cannot count has no static rank
                    scores[STATIC] = static_prior(n_parameters, view, list(backbone.views))
            candidates.append({"spec": spec, "options": options, "described": described, "view": view, "columns": columns,
                               "Z": Z, "test": test, "target": target, "base_key": base_key, "scores": scores,
                               "info": {"extract_seconds": extract_s, "cache_hits": hits, "embedded": embedded}})

    def cv_key(candidate, head):
        name = head_name(head)
        grid = (grids or {}).get(name)
        return digest(candidate["base_key"], "head", name, repr(head) if not isinstance(head, str) else name, grid,
                      *(() if metric == "accuracy" else (metric,)))  # keys of accuracy runs unchanged

    if rank_by != "cv":
        candidates.sort(key=lambda c: -np.nan_to_num(c["scores"][rank_by], nan=-np.inf))  # stable: ties keep order
    chosen = candidates if cv_top_k is None else candidates[:cv_top_k]
    for candidate in chosen:
        described, view, columns, Z, test = (candidate[k] for k in ("described", "view", "columns", "Z", "test"))
        for head in heads:
            name = head_name(head)
            head_key = cv_key(candidate, head)
            cv_result = results.get(head_key) if isinstance(head, str) else None
            cached_cv = cv_result is not None
            if cv_result is None:
                cv_result = _grid_search(head, Z, y, folds, (grids or {}).get(name), n_jobs, metric)
                if isinstance(head, str):
                    results.put(head_key, cv_result)
            row = {"backbone": described["name"], "random_init": described["random_init"],
                   "backbone_options": described["options"], "view": view, "head": name, **cv_result,
                   **candidate["info"], "cv_from_cache": cached_cv,
                   **{f"score_{k}": v for k, v in candidate["scores"].items()}}
            row.update(_refit_and_test(head, cv_result["params"], Z, y, test, columns, y_test, results,
                                       digest(head_key, test_key, *(() if target_key is None else (target_key,))),
                                       reuse=cached_cv, target=candidate["target"], y_target=y_target))
            rows.append(row)
            fitted[(*setup_key(row), name)] = (candidate["spec"], candidate["options"], head, columns, test, Z)
            say(f"[sweep]   {described['name']} {view:8s} {name:7s} cv acc {row['cv_accuracy']:.3f} ± "
                f"{row['cv_accuracy_std']:.3f}" + (f"  test {row['test_accuracy']:.3f}" if row["test_accuracy"] is not None else "")
                + (f"  target {row['target_accuracy']:.3f}" if row.get("target_accuracy") is not None else "")
                + ("  (cv cached)" if cached_cv else ""))
    scored_only = [{"backbone": c["described"]["name"], "view": c["view"], "random_init": c["described"]["random_init"],
                    **{f"score_{k}": v for k, v in c["scores"].items()}} for c in candidates[len(chosen):]]

    rows.sort(key=lambda r: (-r[f"cv_{metric}"], r["cv_accuracy_std"]))
    if rank_by != "cv" and cv_top_k is None:  # the score orders the setups, CV the heads within one
        order = {setup_key({"backbone": c["described"]["name"], "backbone_options": c["described"]["options"],
                            "view": c["view"]}): i for i, c in enumerate(candidates)}
        rows.sort(key=lambda r: order[setup_key(r)])
    selection = _selection(rank_by, cv_top_k, rows, candidates, len(chosen), heads, results, cv_key)
    top = rows[0]
    spec, options, head, columns, test, Z = fitted[(*setup_key(top), top["head"])]
    best = TransferClassifier(spec, head=head, head_params=top["params"] if isinstance(head, str) else None,
                              backbone_options=options, view=None if top["view"] == "all" else top["view"],
                              cache_dir=cache_dir)
    if not isinstance(head, str):
        best.set_params(head=make_head(head, **top["params"]))
    best.fit_embeddings(Z, y)
    if test is not None:
        evaluation = _evaluation(y_test, best.head_.predict(np.ascontiguousarray(test.vectors[:, columns])),
                                 best.classes_, "test")
    else:
        from sklearn.model_selection import cross_val_predict

        out_of_fold = cross_val_predict(make_head(best.head, **(best.head_params or {})), Z, y, cv=folds)
        evaluation = _evaluation(y, out_of_fold, best.classes_, "cross-validation (out-of-fold)")
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
        "backbones": manifest_backbones, "heads": [head_name(h) for h in heads], "cv": int(cv),
        "cv_folds": folds.get_n_splits(), "test_size": test_size or None, "grids": grids, "views": views,
        "transferability": transferability, "seed": seed, "data_fingerprint": data_key, "n_train": len(y),
        "n_test": None if X_test is None else len(y_test), "classes": [str(c) for c in best.classes_],
        "metric": scoring, "best": {k: top[k] for k in ("backbone", "view", "head", "params", "cv_accuracy", "test_accuracy")},
    }
    manifest.update(rank_by=rank_by, cv_top_k=cv_top_k, errors=errors, skipped=skipped)
    if X_target is not None:
        manifest.update(n_target=len(X_target), target_labelled=y_target is not None)
    result = SweepResult(rows, best, manifest, rank_correlations(rows), evaluation, source,
                         agreement=rank_agreement(rows), selection=selection, scored_only=scored_only)
    if run_dir is not None:
        from .report import write_run

        result.run_dir, result.report = write_run(result, run_dir, render=report)
        say(f"[sweep] wrote {result.run_dir}" + (f"; report {result.report}" if result.report else ""))
    return result


def _unreadable(parts_by_backbone: list[tuple]) -> list[str]:
    """Every sample some backbone could not read (``errors="skip"``), each listed once, in order."""
    return list(dict.fromkeys(line for parts in parts_by_backbone for part in parts if part is not None
                              for line in part.stats.failed))


def _kept(extraction, mask: np.ndarray):
    """``extraction`` without the rows ``mask`` leaves out."""
    from ..extraction.pipeline import Extraction

    return Extraction(np.ascontiguousarray(extraction.vectors[mask]), extraction.ok[mask], extraction.stats)


def _evaluation(y_true, predicted, classes, split: str) -> dict:
    """Confusion counts and per-class precision/recall/F1 of the winner's predictions on ``split``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(y_true, predicted, labels=classes, zero_division=0)
    per_class = [{"class": str(c), "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                 for c, p, r, f, n in zip(classes, precision, recall, f1, support)]
    return {"split": split, "labels": [str(c) for c in classes], "per_class": per_class,
            "matrix": confusion_matrix(y_true, predicted, labels=classes).tolist(),
            "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(predicted)))}


SCORINGS = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "f1_macro": "macro_f1"}


def _scoring_metric(scoring) -> str:
    """The ``METRICS`` key (and leaderboard column ``cv_<key>``) that ``scoring=`` ranks by."""
    if scoring not in SCORINGS:
        raise BadInputError(f"scoring={scoring!r} is not one of {', '.join(map(repr, SCORINGS))}: give e.g. "
                            f"scoring=\"balanced_accuracy\" to rank imbalanced classes fairly")
    return SCORINGS[scoring]


def _is_regression(y, task) -> bool:
    from ..data.labels import looks_continuous

    if task not in ("auto", "classification", "regression"):
        raise BadInputError(f"task={task!r} is not 'auto', 'classification' or 'regression'")
    if task != "auto":
        return task == "regression"
    if getattr(y, "ndim", 1) != 1:
        return False
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return looks_continuous(values)


REGRESSION_METRICS = {"r2": "r2", "mae": "neg_mean_absolute_error"}


def sweep_regression(X, y, backbones: Sequence, heads: Sequence = ("ridge", "svr", "knn", "mlp"), *,
                     backbone_options: dict | None = None, cv: int = 5, grids: dict | None = None, views: bool = True,
                     transferability: bool = True, cache_dir=None, seed: int = 0, n_jobs: int | None = None,
                     progress: bool = True, engine: str = "local", X_test=None, y_test=None,
                     test_size: float | None = None, run_dir=None) -> SweepResult:
    """Rank every backbone × view × regression head on a numeric target by cross-validated R².

    ``featx.sweep`` calls it for a continuous ``y`` or ``task="regression"``.  Each row reports
    ``cv_r2`` (± ``cv_r2_std``) and ``cv_mae``; with a test split (``X_test``/``y_test`` or
    ``test_size``), ``test_r2`` and ``test_mae``.  The transferability score is LogME's
    regression form (``score_logme``); ``correlations["logme"]`` is its Spearman correlation
    with the best CV R² per backbone/view.  The winner ``best_`` is a fitted ``TransferRegressor``.
    Reports (``run_dir``) are not written for regression sweeps yet.

    Parameters
    ----------
    X, y : sequence, array-like
        Samples and one number per sample.
    backbones, backbone_options, cv, grids, views, transferability, cache_dir, seed, n_jobs, progress, engine
        As for ``featx.sweep`` (``heads`` from ``featx.heads.REGRESSION_HEADS`` or scikit-learn
        regressors; folds are shuffled k-fold).
    X_test, y_test, test_size : optional
        A test split, or the fraction of ``(X, y)`` to split off.
    run_dir : None
        Must be ``None``.

    Returns
    -------
    SweepResult
        Leaderboard (best R² first), the refitted ``TransferRegressor`` and the manifest.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import GridSearchCV, KFold, train_test_split

    from ..data.labels import regression_targets_or_raise
    from ..data.samples import as_samples
    from ..estimators import TransferRegressor, resolve_backbone
    from ..extraction.pipeline import extract
    from ..heads import REGRESSION_HEADS
    from .transferability import logme_regression

    if run_dir is not None:
        raise BadInputError("run_dir: reports are not written for regression sweeps yet; give run_dir=None and "
                            "save the winner with featx.save(result.best_, path)")
    say = print if progress else (lambda *a, **k: None)
    heads = [heads] if isinstance(heads, str) else list(heads)
    if not heads:
        raise BadInputError("sweep needs at least one head: give heads=[\"ridge\", ...] (see featx.heads.REGRESSION_HEADS)")
    for head in heads:
        make_head(head, "regression")  # unknown names fail now, not after the extraction
    specs = _specs(backbones, backbone_options)
    _check_cv(cv)
    _check_test_size(test_size)
    y = regression_targets_or_raise(y, len(X))
    if test_size:
        if X_test is not None or y_test is not None:
            raise BadInputError(f"test_size={test_size} and X_test/y_test were both given: give one of them")
        train, test_idx = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed)
        X, X_test = [X[i] for i in train], [X[i] for i in test_idx]
        y, y_test = y[train], y[test_idx]
    elif (X_test is None) != (y_test is None):
        raise BadInputError("give both X_test and y_test, or neither")
    if y_test is not None:
        y_test = regression_targets_or_raise(y_test, len(X_test))
    folds = KFold(n_splits=min(cv, len(y)), shuffle=True, random_state=seed)
    rows, fitted, correlations = [], {}, {}
    for spec, options in specs:
        backbone = resolve_backbone(spec, options)
        say(f"[sweep] {backbone.name}: extracting {len(X)} train" + (f" + {len(X_test)} test" if X_test is not None else ""))
        train_vectors = extract(backbone, as_samples(X, backbone.modality), cache_dir=cache_dir, progress=progress,
                                engine=engine)
        test_vectors = (extract(backbone, as_samples(X_test, backbone.modality), cache_dir=cache_dir,
                                progress=progress, engine=engine) if X_test is not None else None)
        whole = [("all", slice(0, backbone.dim))]
        view_items = whole + list(backbone.views.items()) if views and len(backbone.views) > 1 else whole
        for view, columns in view_items:
            Z = np.ascontiguousarray(train_vectors.vectors[:, columns])
            scores = {"logme": logme_regression(Z, y)} if transferability else {}
            for head in heads:
                name = head_name(head)
                grid = (grids or {}).get(name, REGRESSION_HEADS[head].grid if isinstance(head, str) else {})
                t0 = time.perf_counter()
                search = GridSearchCV(make_head(head, "regression"), grid, cv=folds, scoring=REGRESSION_METRICS,
                                      refit="r2", n_jobs=n_jobs, error_score=np.nan).fit(Z, y)
                r, best = search.cv_results_, search.best_index_
                row = {"backbone": backbone.name, "view": view, "head": name,
                       "params": {k: (v.item() if hasattr(v, "item") else v) for k, v in r["params"][best].items()},
                       "cv_r2": float(r["mean_test_r2"][best]), "cv_r2_std": float(r["std_test_r2"][best]),
                       "cv_mae": float(-r["mean_test_mae"][best]), "fit_seconds": time.perf_counter() - t0,
                       "test_r2": None, "test_mae": None, **{f"score_{k}": v for k, v in scores.items()}}
                if test_vectors is not None:
                    predicted = search.best_estimator_.predict(np.ascontiguousarray(test_vectors.vectors[:, columns]))
                    row["test_r2"], row["test_mae"] = float(r2_score(y_test, predicted)), float(mean_absolute_error(y_test, predicted))
                rows.append(row)
                fitted[(backbone.name, view, name)] = (spec, options, head, Z)
                say(f"[sweep]   {view:8s} {name:7s} cv R² {row['cv_r2']:.3f} ± {row['cv_r2_std']:.3f}  MAE {row['cv_mae']:.3g}"
                    + (f"  test R² {row['test_r2']:.3f}" if row["test_r2"] is not None else ""))
    rows.sort(key=lambda r: (-r["cv_r2"], r["cv_r2_std"]))
    top = rows[0]
    spec, options, head, Z = fitted[(top["backbone"], top["view"], top["head"])]
    best = TransferRegressor(spec, head=head if isinstance(head, str) else make_head(head, "regression", **top["params"]),
                             head_params=top["params"] if isinstance(head, str) else None, backbone_options=options,
                             view=None if top["view"] == "all" else top["view"], cache_dir=cache_dir)
    best.fit_embeddings(Z, y)
    setups: dict[tuple, dict] = {}
    for r in rows:  # best row per backbone/view (rows are sorted: the first one met)
        setups.setdefault((r["backbone"], r["view"]), r)
    if transferability and len(setups) >= 3:
        values = [r["score_logme"] for r in setups.values()]
        correlations["logme"] = float(spearmanr(values, [r["cv_r2"] for r in setups.values()]).statistic)
    manifest = {"task": "regression", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": _versions(), "heads": [head_name(h) for h in heads], "cv": int(cv), "seed": seed,
                "n_train": len(y), "n_test": None if y_test is None else len(y_test), "metric": "r2",
                "best": {k: top[k] for k in ("backbone", "view", "head", "params", "cv_r2", "test_r2")}}
    return SweepResult(rows, best, manifest, correlations)


def _regression_table(rows: list[dict]) -> str:
    header = f"{'#':>2} {'backbone':34s} {'view':8s} {'head':7s} {'cv R²':>14s} {'cv MAE':>9s} {'test R²':>7s} {'LogME':>8s}"
    lines = [header, "-" * len(header)]
    for rank, r in enumerate(rows, 1):
        test = f"{r['test_r2']:.3f}" if r.get("test_r2") is not None else "-"
        logme = f"{r['score_logme']:.3f}" if "score_logme" in r else "-"
        lines.append(f"{rank:2d} {r['backbone'][:34]:34s} {r['view'][:8]:8s} {r['head'][:7]:7s} "
                     f"{r['cv_r2']:.3f} ± {r['cv_r2_std']:.3f} {r['cv_mae']:9.3g} {test:>7s} {logme:>8s}")
    return "\n".join(lines)
