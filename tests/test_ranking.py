"""Model selection: rank agreement (Spearman ρ, weighted Kendall τ_w), rank_by= and the budgeted cv_top_k=."""

from __future__ import annotations

import numpy as np
import pytest

import featx
import featx.selection.sweep as sweep_module
from featx.cli import main
from featx.errors import BadInputError
from featx.selection.transferability import parameter_count, rank_agreement, static_prior, weighted_tau
from test_sweep import TableBackbone


def setups(accuracies, scores):
    return [{"backbone": f"b{i}", "view": "all", "cv_accuracy": a, "score_s": s}
            for i, (a, s) in enumerate(zip(accuracies, scores))]


def test_weighted_tau_against_hand_computed_cases():
    # hyperbolic weights 1/(r+1): pairs (top, 2nd) weigh 1.5, (top, 3rd) 4/3, (2nd, 3rd) 5/6;
    # only the last pair is swapped: (1.5 + 4/3 - 5/6) / (1.5 + 4/3 + 5/6) = 6/11, from either side
    assert weighted_tau([3, 2, 1], [3, 1, 2]) == pytest.approx(6 / 11)
    # the swap at the top costs more: (-1.5 + 4/3 + 5/6) / (11/3) = 2/11
    assert weighted_tau([3, 2, 1], [2, 3, 1]) == pytest.approx(2 / 11)
    assert weighted_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert weighted_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)


def test_rank_agreement_reports_rho_tau_and_top1():
    agreement = rank_agreement(setups([0.9, 0.8, 0.7], [3, 1, 2]))["s"]
    assert agreement["spearman"] == pytest.approx(0.5)  # 1 - 6 * (0 + 1 + 1) / (3 * 8)
    assert agreement["weighted_tau"] == pytest.approx(6 / 11)
    assert agreement["top1"] is True and agreement["setups"] == 3 and agreement["gap"] is None
    flipped = rank_agreement(setups([0.9, 0.8, 0.7], [1, 2, 3]))["s"]
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["top1"] is False
    two = rank_agreement(setups([0.9, 0.8], [1, 2]))["s"]
    assert np.isnan(two["weighted_tau"]) and "at least 3" in two["gap"]


def test_static_prior_orders_by_size_then_depth():
    views = ["stage2", "stage3", "stage4"]
    order = sorted([(1000, "stage2"), (2000, "stage2"), (1000, "all"), (1000, "stage4")],
                   key=lambda t: -static_prior(t[0], t[1], views))
    assert order == [(2000, "stage2"), (1000, "all"), (1000, "stage4"), (1000, "stage2")]


def test_parameter_count_needs_no_weights():
    assert parameter_count(featx.create_backbone("timm/resnet18")) == 11_176_512  # classifier excluded
    assert parameter_count(TableBackbone(np.zeros((2, 2)))) is None


def signal_backbones(n=60, count=4, seed=0):
    """Backbones whose features carry less and less of the label: the CV order is known."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["a", "b", "c"], n // 3)
    onehot = (y[:, None] == np.array(["a", "b", "c"])).astype(float)
    backbones = [TableBackbone(onehot * (2.0 - 0.45 * i) + rng.standard_normal((n, 3)), f"test/signal{i}")
                 for i in range(count)]
    return [f"s{i}" for i in range(n)], y, backbones


def count_cv_calls(monkeypatch) -> list:
    calls = []
    real = sweep_module._grid_search

    def counted(head, Z, *args, **kwargs):
        calls.append(Z.shape)
        return real(head, Z, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "_grid_search", counted)
    return calls


def test_budgeted_sweep_cross_validates_at_most_k_setups(monkeypatch, cache_dir):
    X, y, backbones = signal_backbones()
    calls = count_cv_calls(monkeypatch)
    cheap = featx.sweep(X, y, backbones=backbones, heads=["logreg"], cv=3, cache_dir=cache_dir, progress=False,
                        rank_by="logme", cv_top_k=2)
    assert len(calls) == 2 and len(cheap.leaderboard) == 2 and len(cheap.scored_only) == 2
    logme_order = sorted(cheap.leaderboard + cheap.scored_only, key=lambda r: -r["score_logme"])
    assert {r["backbone"] for r in cheap.leaderboard} == {r["backbone"] for r in logme_order[:2]}
    assert cheap.selection["cross_validated"] == 2 and cheap.selection["setups"] == 4
    assert cheap.selection["exhaustive_pick"] is None and cheap.selection["same_pick"] is None  # not known yet
    assert "not cross-validated (outside the top 2 by logme)" in cheap.table()

    full = featx.sweep(X, y, backbones=backbones, heads=["logreg"], cv=3, cache_dir=cache_dir, progress=False)
    assert len(calls) == 2 + 2  # the 2 already cross-validated come from the cache
    assert full.selection["same_pick"] is True and full.selection["cross_validated"] == 4
    again = featx.sweep(X, y, backbones=backbones, heads=["logreg"], cv=3, cache_dir=cache_dir, progress=False,
                        rank_by="logme", cv_top_k=2)
    assert len(calls) == 4  # everything cached: and now the exhaustive pick is known
    best = full.leaderboard[0]
    assert again.selection["exhaustive_pick"]["backbone"] == best["backbone"]
    assert again.selection["same_pick"] == (again.leaderboard[0]["backbone"] == best["backbone"])
    assert set(full.agreement) == {"logme", "h_score", "nleep", "nce", "sfda"}
    assert all(-1 <= a["weighted_tau"] <= 1 and -1 <= a["spearman"] <= 1 for a in full.agreement.values())


def test_rank_by_a_score_orders_the_setups_by_it(cache_dir):
    X, y, backbones = signal_backbones(count=3)
    result = featx.sweep(X, y, backbones=backbones[::-1], heads=["logreg"], cv=3, cache_dir=cache_dir,
                         progress=False, rank_by="h_score")
    scores = [r["score_h_score"] for r in result.leaderboard]
    assert scores == sorted(scores, reverse=True) and result.manifest["rank_by"] == "h_score"
    assert result.selection["pick"]["backbone"] == result.leaderboard[0]["backbone"]
    cv_best = max(result.leaderboard, key=lambda r: r["cv_accuracy"])["backbone"]
    assert result.selection["same_pick"] == (result.leaderboard[0]["backbone"] == cv_best)


@pytest.mark.parametrize("options, words", [
    ({"rank_by": "accuracy"}, ["rank_by='accuracy'", "'logme'", "'static'"]),
    ({"cv_top_k": 0, "rank_by": "logme"}, ["cv_top_k=0", "at least 1"]),
    ({"cv_top_k": True, "rank_by": "logme"}, ["cv_top_k=True"]),
    ({"cv_top_k": 2.5, "rank_by": "logme"}, ["cv_top_k=2.5"]),
    ({"cv_top_k": 2}, ["cv_top_k=2", "rank_by='logme'"]),
    ({"rank_by": "logme", "transferability": False}, ["rank_by='logme'", "transferability=False"]),
])
def test_bad_ranking_options_fail_before_embedding(cache_dir, options, words):
    X, y, backbones = signal_backbones(count=1)
    with pytest.raises(BadInputError) as error:
        featx.sweep(X, y, backbones=backbones, heads=["logreg"], cache_dir=cache_dir, progress=False, **options)
    assert all(w in str(error.value) for w in words), str(error.value)
    assert backbones[0].embedded == 0


def test_cli_cv_top_k_without_rank_by_is_a_usage_error(capsys, tmp_path):
    code = main(["sweep", str(tmp_path), "-b", "timm/resnet18", "--cv-top-k", "2", "--run-dir", str(tmp_path / "r")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("featx: error:") == 1 and "--cv-top-k 2 needs" in err and "--rank-by logme" in err
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(tmp_path), "-b", "timm/resnet18", "--rank-by", "accuracy", "--run-dir", str(tmp_path / "r")])
    assert exit_.value.code == 2 and "--rank-by" in capsys.readouterr().err
