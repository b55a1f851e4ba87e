"""Run folders and their reports: leaderboard CSV/JSON, manifest, best model, PNG plots, HTML page.

``write_run`` saves a sweep's results before it renders anything, so a report that cannot be drawn
never costs the results; ``render_report(run_dir)`` (``featx report RUN_DIR``) rebuilds the plots
and ``report.html`` from the saved files.  The page is self-contained: inline CSS, images next to
it, no scripts, opens offline.

>>> print(reproduce_command({"backbones": [{"name": "hf/all-MiniLM-L6-v2"}], "heads": ["logreg"], "cv": 5},
...                         {"data": "news.csv", "text_column": "body", "label_column": "label",
...                          "test_size": 0.3, "seed": 0, "options": {}}, "runs/news"))
featx sweep news.csv --text-column body -b hf/all-MiniLM-L6-v2 --head logreg --cv 5 --test-size 0.3 \\
    --seed 0 --run-dir runs/news
"""

from __future__ import annotations

import ast
import csv
import html
import io
import json
import math
import shlex
import warnings
from pathlib import Path

from ..errors import FeatxWarning

PLOTS = ("accuracy.png", "confusion.png", "cost.png", "transferability.png")


def _write_atomic(path: Path, text: str) -> None:
    """``text`` as UTF-8 through ``featx._fs.atomic_write``: never half a file under ``path``."""
    from .._fs import atomic_write

    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _json(value) -> str:
    return json.dumps(value, indent=2, default=_plain)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_run(result, run_dir, render: bool = True) -> tuple[Path, Path | None]:
    """Save a ``SweepResult`` to ``run_dir``, then render its report.

    Files, in this order: ``source.json`` (when the result has a source), ``leaderboard.csv``,
    ``leaderboard.json``, ``manifest.json``, ``best.featx``; then the plots and ``report.html``.
    A best model that cannot be saved or a report that cannot be rendered is a warning naming the
    cause: the results already written stay.

    Parameters
    ----------
    result : SweepResult
        What ``featx.sweep`` returned.
    run_dir : path
        The run folder (created if missing).
    render : bool
        Render the report after saving the results.

    Returns
    -------
    tuple
        ``(run_dir, report)``: the folder and ``report.html`` (``None`` when it was not rendered).
    """
    from ..persist import save

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if result.source is not None:
        _write_atomic(run_dir / "source.json", _json(result.source))
    rows = result.leaderboard
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: json.dumps(v, default=_plain) if isinstance(v, dict) else v for k, v in r.items()} for r in rows)
    _write_atomic(run_dir / "leaderboard.csv", table.getvalue())
    payload = {"leaderboard": rows, "correlations": result.correlations, "evaluation": result.evaluation,
               "agreement": result.agreement, "selection": result.selection, "scored_only": result.scored_only}
    _write_atomic(run_dir / "leaderboard.json", _json(payload))
    _write_atomic(run_dir / "manifest.json", _json(result.manifest))
    try:
        save(result.best_, run_dir / "best.featx")
    except Exception as exc:  # noqa: BLE001 -- the leaderboard is saved; the caller still holds best_
        warnings.warn(f"the sweep's results are saved in {str(run_dir)!r}, but its best model could not be saved "
                      f"({type(exc).__name__}: {exc}); result.best_ holds it", FeatxWarning, stacklevel=3)
    if not render:
        return run_dir, None
    try:
        return run_dir, render_report(run_dir)
    except Exception as exc:  # noqa: BLE001 -- whatever breaks the drawing, the results are on disk
        fix = f"install {exc.name} (pip install {exc.name}), then" if isinstance(exc, ImportError) and exc.name else \
            "once that is fixed,"
        warnings.warn(f"the sweep's results are saved in {str(run_dir)!r} (leaderboard, manifest, best.featx), but "
                      f"its report could not be rendered ({type(exc).__name__}: {exc}); {fix} render it with "
                      f"`featx report {run_dir}`", FeatxWarning, stacklevel=3)
        return run_dir, None


def render_report(run_dir) -> Path:
    """Draw the PNGs and write ``report.html`` from the run folder's saved files.

    Parameters
    ----------
    run_dir : path
        A folder written by ``featx.sweep(..., run_dir=...)`` or ``featx sweep``.

    Returns
    -------
    Path
        The written ``report.html``.
    """
    from ..errors import BadInputError

    run_dir = Path(run_dir)
    try:
        payload = json.loads((run_dir / "leaderboard.json").read_text())
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{str(run_dir)!r} is not a sweep run folder ({exc}); run `featx sweep … --run-dir` first") from None
    source_file = run_dir / "source.json"
    source = json.loads(source_file.read_text()) if source_file.exists() else None
    rows = payload["leaderboard"]
    evaluation = payload.get("evaluation") or payload.get("confusion") or {}  # "confusion": runs before 0.2
    correlations = payload.get("correlations") or {}
    _plots(run_dir, rows, evaluation, manifest, correlations)
    page = _page(rows, correlations, evaluation, manifest, source, run_dir)
    page = page.replace("<!--selection-->", _selection(payload.get("selection") or {}, payload.get("scored_only") or []))
    _write_atomic(run_dir / "report.html", page)
    return run_dir / "report.html"


def _setup(r: dict) -> str:
    return r["backbone"] + ("" if r["view"] == "all" else f" [{r['view']}]")


def _label(r: dict) -> str:
    return f"{_setup(r)} + {r['head']}"


def _zoomed_limits(values: list[float]) -> tuple[float, float]:
    """An accuracy axis around the data (within [0, 1]) with a margin, so close rows stay apart."""
    low, high = min(values), max(values)
    margin = max(0.02, 0.1 * (high - low))
    return max(0.0, low - margin), min(1.0, high + margin) + 0.005


def _plots(run_dir: Path, rows: list[dict], evaluation: dict, manifest: dict, correlations: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _accuracy_plot(plt, run_dir / "accuracy.png", rows)
    _confusion_plot(plt, run_dir / "confusion.png", evaluation, manifest.get("best") or {})
    _cost_plot(plt, run_dir / "cost.png", rows)
    _transferability_plot(plt, run_dir / "transferability.png", rows, correlations)


def _accuracy_plot(plt, path: Path, rows: list[dict]) -> None:
    """CV accuracy ± std (and test accuracy) per row, best at the top, on an axis zoomed to the data."""
    ordered = rows[::-1]
    positions = range(len(ordered))
    cv = [r["cv_accuracy"] for r in ordered]
    std = [r["cv_accuracy_std"] for r in ordered]
    tests = [r.get("test_accuracy") for r in ordered]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    ax.errorbar(cv, positions, xerr=std, fmt="o", color="#4c78a8", ecolor="#9ab5d6", capsize=3, label="CV accuracy ± std")
    if any(t is not None for t in tests):
        ax.scatter([t if t is not None else float("nan") for t in tests], positions, marker="D", color="#e45756",
                   zorder=3, label="test accuracy")
    ax.set_yticks(list(positions), [_label(r) + (" (random init)" if r.get("random_init") else "") for r in ordered],
                  fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), ordered):
        if r.get("random_init"):
            tick.set_color("#b8291e")
    ax.set_xlim(*_zoomed_limits([c - s for c, s in zip(cv, std)] + [c + s for c, s in zip(cv, std)]
                                + [t for t in tests if t is not None]))
    ax.grid(axis="x", color="#e5e5e5")
    ax.set_xlabel("accuracy (axis zoomed to the data)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)  # above, not on the data
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _confusion_plot(plt, path: Path, evaluation: dict, best: dict) -> None:
    """Row-normalised confusion matrix with a colour bar; each cell shows its share and its count."""
    import numpy as np

    if not evaluation.get("matrix"):
        fig, ax = plt.subplots(figsize=(4.5, 2))
        ax.text(0.5, 0.5, "no evaluation recorded for this run", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    counts = np.asarray(evaluation["matrix"], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labels = evaluation["labels"]
    size = max(4.8, 0.55 * len(labels) + 3)
    fontsize = 9 if len(labels) <= 8 else 6
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of the true class")
    ticks = list(range(len(labels)))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    for i in ticks:
        for j in ticks:
            colour = "white" if shares[i, j] > 0.5 else "#1a1a1a"  # dark cells get light text
            ax.text(j, i, f"{shares[i, j]:.0%}\n({int(counts[i, j])})", ha="center", va="center",
                    fontsize=fontsize, color=colour)
    setup = f"{best.get('backbone', '')} + {best.get('head', '')}".strip(" +")
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"{setup}\n{evaluation['split']} split, rows sum to 100 %", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cost_plot(plt, path: Path, rows: list[dict]) -> None:
    from .transferability import best_per_setup

    colours = {(r["backbone"], r["view"]): f"C{i % 10}" for i, r in enumerate(best_per_setup(rows))}  # as in transferability.png
    seconds = [max(r["extract_seconds"], 1e-3) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r, x in zip(rows, seconds):
        ax.scatter(x, r["cv_accuracy"], s=30, color=colours[r["backbone"], r["view"]],
                   marker="x" if r.get("random_init") else "o")
        ax.annotate(f"{r['backbone'].split('/')[-1]}/{r['head']}", (x, r["cv_accuracy"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    log = max(seconds) / min(seconds) >= 10  # a log axis only when the times span a decade or more
    ax.set(xscale="log" if log else "linear", xlabel="extraction time of this run, s" + (" (log)" if log else ""),
           ylabel="CV accuracy", title="accuracy vs extraction cost (x: random init)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _transferability_plot(plt, path: Path, rows: list[dict], correlations: dict) -> None:
    """Each score against the best CV accuracy of every backbone/view setup (one colour per setup)."""
    from .transferability import best_per_setup

    setups = best_per_setup(rows)
    scores = sorted({k[6:] for r in rows for k in r if k.startswith("score_")})
    fig, axes = plt.subplots(1, max(len(scores), 1), figsize=(3.2 * max(len(scores), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], scores):
        for i, r in enumerate(setups):
            if r.get(f"score_{name}") is not None:  # a backbone featx cannot size has no static score
                ax.scatter(r[f"score_{name}"], r["cv_accuracy"], s=30, color=f"C{i % 10}", label=_setup(r))
        rho = correlations.get(name)
        ax.set_title("ρ undefined" if rho is None or math.isnan(rho) else f"Spearman ρ = {rho:.2f}", fontsize=9)
        ax.set(xlabel=name, ylabel="best CV accuracy")
    if scores:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 * ((len(labels) + 3) // 4) + 0.04, 1, 1))
    else:
        axes[0][0].text(0.5, 0.5, "no transferability scores", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _options_text(options: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (options or {}).items())


def _cli_value(value) -> str:
    """An option value as the CLI's ``-o key=value`` reads it back (a Python literal, or a plain word)."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return repr(value).replace(" ", "")


def reproduce_command(manifest: dict, source: dict, run_dir) -> str:
    """The ``featx sweep`` command that repeats a CLI run, from its ``source.json`` and manifest.

    Parameters
    ----------
    manifest : dict
        The run's ``manifest.json``.
    source : dict
        The run's ``source.json`` (``data``, ``text_column``, ``label_column``, ``test_size``, ``seed``, ``options``).
    run_dir : path
        The run folder the command writes to.

    Returns
    -------
    str
        A shell command (arguments quoted), wrapped over lines with ``\\``.
    """
    from ..heads import HEADS

    parts = [("featx", "sweep", source["data"])]  # a flag and its value stay on one line
    for flag, key, default in (("--text-column", "text_column", "text"), ("--label-column", "label_column", "label")):
        if source.get(key, default) != default:
            parts.append((flag, source[key]))
    names = [b["name"] for b in manifest["backbones"]]
    parts += [("-b", name) for name in names]
    parts += [("-o", f"{name}:{key}={_cli_value(value)}")
              for name in names for key, value in ((source.get("options") or {}).get(name) or {}).items()]
    parts += [("--head", head) for head in manifest["heads"] if head in HEADS]
    parts += [("--errors", "skip")] * (source.get("errors") == "skip")
    parts += [("--cv", str(_requested_cv(manifest))), ("--test-size", str(source.get("test_size") or 0)),
              ("--seed", str(source.get("seed", manifest.get("seed", 0)))), ("--run-dir", str(run_dir))]
    custom = [head for head in manifest["heads"] if head not in HEADS]
    note = f"# heads given in Python ({', '.join(custom)}) have no command-line form; this sweeps the others"
    lines = [note] * bool(custom) + [""]
    for part in (" ".join(shlex.quote(w) for w in words) for words in parts):
        if lines[-1].strip() and len(lines[-1]) + len(part) + 1 > 100:
            lines[-1] += " \\"
            lines.append("    " + part)
        else:
            lines[-1] = f"{lines[-1]} {part}" if lines[-1] else part
    return "\n".join(lines)


def _requested_cv(manifest: dict) -> int:
    return manifest.get("cv", manifest.get("cv_folds"))  # "cv": the folds asked for (runs before 0.2 lack it)


def reproduce_snippet(manifest: dict, run_dir) -> str:
    """The ``featx.sweep(...)`` call that repeats an API run (no ``source.json``: the data is the caller's)."""
    backbones = [(b["name"], b["requested_options"]) if b.get("requested_options") else b["name"]
                 for b in manifest["backbones"]]
    n_samples = manifest["n_train"] + (manifest["n_test"] if manifest.get("test_size") else 0)
    if manifest.get("test_size"):
        split = f"test_size={manifest['test_size']!r}, "
    elif manifest.get("n_test"):
        split = "X_test=X_test, y_test=y_test, "
    else:
        split = ""
    extras = "".join(f", {key}={manifest[key]!r}" for key, default in (("grids", None), ("views", True),
                                                                        ("transferability", True), ("errors", "raise"))
                     if key in manifest and manifest[key] != default)
    return (f"import featx\n\n"
            f"# X, y: the same {n_samples} samples and labels (training data fingerprint {manifest.get('data_fingerprint')})\n"
            f"result = featx.sweep(X, y, backbones={backbones!r},\n"
            f"                     heads={manifest['heads']!r}, {split}cv={_requested_cv(manifest)!r},\n"
            f"                     seed={manifest.get('seed', 0)!r}{extras}, run_dir={str(run_dir)!r})")


def _use_best(best: dict, manifest: dict, source: dict | None, run_dir: Path) -> str:
    """How to predict with ``best.featx`` (CLI and Python) and how to fine-tune from it."""
    modality = next((b.get("modality") for b in manifest.get("backbones", []) if b["name"] == best["backbone"]), None)
    model = str(run_dir / "best.featx")
    if modality == "image":
        kind, data, samples = "an image folder (searched recursively) or one image file", "NEW_IMAGES/", "image paths"
    else:
        column = (source or {}).get("text_column", "text")
        kind = f"a CSV/JSONL file whose text column is {column!r}"
        data = "NEW_TEXTS.csv" + (f" --text-column {shlex.quote(column)}" if column != "text" else "")
        samples = "texts"
    finetune = (f"featx finetune {shlex.quote(str(run_dir))}        # train the backbone end to end from this setup"
                if source is not None else
                "# fine-tune end to end: featx.finetune(model, X, y, strategy=\"lp-ft\", epochs=3)")
    commands = f"featx predict {shlex.quote(model)} {data} --out predictions.csv\n{finetune}"
    python = (f"import featx\n\nmodel = featx.load({model!r})\n"
              f"model.predict(new_samples)          # new_samples: a list of {samples}\n"
              f"model.predict_proba(new_samples)    # one column per class, in model.classes_ order")
    return (f"<p>A fitted <code>TransferClassifier</code> ({html.escape(_label(best))}); new data is {html.escape(kind)}, "
            f"like the training data.</p>\n<pre id=\"use-best\"><code>{html.escape(commands)}</code></pre>\n"
            f"<pre><code>{html.escape(python)}</code></pre>")


def _badge(row_or_backbone: dict) -> str:
    return ' <span class="badge" title="no pretrained weights: an untrained network">random init</span>' \
        if row_or_backbone.get("random_init") else ""


def _leaderboard(rows: list[dict]) -> str:
    scores = sorted({k[6:] for r in rows for k in r if k.startswith("score_")})
    head = ["#", "backbone", "backbone options", "view", "head", "params", "CV accuracy", "balanced acc", "macro-F1",
            "test acc", "extract s", "fit s", "cache hits"] + scores
    body = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), html.escape(r["backbone"]) + _badge(r), html.escape(_options_text(r.get("backbone_options"))),
                 html.escape(r["view"]), html.escape(r["head"]), html.escape(json.dumps(r.get("params", {}))),
                 f"{r['cv_accuracy']:.3f} ± {r['cv_accuracy_std']:.3f}", _fmt(r["cv_balanced_accuracy"]),
                 _fmt(r["cv_macro_f1"]), _fmt(r.get("test_accuracy")), _fmt(r["extract_seconds"], 1),
                 _fmt(r["fit_seconds"], 2), str(r.get("cache_hits", ""))]
        cells += [_fmt(r.get(f"score_{s}")) for s in scores]
        css = ' class="best"' if i == 1 else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<div class="scroll"><table id="leaderboard"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>\n'
            + "\n".join(body) + "</table></div>")


def _per_class(evaluation: dict) -> str:
    rows = evaluation.get("per_class")
    if not rows:
        return "<p>No per-class evaluation recorded for this run.</p>"
    body = "".join(f"<tr><td>{html.escape(r['class'])}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td>"
                   f"<td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>" for r in rows)
    macro = [sum(r[k] for r in rows) / len(rows) for k in ("precision", "recall", "f1")]
    total = sum(r["support"] for r in rows)
    return (f'<table id="per-class"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>'
            f"{body}<tr class=\"total\"><td>macro average</td>{''.join(f'<td>{v:.3f}</td>' for v in macro)}<td>{total}</td></tr>"
            f"<tr class=\"total\"><td>accuracy</td><td colspan=\"3\">{evaluation.get('accuracy', float('nan')):.3f}</td>"
            f"<td>{total}</td></tr></table>")


def _correlations(rows: list[dict], correlations: dict) -> str:
    from .transferability import best_per_setup, correlation_gap, rank_agreement

    if not correlations:
        return "<p>No transferability scores in this run.</p>"
    setups = best_per_setup(rows)
    agreement = rank_agreement(rows)
    gaps = {name: correlation_gap(setups, name) if rho is None or math.isnan(rho) else None
            for name, rho in correlations.items()}
    why = any(gaps.values())

    def top1(name):
        hit = agreement.get(name, {}).get("top1")
        return "–" if hit is None else ("yes" if hit else "no")

    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{_fmt(rho)}</td>"
                   f"<td>{_fmt(agreement.get(name, {}).get('weighted_tau'))}</td><td>{top1(name)}</td>"
                   + (f"<td>{html.escape(gaps[name] or '')}</td>" if why else "") + "</tr>"
                   for name, rho in correlations.items())
    return (f'<table id="correlations"><tr><th>score</th><th>Spearman ρ</th><th>weighted τ</th><th>picks the CV best</th>'
            f'{"<th>why –</th>" if why else ""}</tr>{body}</table>')


def _selection(selection: dict, scored_only: list[dict]) -> str:
    """How the winner was chosen (``rank_by``, the budget) and whether it is the exhaustive CV pick."""
    if not selection or (selection.get("rank_by") == "cv" and not scored_only):
        return ""
    pick, exhaustive = selection["pick"], selection.get("exhaustive_pick")
    text = (f"Ranked by <b>{html.escape(str(selection['rank_by']))}</b>"
            + (f", cross-validating only its top {selection['cv_top_k']} of {selection['setups']} setups"
               if selection.get("cv_top_k") else "")
            + f"; pick: {html.escape(pick['backbone'])} [{html.escape(pick['view'])}] (CV {_fmt(pick['cv_accuracy'])}). ")
    if exhaustive is None:
        text += "The exhaustive pick is not known (not every setup has been cross-validated)."
    else:
        text += (f"Exhaustive CV pick: {html.escape(exhaustive['backbone'])} [{html.escape(exhaustive['view'])}] "
                 f"(CV {_fmt(exhaustive['cv_accuracy'])}): <b>{'the same' if selection['same_pick'] else 'different'}</b>.")
    if scored_only:
        text += " Scored, not cross-validated: " + ", ".join(
            html.escape(f"{r['backbone']} [{r['view']}]") for r in scored_only) + "."
    return f'<p id="selection">{text}</p>'



def _manifest(manifest: dict) -> str:
    items = "".join(
        f"<li><b>{html.escape(b['name'])}</b>{_badge(b)}: options <code>{html.escape(_options_text(b.get('options')) or '–')}</code>, "
        f"dim {b['dim']}, views {html.escape(', '.join(b.get('views', [])))}, fingerprint <code>{b['fingerprint']}</code>, "
        f"store <code>{b['store_key']}</code></li>" for b in manifest.get("backbones", []))
    versions = ", ".join(f"{k} {html.escape(str(v))}" for k, v in manifest.get("versions", {}).items())
    return f"<ul>{items}</ul><p>Created {manifest.get('created', '–')}. {versions}</p>"


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; }
#leaderboard td:nth-child(-n+6), #leaderboard th:nth-child(-n+6), #per-class td:first-child,
#correlations td:first-child, #correlations td:nth-child(3) { text-align: left; }
tr.best td { background: #eaf5ea; font-weight: 600; }
tr.total td { background: #f7f7f7; font-style: italic; }
.badge { background: #b8291e; color: #fff; border-radius: 3px; padding: 0 5px; font-size: 11px; font-weight: 600; white-space: nowrap; }
.warning { background: #fdecea; border-left: 4px solid #b8291e; padding: 0.5em 1em; }
.side { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
figure { margin: 0.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
.scroll { overflow-x: auto; }  /* a wide leaderboard (six scores) scrolls instead of running off the page */
pre { background: #f6f8fa; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; }
code { font-size: 12px; }
"""


def _page(rows: list[dict], correlations: dict, evaluation: dict, manifest: dict, source: dict | None,
          run_dir: Path) -> str:
    best = rows[0]
    random_init = [b["name"] for b in manifest.get("backbones", []) if b.get("random_init")]
    warning = (f'<p class="warning"><span class="badge">random init</span> {html.escape(", ".join(random_init))} '
               f"{'has' if len(random_init) == 1 else 'have'} no pretrained weights: those rows score an untrained "
               f"network, not transfer learning.</p>") if random_init else ""
    split = evaluation.get("split", "test")
    if source is not None:
        reproduce = ("<p>The data and split come from <code>source.json</code>; run from any folder:</p>"
                     f'<pre id="reproduce"><code>{html.escape(reproduce_command(manifest, source, run_dir))}</code></pre>')
    else:
        reproduce = ("<p>This sweep was run from Python; with the same samples and labels, this call repeats it:</p>"
                     f'<pre id="reproduce"><code>{html.escape(reproduce_snippet(manifest, run_dir))}</code></pre>')
    n_test = manifest.get("n_test")
    skipped = manifest.get("skipped") or []
    if skipped:
        listing = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in skipped)
        how = html.escape("--errors skip" if source is not None else 'errors="skip"')
        warning += (f'<p class="warning"><span class="badge">skipped</span> {len(skipped)} unreadable sample'
                    f'{"s were" if len(skipped) > 1 else " was"} left out of every split (<code>{how}</code>):'
                    f"</p><ul>{listing}</ul>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>featx sweep report</title>
<style>{STYLE}</style></head><body>
<h1>featx sweep</h1>
{warning}
<p><b>Best:</b> {html.escape(_label(best))}{_badge(best)}, params <code>{html.escape(json.dumps(best.get('params', {})))}</code> —
CV accuracy {best['cv_accuracy']:.3f} ± {best['cv_accuracy_std']:.3f}, test accuracy {_fmt(best.get('test_accuracy'))}.</p>
<p>{manifest.get('n_train')} training samples{f", {n_test} held out for the test split" if n_test else ", no test split"};
{manifest.get('cv_folds')}-fold stratified cross-validation on the training data only (seed {manifest.get('seed')}).
Data fingerprint <code>{manifest.get('data_fingerprint')}</code>. Rows best first, by CV accuracy.</p>
<h2>Leaderboard</h2>
{_leaderboard(rows)}
<figure><img src="accuracy.png" alt="CV and test accuracy per setup"><figcaption>accuracy per setup (axis zoomed to the data)</figcaption></figure>
<h2>The best setup, per class ({html.escape(split)} split)</h2>
<div class="side">
<figure><img src="confusion.png" alt="row-normalised confusion matrix"><figcaption>confusion matrix, each row normalised; counts in brackets</figcaption></figure>
<div>{_per_class(evaluation)}</div>
</div>
<h2>Transferability scores vs CV accuracy</h2>
<p>Spearman ρ and weighted Kendall τ (top ranks weigh most) across backbone/view setups (each setup's best head), and whether the score's top setup is the CV best; – where undefined, with the reason. <code>static</code> needs no data: parameter count, deeper views first.</p>
{_correlations(rows, correlations)}
<!--selection-->
<figure><img src="transferability.png" alt="transferability scores against CV accuracy"><figcaption>scores vs best CV accuracy</figcaption></figure>
<figure><img src="cost.png" alt="accuracy against extraction time"><figcaption>accuracy vs extraction cost</figcaption></figure>
<h2>Reproduce this run</h2>
{reproduce}
<h2>Use the best model: <code>best.featx</code></h2>
{_use_best(best, manifest, source, run_dir)}
<h2>Manifest</h2>
{_manifest(manifest)}
</body></html>
"""
