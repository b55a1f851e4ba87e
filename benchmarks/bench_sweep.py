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

import featx
from featx.demo import Task, bbc_news, draw_training_sets, textile_defects

HEADS = ["logreg", "svm", "knn"]


def run_twice(X, y, X_test, y_test, backbones, cache_dir, run_dir):
    times, results = [], []
    for attempt in (1, 2):
        start = time.perf_counter()
        results.append(featx.sweep(X, y, backbones=backbones, heads=HEADS, X_test=X_test, y_test=y_test, cv=3,
                                   cache_dir=cache_dir, run_dir=f"{run_dir}-{attempt}", progress=False))
        times.append(time.perf_counter() - start)
    return results, times


def split(task: Task, size: int = -1):
    """The demo's held-out set and its largest training draw (size index ``size``), with the
    baseline's test accuracy on them."""
    train = draw_training_sets(task, draws=1)[size][0]
    X, y = [task.items[i] for i in train], task.labels[train]
    X_test, y_test = [task.items[i] for i in task.test], task.labels[task.test]
    baseline = task.baseline(task.items)
    model = baseline.model().fit(baseline.features[train], y)
    accuracy = float(np.mean(model.predict(baseline.features[task.test]) == y_test))
    return X, y, X_test, y_test, [(task.backbone, task.backbone_options)], (baseline.name, accuracy)


def main() -> None:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        tasks = {"textile": split(textile_defects()), "bbc-8shot": split(bbc_news(), size=3)}
        total_first = total_second = 0.0
        for task, (X, y, X_test, y_test, backbones, baseline) in tasks.items():
            (first, second), (t1, t2) = run_twice(X, y, X_test, y_test, backbones, cache, Path(tmp) / task)
            best = first.leaderboard[0]
            total_first, total_second = total_first + t1, total_second + t2
            out[task] = {"chosen": f"{best['backbone']} [{best['view']}] + {best['head']} {best['params']}",
                         "chosen_test_accuracy": best["test_accuracy"], "baseline": baseline[0],
                         "baseline_test_accuracy": baseline[1], "first_s": t1, "second_s": t2,
                         "speedup": t1 / t2, "correlations": first.correlations}
            assert second.leaderboard[0]["embedded"] == 0
            print(f"{task:10s} chosen {out[task]['chosen']}: test acc {best['test_accuracy']:.3f} vs "
                  f"{baseline[0]} {baseline[1]:.3f}; sweep {t1:.1f}s then {t2:.2f}s ({t1 / t2:.0f}x)")
    out["total"] = {"first_s": total_first, "second_s": total_second, "speedup": total_first / total_second}
    print(f"whole sweep: first run {total_first:.1f}s, second run {total_second:.2f}s -> "
          f"{total_first / total_second:.0f}x faster (target >= 20x)")
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    (Path(__file__).with_name("results") / "sweep.json").write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
