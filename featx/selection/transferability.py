"""Transferability scores: how well frozen features suit a labelled task, without training a head.

No single score ranks backbones right on every dataset, so a sweep reports several side by side,
with each score's rank correlation to the cross-validated accuracy.

- ``logme``   — LogME (You et al., 2021): log marginal evidence of a Bayesian linear model on the
  features, per sample, averaged over one-vs-rest targets.  Higher is better.  ``logme_regression``
  is its form for numeric targets (the evidence of the target itself), used by regression sweeps.
- ``h_score`` — H-score (Bao et al., 2019): ``tr(cov(f)^-1 cov(E[f|y]))``, class separation relative
  to feature spread, with a Ledoit-Wolf shrunk ``cov(f)`` (Ibrahim et al., 2022) so that wide features
  and few samples do not inflate it.  Higher is better.
- ``leep``    — LEEP (Nguyen et al., 2020) from source-class probabilities ``theta``; ``nleep`` builds
  ``theta`` from a Gaussian mixture on PCA-reduced features (N-LEEP, Li et al., 2021).
- ``nce``     — negative conditional entropy ``-H(y | z)`` of target labels given source labels ``z``
  (Tran et al., 2019); ``nce_clusters`` uses k-means clusters of the features as ``z``.
- ``sfda``    — SFDA (Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a
  Self-challenging Fisher Space", ECCV 2022): mean probability of the true class under a
  regularised Fisher discriminant, refitted after each sample is mixed towards the other classes
  in proportion to its confusion.  Higher is better.
- ``static``  — the baseline that needs no data: the backbone's parameter count, deeper views of
  one backbone first (``static_prior``).

Each score's agreement with cross-validation over a sweep's setups is measured by Spearman's ρ and
the weighted Kendall τ_w (hyperbolic weights, top ranks count most; You et al., 2021 use it for
LogME), ``rank_agreement``.

>>> import numpy as np
>>> F = np.array([[0., 0.], [0., 1.], [4., 0.], [4., 1.]]); y = np.array([0, 0, 1, 1])
>>> round(h_score(F, y, shrink=False), 6)
1.0
"""

from __future__ import annotations

import numpy as np


def _codes(y) -> tuple[np.ndarray, int]:
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    return codes, len(classes)


def logme(F: np.ndarray, y, *, tol: float = 1e-3, max_iter: int = 100) -> float:
    """LogME of features ``F`` (n, d) for labels ``y``: mean per-sample log evidence over classes."""
    codes, k = _codes(y)
    return _logme_evidence(F, [(codes == c).astype(np.float64) for c in range(k)], tol, max_iter)


def logme_regression(F: np.ndarray, y, *, tol: float = 1e-3, max_iter: int = 100) -> float:
    """LogME's regression form: the per-sample log evidence of the numeric target ``y`` itself
    (one column, or the mean over the columns of a 2-D ``y``), as You et al. (2021) define it for
    regression tasks.  Comparable between backbones on the same ``y`` (it depends on ``y``'s units).

    >>> rng = np.random.default_rng(0); F = rng.normal(size=(200, 4)); noise = rng.normal(size=(200, 4))
    >>> logme_regression(F, F @ [1.0, 2.0, 0.0, 0.0]) > logme_regression(noise, F @ [1.0, 2.0, 0.0, 0.0])
    True
    """
    Y = np.asarray(y, dtype=np.float64)
    return _logme_evidence(F, list(Y.reshape(len(Y), -1).T), tol, max_iter)


def _logme_evidence(F: np.ndarray, targets: list[np.ndarray], tol: float, max_iter: int) -> float:
    """Mean over ``targets`` of the per-sample log evidence of a Bayesian linear model on ``F``."""
    F = np.asarray(F, dtype=np.float64)
    n, d = F.shape
    u, s, _ = np.linalg.svd(F, full_matrices=False)
    sigma = s ** 2  # non-zero eigenvalues of F^T F (at most min(n, d)); the remaining d - len are zero
    evidences = []
    for target in targets:
        z2 = (u.T @ target) ** 2
        outside = max(float(target @ target - z2.sum()), 0.0)  # residual outside the span of F
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * z2 / (sigma + t) ** 2).sum())
            res2 = float((z2 * (t / (sigma + t)) ** 2).sum()) + outside
            new_alpha, new_beta = gamma / (m2 + 1e-12), (n - gamma) / (res2 + 1e-12)
            converged = abs(new_alpha / new_beta - t) / t < tol
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        t = alpha / beta
        m2 = float((sigma * z2 / (sigma + t) ** 2).sum())
        res2 = float((z2 * (t / (sigma + t)) ** 2).sum()) + outside
        log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * res2 - alpha / 2 * m2 - log_det / 2)
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def h_score(F: np.ndarray, y, *, shrink: bool = True) -> float:
    """H-score: ``tr(inv(cov(F)) @ cov(class-mean of F))``; ``shrink=False`` for the original (pinv)."""
    from sklearn.covariance import ledoit_wolf

    F = np.asarray(F, dtype=np.float64)
    codes, k = _codes(y)
    centred = F - F.mean(axis=0)
    cov_f = ledoit_wolf(centred, assume_centered=True)[0] if shrink else centred.T @ centred / len(F)
    means = np.stack([centred[codes == c].mean(axis=0) for c in range(k)])
    g = means[codes]  # each sample replaced by its class mean
    cov_g = g.T @ g / len(F)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def leep(theta: np.ndarray, y) -> float:
    """LEEP from source-class probabilities ``theta`` (n, z) and target labels ``y``."""
    theta = np.asarray(theta, dtype=np.float64)
    codes, k = _codes(y)
    joint = np.stack([theta[codes == c].sum(axis=0) for c in range(k)], axis=1) / len(theta)  # (z, k)
    conditional = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-12)  # P(y | z)
    expected = theta @ conditional  # (n, k)
    return float(np.mean(np.log(np.maximum(expected[np.arange(len(codes)), codes], 1e-12))))


def nce(z, y) -> float:
    """Negative conditional entropy ``-H(y | z)`` of labels ``y`` given source labels ``z``."""
    z_codes, nz = _codes(z)
    y_codes, ny = _codes(y)
    joint = np.zeros((nz, ny))
    np.add.at(joint, (z_codes, y_codes), 1.0)
    joint /= joint.sum()
    pz = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
    return float(terms.sum())


def _reduced(F: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    F = np.asarray(F, dtype=np.float64)
    components = min(64, F.shape[0] - 1, F.shape[1])
    return PCA(n_components=components, random_state=seed).fit_transform(F)


def nleep(F: np.ndarray, y, *, components: int | None = None, seed: int = 0) -> float:
    """N-LEEP: LEEP with ``theta`` = posterior of a diagonal Gaussian mixture on PCA-reduced features."""
    from sklearn.mixture import GaussianMixture

    _, k = _codes(y)
    reduced = _reduced(F, seed)
    gmm = GaussianMixture(n_components=components or 2 * k, covariance_type="diag", random_state=seed,
                          reg_covar=1e-4, max_iter=200).fit(reduced)
    return leep(gmm.predict_proba(reduced), y)


def nce_clusters(F: np.ndarray, y, *, clusters: int | None = None, seed: int = 0) -> float:
    """NCE with k-means clusters of the (PCA-reduced) features standing in for source labels."""
    from sklearn.cluster import KMeans

    _, k = _codes(y)
    z = KMeans(n_clusters=clusters or 2 * k, n_init=4, random_state=seed).fit_predict(_reduced(F, seed))
    return nce(z, y)


def sfda(F: np.ndarray, y) -> float:
    """SFDA (Shao et al., 2022): the true class's mean probability under a regularised Fisher
    discriminant, after the self-challenging mix ("ConfMix").

    The regularised Fisher discriminant is scikit-learn's shrunk LDA (eigen solver, Ledoit-Wolf
    shrinkage in place of the paper's rule from the between-class scatter).  Each sample ``x`` of
    class ``c`` is then moved to ``p·x + (1 - p)·mean(samples not in c)``, ``p`` its softened
    probability of ``c``, so that the confused samples become harder; the score is the mean
    probability of the true class under an LDA refitted on the mixed features.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); y = np.repeat([0, 1], 20)
    >>> apart, mixed = rng.normal(size=(40, 3)) + 3 * y[:, None], rng.normal(size=(40, 3))
    >>> sfda(apart, y) > sfda(mixed, y)
    True
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    F = np.asarray(F, dtype=np.float64)
    codes, k = _codes(y)
    rows = np.arange(len(codes))
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
    probability = lda.fit(F, codes).predict_proba(F)
    softened = np.exp(probability) / np.exp(probability).sum(axis=1, keepdims=True)  # as the authors do
    own = softened[rows, codes][:, None]
    others = np.stack([F[codes != c].mean(axis=0) for c in range(k)])
    mixed = own * F + (1 - own) * others[codes]
    return float(lda.fit(mixed, codes).predict_proba(mixed)[rows, codes].mean())


SCORES = {"logme": logme, "h_score": h_score, "nleep": nleep, "nce": nce_clusters, "sfda": sfda}
STATIC = "static"


def score_all(F: np.ndarray, y, seed: int = 0) -> dict[str, float]:
    """Every feature-only score, by name."""
    out = {}
    for name, fn in SCORES.items():
        out[name] = fn(F, y, seed=seed) if name in ("nleep", "nce") else fn(F, y)
    return out


# -- how well each score ranked the setups of a sweep -------------------------------------------
def setup_key(row: dict) -> tuple:
    """What tells a row's backbone/view setup apart: the backbone's name, its options (one model with
    two poolings is two setups) and the view."""
    import json

    return row["backbone"], json.dumps(row.get("backbone_options"), sort_keys=True, default=str), row["view"]


def best_per_setup(rows: list[dict]) -> list[dict]:
    """The best row (by CV accuracy) of each backbone/view setup, in first-seen order."""
    setups: dict[tuple, dict] = {}
    for r in rows:
        key = setup_key(r)
        if key not in setups or r["cv_accuracy"] > setups[key]["cv_accuracy"]:
            setups[key] = r
    return list(setups.values())


def correlation_gap(setups: list[dict], score: str) -> str | None:
    """Why the rank correlation of ``score`` with CV accuracy is undefined over ``setups`` (``None``: it is defined)."""
    values = [r.get(f"score_{score}") for r in setups]
    if len(setups) < 3:
        return f"needs at least 3 backbone/view setups to rank; this sweep has {len(setups)}"
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
        return "the score could not be computed for every setup"
    if len(set(values)) < 2:
        return "the score is the same for every setup"
    if len({r["cv_accuracy"] for r in setups}) < 2:
        return "every setup has the same best CV accuracy"
    return None


def static_prior(n_parameters: int, view: str, views: list[str]) -> float:
    """The no-data ranking: more parameters first; within one backbone, deeper views first.

    ``views`` lists the backbone's views shallow to deep (as featx's backbones order them); the
    concatenation ``"all"`` ranks as the deepest.

    >>> static_prior(5_000_000, "stage4", ["stage2", "stage4"]) > static_prior(5_000_000, "stage2", ["stage2", "stage4"])
    True
    """
    depth = len(views) if view == "all" or view not in views else views.index(view)
    return float(n_parameters) + depth / (len(views) + 1)


def parameter_count(backbone) -> int | None:
    """Parameters of a built-in timm or Hugging Face backbone, counted on the meta device (no weights
    are read); ``None`` for other backbones."""
    import torch

    from ..backbones.hf import HFBackbone
    from ..backbones.timm import TimmBackbone

    with torch.device("meta"):
        if isinstance(backbone, TimmBackbone):
            model = backbone._create()
        elif isinstance(backbone, HFBackbone):
            from transformers import AutoConfig, AutoModel

            model = AutoModel.from_config(AutoConfig.from_pretrained(backbone.model_dir))
        else:
            return None
    return int(sum(p.numel() for p in model.parameters()))


def weighted_tau(scores, truth) -> float:
    """Weighted Kendall τ_w of ``scores`` against ``truth`` (scipy's hyperbolic weights, averaged over
    ranking by either side), the LogME paper's measure of a score's ranking.

    >>> round(weighted_tau([3, 2, 1], [3, 1, 2]), 6)  # one swap below the top: 6/11
    0.545455
    """
    from scipy.stats import weightedtau

    return float(weightedtau(scores, truth).statistic)


def rank_agreement(rows: list[dict]) -> dict[str, dict]:
    """Each score's agreement with CV accuracy over the backbone/view setups of ``rows``.

    Per score: ``spearman`` (ρ), ``weighted_tau`` (τ_w), ``top1`` (the score's best setup is the CV
    best) and ``setups``; NaN/None where undefined, with ``gap`` saying why (``correlation_gap``).

    >>> rows = [{"backbone": "b", "view": v, "cv_accuracy": a, "score_s": s}
    ...         for v, a, s in [("x", 0.9, 3), ("y", 0.7, 1), ("z", 0.8, 2)]]
    >>> rank_agreement(rows)["s"]["spearman"], rank_agreement(rows)["s"]["top1"]
    (1.0, True)
    """
    from scipy.stats import spearmanr

    setups = best_per_setup(rows)
    names = sorted({k[6:] for r in setups for k in r if k.startswith("score_")})
    accuracy = [r["cv_accuracy"] for r in setups]
    out = {}
    for name in names:
        gap = correlation_gap(setups, name)
        entry = {"spearman": float("nan"), "weighted_tau": float("nan"), "top1": None, "setups": len(setups), "gap": gap}
        if gap is None:
            values = [r[f"score_{name}"] for r in setups]
            entry.update(spearman=float(spearmanr(values, accuracy).statistic), weighted_tau=weighted_tau(values, accuracy),
                         top1=accuracy[int(np.argmax(values))] == max(accuracy))
        out[name] = entry
    return out


def rank_correlations(rows: list[dict]) -> dict[str, float]:
    """Spearman correlation of each transferability score with the best CV accuracy per backbone/view.

    NaN where the correlation is undefined (``correlation_gap`` says why).
    """
    from scipy.stats import spearmanr

    setups = best_per_setup(rows)
    names = sorted({k[6:] for r in setups for k in r if k.startswith("score_")})
    return {name: float("nan") if correlation_gap(setups, name) else
            float(spearmanr([r[f"score_{name}"] for r in setups], [r["cv_accuracy"] for r in setups]).statistic)
            for name in names}
