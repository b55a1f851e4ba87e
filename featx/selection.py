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
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._fs import digest, write_json_atomic
from .backbones.base import Backbone
from .cache import EmbeddingCache
from .errors import BadInputError
from .heads import HEADS, head_name, make_head

METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "macro_f1": "f1_macro"}
PROTOCOL_VERSION = 1


@dataclass
class SweepResult:
    """A leaderboard (one row per backbone/view/head, best first), the fitted winner and the manifest."""

    leaderboard: list[dict]
    best_: Any
    manifest: dict
    correlations: dict[str, float]
    confusion: dict = field(default_factory=dict)
    run_dir: Path | None = None

    def table(self, limit: int | None = None) -> str:
        """The leaderboard as aligned text."""
        header = f"{'#':>2} {'backbone':34s} {'view':8s} {'head':7s} {'cv acc':>14s} {'bal acc':>7s} {'macroF1':>7s} {'test':>6s} {'extract s':>9s} {'fit s':>6s}"
        lines = [header, "-" * len(header)]
        for rank, r in enumerate(self.leaderboard[:limit], 1):
            test = f"{r['test_accuracy']:.3f}" if r.get("test_accuracy") is not None else "-"
            lines.append(f"{rank:2d} {r['backbone'][:34]:34s} {r['view'][:8]:8s} {r['head'][:7]:7s} "
                         f"{r['cv_accuracy']:.3f} ± {r['cv_accuracy_std']:.3f} {r['cv_balanced_accuracy']:7.3f} "
                         f"{r['cv_macro_f1']:7.3f} {test:>6s} {r['extract_seconds']:9.1f} {r['fit_seconds']:6.2f}")
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
        raise BadInputError("sweep needs at least one backbone")
    return specs


def _folds(y: np.ndarray, cv: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < 2:
        raise BadInputError("every class needs at least 2 training samples for cross-validation")
    return StratifiedKFold(n_splits=min(cv, smallest), shuffle=True, random_state=seed)


class _ResultsCache:
    """JSON results keyed by content (store key + data + protocol): CV scores, transferability."""

    def __init__(self, cache_dir) -> None:
        self.root = EmbeddingCache(cache_dir).root / "results"

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


def _grid_search(head, Z: np.ndarray, y: np.ndarray, folds, grid: dict | None, n_jobs) -> dict:
    from sklearn.model_selection import GridSearchCV

    import warnings

    from sklearn.exceptions import FitFailedWarning

    grid = grid if grid is not None else (HEADS[head].grid if isinstance(head, str) else {})
    search = GridSearchCV(make_head(head), grid or {}, cv=folds, scoring=METRICS, refit=False, n_jobs=n_jobs,
                          error_score=np.nan)
    with warnings.catch_warnings():  # candidates that cannot fit this data (k > fold size …) score NaN
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", UserWarning)
        search.fit(Z, y)
    r = search.cv_results_
    if np.all(np.isnan(r["mean_test_accuracy"])):
        raise BadInputError(f"head {head_name(head)!r}: no setting of its grid could be fitted on {len(y)} samples "
                            f"with {folds.get_n_splits()} folds; give more data or a smaller grid")
    best = int(np.nanargmax(r["mean_test_accuracy"]))
    return {
        "params": {k: (v.item() if hasattr(v, "item") else v) for k, v in r["params"][best].items()},
        "cv_accuracy": float(r["mean_test_accuracy"][best]), "cv_accuracy_std": float(r["std_test_accuracy"][best]),
        "cv_balanced_accuracy": float(r["mean_test_balanced_accuracy"][best]),
        "cv_macro_f1": float(r["mean_test_macro_f1"][best]),
        "candidates": len(r["params"]), "cv_fit_seconds": float(np.sum(r["mean_fit_time"]) * folds.get_n_splits()),
    }


def _refit_and_test(head, params: dict, Z, y, test, columns, y_test, results: _ResultsCache, key: str,
                    reuse: bool) -> dict:
    """Refit one row's winning setting on all training data and score it on the test split.

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
    if isinstance(head, str):
        results.put(key, outcome)
    return outcome


def sweep(X, y, backbones: Sequence, heads: Sequence = ("logreg", "svm", "mlp", "knn"), *,
          backbone_options: dict | None = None, X_test=None, y_test=None, test_size: float | None = None,
          cv: int = 5, grids: dict | None = None, views: bool = True, transferability: bool = True,
          cache_dir=None, run_dir=None, seed: int = 0, n_jobs: int | None = None, progress: bool = True,
          report: bool = True, engine: str = "local") -> SweepResult:
    """Rank every backbone × view × head on ``(X, y)`` by cross-validated accuracy.

    ``backbones``: registered names, ``(name, options)`` pairs or ``Backbone`` instances
    (``backbone_options`` maps names to options).  ``heads``: built-in names or scikit-learn
    classifiers; ``grids`` overrides a head's grid by its name.  A test split (``X_test``/``y_test``,
    or ``test_size`` to split off a stratified one) is scored once per row and never seen by CV.
    ``views=False`` evaluates only the full vector of multi-layer backbones.  ``engine="ray"``
    embeds cache misses on a Ray cluster (see ``featx.extract``).  With ``run_dir``,
    writes the leaderboard, a manifest, the best model (``best.featx``) and an HTML report.
    """
    from sklearn.model_selection import train_test_split

    from .datasets import as_samples, labels_or_raise
    from .estimators import TransferClassifier, resolve_backbone
    from .extraction import extract
    from .transferability import score_all

    say = print if progress else (lambda *a, **k: None)
    for head in heads:
        make_head(head)  # unknown names fail now, not after the extraction
    y = labels_or_raise(y, len(X))
    if X_test is None and test_size:
        idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
        pick = (lambda idx: X[idx]) if isinstance(X, np.ndarray) else (lambda idx: [X[i] for i in idx])
        X, X_test, y, y_test = pick(idx_train), pick(idx_test), y[idx_train], y[idx_test]
    if X_test is not None:
        y_test = labels_or_raise(y_test, len(X_test)) if y_test is not None else None
        if y_test is None:
            raise BadInputError("X_test was given without y_test")
    folds = _folds(y, cv, seed)
    results = _ResultsCache(cache_dir)
    rows: list[dict] = []
    fitted: dict[tuple, np.ndarray] = {}
    manifest_backbones = []
    data_key = test_key = None
    hashed: dict[str, tuple] = {}  # modality -> (train, test) samples: content hashed once for every backbone

    for spec, options in _specs(backbones, backbone_options):
        backbone = resolve_backbone(spec, options)
        say(f"[sweep] {backbone.name}: extracting {len(X)} train" + (f" + {len(X_test)} test" if X_test is not None else ""))
        if backbone.modality not in hashed:
            keys_dir = EmbeddingCache(cache_dir).keys_dir
            hashed[backbone.modality] = (as_samples(X, backbone.modality, keys_dir),
                                         as_samples(X_test, backbone.modality, keys_dir) if X_test is not None else None)
        train_samples, test_samples = hashed[backbone.modality]
        train = extract(backbone, train_samples, cache_dir=cache_dir, progress=progress, engine=engine)
        test = extract(backbone, test_samples, cache_dir=cache_dir, progress=progress, engine=engine) if test_samples is not None else None
        if data_key is None:
            data_key = digest("data", train_samples.keys.tobytes().hex(), [str(v) for v in y])
        if test is not None and test_key is None:
            test_key = digest("test", test_samples.keys.tobytes().hex(), [str(v) for v in y_test])
        extract_s = train.stats.seconds + (test.stats.seconds if test else 0.0)
        hits = train.stats.hits + (test.stats.hits if test else 0)
        embedded = train.stats.embedded + (test.stats.embedded if test else 0)
        manifest_backbones.append({"name": backbone.name, "options": options, "fingerprint": backbone.fingerprint(),
                                   "store_key": train.stats.store_key, "dim": backbone.dim, "views": list(backbone.views)})
        whole = [("all", slice(0, backbone.dim))]
        view_items = whole + list(backbone.views.items()) if views and len(backbone.views) > 1 else whole
        for view, columns in view_items:
            Z = np.ascontiguousarray(train.vectors[:, columns])
            base_key = digest("sweep", PROTOCOL_VERSION, train.stats.store_key, view, data_key, folds.get_n_splits(), seed)
            scores = {}
            if transferability:
                scores = results.get(digest(base_key, "transferability"))
                if scores is None:
                    scores = score_all(Z, y, seed=seed)
                    results.put(digest(base_key, "transferability"), scores)
            for head in heads:
                name = head_name(head)
                grid = (grids or {}).get(name)
                head_key = digest(base_key, "head", name, repr(head) if not isinstance(head, str) else name, grid)
                cv_result = results.get(head_key) if isinstance(head, str) else None
                cached_cv = cv_result is not None
                if cv_result is None:
                    cv_result = _grid_search(head, Z, y, folds, grid, n_jobs)
                    if isinstance(head, str):
                        results.put(head_key, cv_result)
                row = {"backbone": backbone.name, "view": view, "head": name, **cv_result,
                       "extract_seconds": extract_s, "cache_hits": hits, "embedded": embedded,
                       "cv_from_cache": cached_cv, **{f"score_{k}": v for k, v in scores.items()}}
                row.update(_refit_and_test(head, cv_result["params"], Z, y, test, columns, y_test, results,
                                           digest(head_key, test_key), reuse=cached_cv))
                rows.append(row)
                fitted[(backbone.name, view, name)] = (spec, options, head, columns, test, Z)
                say(f"[sweep]   {view:8s} {name:7s} cv acc {row['cv_accuracy']:.3f} ± {row['cv_accuracy_std']:.3f}"
                    + (f"  test {row['test_accuracy']:.3f}" if row["test_accuracy"] is not None else "")
                    + ("  (cv cached)" if cached_cv else ""))

    rows.sort(key=lambda r: (-r["cv_accuracy"], r["cv_accuracy_std"]))
    top = rows[0]
    spec, options, head, columns, test, Z = fitted[(top["backbone"], top["view"], top["head"])]
    best = TransferClassifier(spec, head=head, head_params=top["params"] if isinstance(head, str) else None,
                              backbone_options=options, view=None if top["view"] == "all" else top["view"],
                              cache_dir=cache_dir)
    if not isinstance(head, str):
        best.set_params(head=make_head(head, **top["params"]))
    best.fit_embeddings(Z, y)
    confusion = {}
    if test is not None:
        from sklearn.metrics import confusion_matrix

        predicted = best.head_.predict(np.ascontiguousarray(test.vectors[:, columns]))
        confusion = {"labels": [str(c) for c in best.classes_], "matrix": confusion_matrix(y_test, predicted, labels=best.classes_).tolist(),
                     "split": "test"}
    correlations = rank_correlations(rows)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
        "backbones": manifest_backbones, "heads": [head_name(h) for h in heads], "cv_folds": folds.get_n_splits(),
        "seed": seed, "data_fingerprint": data_key, "n_train": len(y), "n_test": None if X_test is None else len(y_test),
        "classes": [str(c) for c in best.classes_], "metric": "accuracy",
        "best": {k: top[k] for k in ("backbone", "view", "head", "params", "cv_accuracy", "test_accuracy")},
    }
    result = SweepResult(rows, best, manifest, correlations, confusion)
    if run_dir is not None:
        from .report import write_run

        result.run_dir = write_run(result, run_dir, render=report)
        say(f"[sweep] wrote {result.run_dir}")
    return result


def rank_correlations(rows: list[dict]) -> dict[str, float]:
    """Spearman correlation of each transferability score with the best CV accuracy per backbone/view."""
    from scipy.stats import spearmanr

    setups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["backbone"], r["view"])
        if key not in setups or r["cv_accuracy"] > setups[key]["cv_accuracy"]:
            setups[key] = r
    best_rows = list(setups.values())
    names = sorted({k[6:] for r in best_rows for k in r if k.startswith("score_")})
    out = {}
    for name in names:
        values = [r[f"score_{name}"] for r in best_rows]
        accuracy = [r["cv_accuracy"] for r in best_rows]
        if len(best_rows) < 3 or len(set(values)) < 2 or len(set(accuracy)) < 2:
            out[name] = float("nan")
        else:
            out[name] = float(spearmanr(values, accuracy).statistic)
    return out
