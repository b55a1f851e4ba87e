"""Transferability scores against hand-computed cases and a plain reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from featx.selection.transferability import h_score, leep, logme, nce, nce_clusters, nleep


def test_h_score_by_hand():
    # cov(F) = diag(4, 1/4); class means (centred) are (-2, 0) and (2, 0): cov = diag(4, 0); trace = 4/4
    F = np.array([[0.0, 0.0], [0.0, 1.0], [4.0, 0.0], [4.0, 1.0]])
    assert h_score(F, [0, 0, 1, 1], shrink=False) == pytest.approx(1.0)
    # labels unrelated to the informative axis: class means (0, ±1/2) -> cov diag(0, 1/4) -> trace 1
    assert h_score(F, [0, 1, 0, 1], shrink=False) == pytest.approx(1.0)
    # swapping labels inside classes changes nothing; mixing classes lowers the score
    assert h_score(F, [0, 1, 1, 0], shrink=False) == pytest.approx(0.0)


def test_shrunk_h_score_prefers_signal_over_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    noise = rng.standard_normal((300, 200))
    signal = noise.copy()
    signal[:, 0] += 3 * y
    assert h_score(signal, y) > 2 * h_score(noise, y)


def reference_logme(F, y, iterations=200):
    """LogME written directly from the paper's formulas, with explicit matrices."""
    n, d = F.shape
    values = []
    for c in np.unique(y):
        t = (y == c).astype(float)
        alpha, beta = 1.0, 1.0
        sigma = np.linalg.eigvalsh(F.T @ F)
        for _ in range(iterations):
            A = alpha * np.eye(d) + beta * F.T @ F
            m = beta * np.linalg.solve(A, F.T @ t)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((F @ m - t) ** 2)
        A = alpha * np.eye(d) + beta * F.T @ F
        m = beta * np.linalg.solve(A, F.T @ t)
        evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * np.sum((F @ m - t) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(A)[1] / 2)
        values.append(evidence / n)
    return np.mean(values)


@pytest.mark.parametrize("n, d", [(12, 3), (8, 20)])
def test_logme_matches_the_reference(n, d):
    rng = np.random.default_rng(n + d)
    F = rng.standard_normal((n, d))
    y = np.arange(n) % 3
    F[:, 0] += y
    assert logme(F, y, tol=1e-10, max_iter=500) == pytest.approx(reference_logme(F, y), rel=1e-5, abs=1e-6)


def test_logme_ranks_informative_features_higher():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    noise = rng.standard_normal((200, 16))
    informative = noise.copy()
    informative[:, :4] += 2.0 * y[:, None]
    assert logme(informative, y) > logme(noise, y)


def test_leep_by_hand():
    y = np.array([0, 1, 0, 1])
    assert leep(np.eye(2)[y], y) == pytest.approx(0.0)  # source classes identify the targets
    assert leep(np.full((4, 2), 0.5), y) == pytest.approx(np.log(0.5))  # no information: log prior
    # theta: z0 mostly class 0; joint P(z, y) = [[.35, .15], [.15, .35]] / 1 -> P(y|z) = [[.7,.3],[.3,.7]]
    theta = np.array([[0.7, 0.3], [0.3, 0.7], [0.7, 0.3], [0.3, 0.7]])
    expected = 0.7 * 0.7 + 0.3 * 0.3  # P(correct y | x) for every sample
    assert leep(theta, y) == pytest.approx(np.log(expected))


def test_nce_by_hand():
    y = [0, 1, 0, 1]
    assert nce(y, y) == pytest.approx(0.0)
    assert nce([5, 5, 5, 5], y) == pytest.approx(np.log(0.5))
    assert nce(["a", "a", "b", "b"], y) == pytest.approx(np.log(0.5))  # z independent of y


def test_feature_based_leep_and_nce_see_cluster_structure():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 40)
    clustered = rng.standard_normal((120, 8)) * 0.2 + np.eye(8)[y] * 4
    mixed = rng.standard_normal((120, 8))
    assert nleep(clustered, y) > nleep(mixed, y)
    assert nce_clusters(clustered, y) > nce_clusters(mixed, y)
    assert nce_clusters(clustered, y) == pytest.approx(0.0, abs=1e-9)
