"""The demo's two tasks with the logreg head, unweighted vs ``class_weight="balanced"``.

Same data, split, draws (5) and backbone settings as ``featx demo`` (featx/demo.py); prints
accuracy and macro-F1 per training size for both heads.  Embeddings come from the cache:

    FEATX_CACHE_DIR=/work/cache-shared python benchmarks/balanced_heads.py
"""

from __future__ import annotations

import os

from featx.demo import (Method, _embed_once, _pm, bbc_news, draw_training_sets, learning_curve, samples_used,
                        textile_defects)
from featx.heads import make_head


def main() -> None:
    cache_dir = os.environ.get("FEATX_CACHE_DIR")
    for task in (textile_defects(), bbc_news()):
        train_sets = draw_training_sets(task, draws=5)
        embedding = _embed_once(task, samples_used(task, train_sets), cache_dir=cache_dir)
        print(f"\n{task.name}: {len(task.test)} held out, 5 draws")
        print(f"{'size':>16s} | {'logreg acc':>13s} {'macro-F1':>13s} | {'balanced acc':>13s} {'macro-F1':>13s}")
        plain = learning_curve(task, Method("logreg", embedding.vectors, lambda: make_head("logreg")), train_sets)
        balanced = learning_curve(task, Method("balanced", embedding.vectors,
                                               lambda: make_head("logreg", class_weight="balanced")), train_sets)
        for p, b in zip(plain, balanced):
            print(f"{p.size:>11s} ({p.n_train:4d}) | {_pm(p.accuracy)} {_pm(p.macro_f1)} | "
                  f"{_pm(b.accuracy)} {_pm(b.macro_f1)}")


if __name__ == "__main__":
    main()
