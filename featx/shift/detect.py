"""Two-sample tests on embeddings: has ``X_new`` shifted away from ``X_ref``?

>>> import numpy as np, featx
>>> rng = np.random.default_rng(0)
>>> ref, new = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 1.5
>>> r = featx.detect_shift(ref, new, None, n_permutations=99)
>>> r.shifted, r.n_ref, r.n_new
(True, 60, 50)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadInputError, did_you_mean

METHODS = ("mmd", "classifier", "ks")
MEDIAN_SAMPLE = 1000  # points whose pairwise distances set the MMD bandwidth
PERMUTATION_BLOCK = 64  # permutations evaluated per matrix product with the kernel
CLASSIFIER_C = 0.01  # strong L2: on 1280-d embeddings C=1 took 10.7 s per 5-fold test (1000 vs 1000), this 2.3 s


@dataclass(eq=False)  # arrays in most_shifted_: compare fields, not reports
class ShiftReport:
    """The verdict of ``detect_shift``.

    ``most_shifted_`` is ``(indices, scores)``: every sample of ``X_new``, the one that looks least
    like the reference first (scores in [0, 1], higher = less like the reference).
    """

    method: str
    statistic: float
    p_value: float
    shifted: bool
    alpha: float
    n_ref: int
    n_new: int
    most_shifted_: tuple[np.ndarray, np.ndarray]

    def verdict(self) -> str:
        """One line: the decision, the p-value against alpha, the statistic and the sizes."""
        names = {"mmd": "MMD²", "classifier": "AUC", "ks": "max KS D"}
        decision = "shift detected" if self.shifted else "no shift detected"
        sign = "<" if self.shifted else ">="
        return (f"{decision}: {self.method} p={self.p_value:.4g} {sign} alpha {self.alpha:g} "
                f"({names[self.method]} {self.statistic:.4g}; {self.n_ref} reference vs {self.n_new} new samples)")


def detect_shift(X_ref: Any, X_new: Any, backbone: Any, *, method: str = "mmd", alpha: float = 0.05,
                 n_permutations: int = 500, backbone_options: dict | None = None, cache_dir=None,
                 random_state: int = 0) -> ShiftReport:
    """Test whether ``X_new`` comes from the distribution of ``X_ref``, on their embeddings.

    Parameters
    ----------
    X_ref, X_new : samples or 2-D float arrays
        Anything ``featx.extract`` embeds (texts, image paths, PIL images, uint8 arrays), embedded
        through the cache (a stored sample is never embedded again); or vectors with ``backbone=None``.
    backbone : str, featx.Backbone or None
        A registered name or a backbone; None when X_ref and X_new are already vectors.
    method : {"mmd", "classifier", "ks"}, default "mmd"
        ``"mmd"``: unbiased MMD² with a Gaussian kernel (bandwidth: the median pairwise squared
        distance), permutation p-value. ``"classifier"``: 5-fold cross-validated AUC of an L2 (C=0.01) logistic
        regression telling the sets apart, p-value of the Mann–Whitney U test of its out-of-fold
        scores (normal approximation). ``"ks"``: Kolmogorov–Smirnov per dimension, the smallest
        p-value Bonferroni-corrected.
    alpha : float in (0, 1), default 0.05
        ``shifted`` is ``p_value < alpha``.
    n_permutations : int, default 500
        Permutations of the MMD test.
    backbone_options : dict, optional
        Options of a backbone given by name.
    cache_dir : str or path, optional
        The embedding cache.
    random_state : int, default 0
        Seeds the permutations, the bandwidth sample and the folds.

    Returns
    -------
    ShiftReport
    """
    check_test_params(method, alpha, n_permutations)
    ref, new = embed_pair(X_ref, X_new, backbone, backbone_options, cache_dir)
    return compare_vectors(ref, new, method=method, alpha=alpha, n_permutations=n_permutations,
                        random_state=random_state)


def check_test_params(method: str, alpha: float, n_permutations: int) -> None:
    if method not in METHODS:
        raise BadInputError(f"method={method!r} is not a shift test{did_you_mean(method, METHODS)}; "
                            f"use one of {', '.join(map(repr, METHODS))}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise BadInputError(f"alpha={alpha!r} must be a number strictly between 0 and 1, e.g. 0.05")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise BadInputError(f"n_permutations={n_permutations!r} must be a positive integer, e.g. 500")


def embed_pair(X_ref: Any, X_new: Any, backbone: Any, backbone_options: dict | None = None,
               cache_dir=None, names: tuple[str, str] = ("X_ref", "X_new")) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float vectors: embedded through the cache, or checked as given (backbone None).
    Errors call the sets by ``names``."""
    if backbone is None:
        return _given_vectors(X_ref, names[0]), _given_vectors(X_new, names[1])
    from ..data.samples import infer_modality
    from ..extraction.pipeline import extract
    from ..plugins.registry import resolve_backbone

    resolved = resolve_backbone(backbone, backbone_options)
    kinds = []
    for name, X in zip(names, (X_ref, X_new)):
        try:
            kinds.append(infer_modality(X))
        except BadInputError as exc:
            raise BadInputError(f"{name}: {exc}") from None
    if kinds[0] != kinds[1]:
        raise BadInputError(f"{names[0]} holds {kinds[0]}s but {names[1]} holds {kinds[1]}s: "
                            f"both sets must be of the same modality")
    if kinds[0] != resolved.modality:
        raise BadInputError(f"{names[0]} and {names[1]} hold {kinds[0]}s but backbone {resolved.name!r} embeds "
                            f"{resolved.modality}s: choose a{'n' if kinds[0] == 'image' else ''} {kinds[0]} backbone")
    return tuple(_checked_vectors(extract(resolved, X, cache_dir=cache_dir).vectors, name)
                 for name, X in zip(names, (X_ref, X_new)))


def _given_vectors(X: Any, name: str) -> np.ndarray:
    array = np.asarray(X)
    if array.dtype.kind not in "fiu" or array.ndim != 2:
        raise BadInputError(f"{name} must be a 2-D float array of vectors when backbone=None "
                            f"(got {'an array of shape ' + str(array.shape) if array.dtype.kind in 'fiu' else type(X).__name__}); "
                            f"to embed samples, pass a backbone name such as 'timm/tf_efficientnet_lite0'")
    return _checked_vectors(array, name)


def _checked_vectors(vectors: np.ndarray, name: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) < 2:
        raise BadInputError(f"{name} has {len(vectors)} sample{'' if len(vectors) == 1 else 's'}: "
                            f"a shift test needs at least 2 in each set")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise BadInputError(f"{name} rows {bad[:5].tolist()}{' …' if bad.size > 5 else ''} hold NaN or inf: "
                            f"drop them (or the samples that failed to embed) first")
    return vectors


def compare_vectors(ref: np.ndarray, new: np.ndarray, *, method: str = "mmd", alpha: float = 0.05,
                 n_permutations: int = 500, random_state: int = 0) -> ShiftReport:
    """``detect_shift`` on vectors already checked (``embed_pair``)."""
    check_test_params(method, alpha, n_permutations)
    if ref.shape[1] != new.shape[1]:
        raise BadInputError(f"X_ref has {ref.shape[1]}-d vectors but X_new {new.shape[1]}-d: "
                            f"both must come from the same backbone")
    rng = np.random.default_rng(random_state)
    if method == "mmd":
        statistic, p_value, scores = _mmd_test(ref, new, n_permutations, rng)
    elif method == "classifier":
        statistic, p_value, scores = _classifier_test(ref, new, random_state)
    else:
        statistic, p_value, scores = _ks_test(ref, new)
    order = np.argsort(-scores, kind="stable")
    return ShiftReport(method=method, statistic=float(statistic), p_value=float(p_value),
                       shifted=bool(p_value < alpha), alpha=float(alpha), n_ref=len(ref), n_new=len(new),
                       most_shifted_=(order, scores[order]))


def gaussian_kernel(pooled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``exp(-||x - y||² / m)`` for every pair of rows, in float32 (the only n×n matrix built);
    ``m`` is the median squared distance between distinct rows of a sample of at most
    ``MEDIAN_SAMPLE`` rows."""
    Z = np.asarray(pooled, dtype=np.float32)
    sample = Z[rng.choice(len(Z), MEDIAN_SAMPLE, replace=False)] if len(Z) > MEDIAN_SAMPLE else Z
    distances = squared_distances(sample.astype(np.float64))
    median = float(np.median(distances[np.triu_indices(len(sample), k=1)])) or 1.0
    K = squared_distances(Z)  # becomes the kernel in place
    K *= -1 / median
    np.exp(K, out=K)
    return K


def squared_distances(Z: np.ndarray) -> np.ndarray:
    """``|z_i - z_j|²`` for every pair of rows, one matrix of Z's dtype built in place."""
    norms = np.einsum("ij,ij->i", Z, Z, dtype=np.float64).astype(Z.dtype)
    D = Z @ Z.T
    D *= -2
    D += norms[:, None]
    D += norms[None, :]
    return np.maximum(D, 0, out=D)


def mmd2(K: np.ndarray, in_ref: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each labelling in the columns of ``in_ref`` (pooled rows × labellings, 1 for
    a reference row); the kernel's diagonal is 1."""
    a = in_ref.astype(np.float32)
    b = 1 - a
    n, m = a.sum(axis=0), b.sum(axis=0)
    Ka = K @ a
    within_ref = ((a * Ka).sum(axis=0) - n) / (n * (n - 1))
    between = (b * Ka).sum(axis=0) / (n * m)
    within_new = ((b * (K @ b)).sum(axis=0) - m) / (m * (m - 1))
    return within_ref + within_new - 2 * between


def _mmd_test(ref, new, n_permutations: int, rng):
    K = gaussian_kernel(np.vstack([ref, new]), rng)
    n = len(ref)
    labels = np.zeros(len(K), dtype=bool)
    labels[:n] = True
    observed = float(mmd2(K, labels[:, None])[0])
    exceed = 0
    for start in range(0, n_permutations, PERMUTATION_BLOCK):
        block = min(PERMUTATION_BLOCK, n_permutations - start)
        permuted = np.stack([rng.permutation(labels) for _ in range(block)], axis=1)
        exceed += int((mmd2(K, permuted) >= observed).sum())
    scores = 1 - K[n:, :n].mean(axis=1, dtype=np.float64)  # 1 - mean kernel similarity to the reference
    return observed, (1 + exceed) / (1 + n_permutations), scores


def _classifier_test(ref, new, random_state: int):
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.vstack([ref, new])
    y = np.r_[np.zeros(len(ref)), np.ones(len(new))]
    folds = StratifiedKFold(min(5, len(ref), len(new)), shuffle=True, random_state=random_state)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=CLASSIFIER_C, max_iter=1000))
    scores = cross_val_predict(model, X, y, cv=folds, method="predict_proba")[:, 1]
    u, p_value = mannwhitneyu(scores[len(ref):], scores[:len(ref)], alternative="greater", method="asymptotic")
    return u / (len(ref) * len(new)), p_value, scores[len(ref):]


def _ks_test(ref, new):
    from scipy.stats import ks_2samp

    result = ks_2samp(ref, new, axis=0)
    p_value = min(1.0, float(np.min(result.pvalue)) * ref.shape[1])  # Bonferroni over the dimensions
    sorted_ref = np.sort(ref, axis=0)
    quantile = np.stack([np.searchsorted(sorted_ref[:, d], new[:, d]) for d in range(ref.shape[1])], axis=1) / len(ref)
    scores = np.abs(2 * quantile - 1).mean(axis=1)  # how far into the reference's tails, on average
    return float(np.max(result.statistic)), p_value, scores
