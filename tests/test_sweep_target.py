"""Sweep with a target domain: per-row target accuracy and unsupervised score, bad inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.datasets import make_blobs

import featx
from featx.heads import make_head
from test_sweep import TableBackbone  # the sweep tests' table-lookup backbone


@pytest.fixture
def shifted():
    """120 source samples and 60 target samples (shifted by +1.5): ids into one table of 4-d vectors."""
    F, labels = make_blobs(n_samples=180, centers=3, n_features=4, cluster_std=1.5, random_state=0)
    F[120:] += 1.5
    ids = [f"s{i}" for i in range(180)]
    y = np.array(["a", "b", "c"])[labels]
    return ids[:120], y[:120], ids[120:], y[120:], TableBackbone(F, "test/blobs")


def test_target_accuracy_is_the_refitted_rows_accuracy_on_the_target(shifted, cache_dir, tmp_path):
    X, y, X_target, y_target, backbone = shifted
    result = featx.sweep(X, y, backbones=[backbone], heads=["logreg", "knn"], cv=3, cache_dir=cache_dir,
                         progress=False, transferability=False, X_target=X_target, y_target=y_target,
                         run_dir=tmp_path / "run", report=False)
    assert len(result.leaderboard) == 2
    Z, Z_target = backbone.table[:120], backbone.table[120:]
    for row in result.leaderboard:
        model = make_head(row["head"], **row["params"]).fit(Z, y)
        assert row["target_accuracy"] == pytest.approx(np.mean(model.predict(Z_target) == y_target))
        expected = -np.mean(entropy(model.predict_proba(Z_target), axis=1))
        assert row["target_score"] == pytest.approx(expected)
        assert -np.log(3) <= row["target_score"] <= 0
    assert [r["cv_accuracy"] for r in result.leaderboard] == sorted((r["cv_accuracy"] for r in result.leaderboard),
                                                                   reverse=True)  # ranking is still CV
    assert "target" in result.table() and "tgt score" in result.table()
    with open(tmp_path / "run" / "leaderboard.csv") as f:
        header = next(csv.reader(f))
    assert {"target_accuracy", "target_score"} <= set(header)
    saved = json.loads((tmp_path / "run" / "leaderboard.json").read_text())["leaderboard"]
    assert [r["target_accuracy"] for r in saved] == [r["target_accuracy"] for r in result.leaderboard]
    assert result.manifest["n_target"] == 60


def test_unlabelled_target_gives_the_score_only_and_the_cache_keeps_domains_apart(shifted, cache_dir):
    X, y, X_target, y_target, backbone = shifted
    kw = dict(backbones=[backbone], heads=["logreg"], cv=3, cache_dir=cache_dir, progress=False, transferability=False)
    unlabelled = featx.sweep(X, y, X_target=X_target, **kw).leaderboard[0]
    assert "target_accuracy" not in unlabelled and unlabelled["target_score"] < 0
    labelled = featx.sweep(X, y, X_target=X_target, y_target=y_target, **kw).leaderboard[0]  # CV now cached
    assert labelled["cv_from_cache"] and 0 <= labelled["target_accuracy"] <= 1
    home = featx.sweep(X, y, X_target=X[:30], y_target=y[:30], **kw).leaderboard[0]
    assert home["target_score"] != labelled["target_score"]  # a cached outcome of another target is not reused


def test_target_columns_absent_without_x_target(shifted, cache_dir, tmp_path):
    X, y, _, _, backbone = shifted
    result = featx.sweep(X, y, backbones=[backbone], heads=["logreg"], cv=3, cache_dir=cache_dir, progress=False,
                         transferability=False, run_dir=tmp_path / "run", report=False)
    assert not any(k.startswith("target_") for k in result.leaderboard[0])
    assert "target" not in result.table() and "n_target" not in result.manifest
    with open(tmp_path / "run" / "leaderboard.csv") as f:
        assert not any(c.startswith("target_") for c in next(csv.reader(f)))


@pytest.mark.parametrize("kwargs, message", [
    ({"y_target": ["a", "b"]}, "y_target was given without X_target"),
    ({"X_target": []}, "X_target is empty"),
    ({"X_target": np.zeros((3, 8, 8, 3), np.uint8)}, "X_target holds images but X holds texts"),
    ({"X_target": ["s120", "s121", "s122"], "y_target": ["a", "b"]}, "len(y_target) = 2"),
    ({"X_target": "s120"}, "X_target: X must be a sequence"),
])
def test_bad_target_inputs_fail_before_embedding(shifted, cache_dir, kwargs, message):
    X, y, _, _, backbone = shifted
    with pytest.raises(featx.BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        featx.sweep(X, y, backbones=[backbone], heads=["logreg"], cv=3, cache_dir=cache_dir, progress=False, **kwargs)
    assert backbone.embedded == 0
