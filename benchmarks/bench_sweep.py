"""Sweep on real data, twice, in a fresh cache: the chosen setup vs a raw baseline, and the speed-up.

    .venv/bin/python benchmarks/bench_sweep.py

Textile defects (EfficientNet-Lite0 ImageNet features at 128 px; raw 32x32 pixels as the baseline)
and BBC News with 8 labelled articles per topic (MiniLM; TF-IDF as the baseline).  The second sweep
finds every embedding, CV result and transferability score in the cache.  Writes results/sweep.json.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

import featx
from featx.demo import _pixel_baseline, _tfidf_baseline, bbc_data, textile_data

HEADS = ["logreg", "svm", "knn"]


def run_twice(X, y, X_test, y_test, backbones, cache_dir, run_dir):
    times, results = [], []
    for attempt in (1, 2):
        start = time.perf_counter()
        results.append(featx.sweep(X, y, backbones=backbones, heads=HEADS, X_test=X_test, y_test=y_test, cv=3,
                                   cache_dir=cache_dir, run_dir=f"{run_dir}-{attempt}", progress=False))
        times.append(time.perf_counter() - start)
    return results, times


def main() -> None:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        paths, labels = textile_data(quick=False)
        Xi, Xi_test, yi, yi_test = train_test_split(paths, labels, test_size=0.3, stratify=labels, random_state=0)
        (Xt, yt), (Xt_test, yt_test) = bbc_data(quick=False)
        tasks = {
            "textile": (Xi, yi, Xi_test, yi_test, [("timm/tf_efficientnet_lite0", {"image_size": 128})],
                        _pixel_baseline(Xi, yi, Xi_test, yi_test)),
            "bbc-8shot": (Xt, yt, Xt_test, yt_test, [("hf/all-MiniLM-L6-v2", {"max_length": 256})],
                          _tfidf_baseline(Xt, yt, Xt_test, yt_test)),
        }
        total_first = total_second = 0.0
        for task, (X, y, X_test, y_test, backbones, baseline) in tasks.items():
            (first, second), (t1, t2) = run_twice(X, y, X_test, y_test, backbones, cache, Path(tmp) / task)
            best = first.leaderboard[0]
            total_first, total_second = total_first + t1, total_second + t2
            out[task] = {"chosen": f"{best['backbone']} [{best['view']}] + {best['head']} {best['params']}",
                         "chosen_test_accuracy": best["test_accuracy"], "baseline": baseline.method,
                         "baseline_test_accuracy": baseline.accuracy, "first_s": t1, "second_s": t2,
                         "speedup": t1 / t2, "correlations": first.correlations}
            assert second.leaderboard[0]["embedded"] == 0
            print(f"{task:10s} chosen {out[task]['chosen']}: test acc {best['test_accuracy']:.3f} vs "
                  f"{baseline.method} {baseline.accuracy:.3f}; sweep {t1:.1f}s then {t2:.2f}s ({t1 / t2:.0f}x)")
    out["total"] = {"first_s": total_first, "second_s": total_second, "speedup": total_first / total_second}
    print(f"whole sweep: first run {total_first:.1f}s, second run {total_second:.2f}s -> "
          f"{total_first / total_second:.0f}x faster (target >= 20x)")
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    (Path(__file__).with_name("results") / "sweep.json").write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
