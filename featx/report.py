"""Run folders and their reports: leaderboard CSV/JSON, manifest, best model, PNG plots, HTML page.

``render(run_dir)`` rebuilds the plots and ``report.html`` from the saved JSON (``featx report RUN_DIR``).
The page is self-contained: inline CSS, images next to it, no scripts, opens offline.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

PLOTS = ("accuracy.png", "cost.png", "confusion.png", "transferability.png")


def write_run(result, run_dir, render: bool = True) -> Path:
    """Save a ``SweepResult`` to ``run_dir`` (and render its report)."""
    from .persist import save

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = result.leaderboard
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(run_dir / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in rows)
    payload = {"leaderboard": rows, "correlations": result.correlations, "confusion": result.confusion}
    (run_dir / "leaderboard.json").write_text(json.dumps(payload, indent=2, default=_plain))
    (run_dir / "manifest.json").write_text(json.dumps(result.manifest, indent=2, default=_plain))
    save(result.best_, run_dir / "best.featx")
    if render:
        render_report(run_dir)
    return run_dir


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _label(r: dict) -> str:
    view = "" if r["view"] == "all" else f" [{r['view']}]"
    return f"{r['backbone']}{view} + {r['head']}"


def render_report(run_dir) -> Path:
    """Draw the PNGs and write ``report.html`` from ``leaderboard.json`` and ``manifest.json``."""
    from .errors import BadInputError

    run_dir = Path(run_dir)
    try:
        payload = json.loads((run_dir / "leaderboard.json").read_text())
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{str(run_dir)!r} is not a sweep run folder ({exc}); run `featx sweep … --run-dir` first") from None
    rows = payload["leaderboard"]
    _plots(run_dir, rows, payload.get("confusion") or {})
    (run_dir / "report.html").write_text(_page(rows, payload.get("correlations") or {}, manifest))
    return run_dir / "report.html"


def _plots(run_dir: Path, rows: list[dict], confusion: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ax.barh(labels, [r["cv_accuracy"] for r in rows][::-1], xerr=[r["cv_accuracy_std"] for r in rows][::-1],
            color="#4c78a8", capsize=3, label="CV accuracy ± std")
    tests = [r.get("test_accuracy") for r in rows][::-1]
    if any(t is not None for t in tests):
        ax.scatter([t if t is not None else float("nan") for t in tests], labels, color="#e45756", zorder=3, label="test accuracy")
    ax.set_xlabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(max(r["extract_seconds"], 1e-3), r["cv_accuracy"], s=30)
        ax.annotate(f"{r['backbone'].split('/')[-1]}/{r['head']}", (max(r["extract_seconds"], 1e-3), r["cv_accuracy"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="extraction time of this run, s (log)", ylabel="CV accuracy", title="accuracy vs extraction cost")
    fig.tight_layout()
    fig.savefig(run_dir / "cost.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    if confusion:
        matrix = confusion["matrix"]
        ax.imshow(matrix, cmap="Blues")
        ticks = range(len(confusion["labels"]))
        ax.set_xticks(list(ticks), confusion["labels"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(list(ticks), confusion["labels"], fontsize=7)
        for i, line in enumerate(matrix):
            for j, count in enumerate(line):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=f"best setup ({confusion['split']} split)")
    else:
        ax.text(0.5, 0.5, "no test split given", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(run_dir / "confusion.png", dpi=100)
    plt.close(fig)

    scores = sorted({k[6:] for r in rows for k in r if k.startswith("score_")})
    best_per_setup: dict[tuple, dict] = {}
    for r in rows:
        key = (r["backbone"], r["view"])
        if key not in best_per_setup or r["cv_accuracy"] > best_per_setup[key]["cv_accuracy"]:
            best_per_setup[key] = r
    fig, axes = plt.subplots(1, max(len(scores), 1), figsize=(3.2 * max(len(scores), 1), 3), squeeze=False)
    for ax, name in zip(axes[0], scores):
        for r in best_per_setup.values():
            ax.scatter(r[f"score_{name}"], r["cv_accuracy"], s=25)
        ax.set(xlabel=name, ylabel="best CV accuracy")
    if not scores:
        axes[0][0].text(0.5, 0.5, "no transferability scores", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    fig.savefig(run_dir / "transferability.png", dpi=100)
    plt.close(fig)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _page(rows: list[dict], correlations: dict, manifest: dict) -> str:
    scores = sorted({k[6:] for r in rows for k in r if k.startswith("score_")})
    head = ["#", "backbone", "view", "head", "params", "CV accuracy", "balanced acc", "macro-F1", "test acc",
            "extract s", "fit s", "cache hits"] + scores
    body = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), html.escape(r["backbone"]), html.escape(r["view"]), html.escape(r["head"]),
                 html.escape(json.dumps(r.get("params", {}))), f"{r['cv_accuracy']:.3f} ± {r['cv_accuracy_std']:.3f}",
                 _fmt(r["cv_balanced_accuracy"]), _fmt(r["cv_macro_f1"]), _fmt(r.get("test_accuracy")),
                 _fmt(r["extract_seconds"], 1), _fmt(r["fit_seconds"], 2), str(r.get("cache_hits", ""))]
        cells += [_fmt(r.get(f"score_{s}")) for s in scores]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    corr = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in correlations.items())
    versions = ", ".join(f"{k} {html.escape(str(v))}" for k, v in manifest.get("versions", {}).items())
    backbones = "".join(f"<li>{html.escape(b['name'])}: fingerprint <code>{b['fingerprint']}</code>, store "
                        f"<code>{b['store_key']}</code>, dim {b['dim']}</li>" for b in manifest.get("backbones", []))
    images = "".join(f'<figure><img src="{p}" alt="{p}"><figcaption>{p[:-4]}</figcaption></figure>' for p in PLOTS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>featx sweep report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
td:nth-child(2), td:nth-child(3), td:nth-child(4), td:nth-child(5) {{ text-align: left; }}
tr:nth-child(2) td {{ background: #eaf5ea; font-weight: 600; }} th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 640px; border: 1px solid #ddd; }}
code {{ font-size: 12px; }}
</style></head><body>
<h1>featx sweep</h1>
<p>{manifest.get('n_train')} training samples{f", {manifest['n_test']} held out" if manifest.get('n_test') else ""};
{manifest.get('cv_folds')}-fold stratified cross-validation on the training data only (seed {manifest.get('seed')}).
Data fingerprint <code>{manifest.get('data_fingerprint')}</code>. Best first, by CV accuracy.</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>
{''.join(body)}
</table>
<h2>Transferability scores vs CV accuracy</h2>
<p>Spearman rank correlation across backbone/view setups (– when fewer than three setups).</p>
<table><tr><th>score</th><th>Spearman ρ</th></tr>{corr}</table>
<h2>Plots</h2>
{images}
<h2>Manifest</h2>
<ul>{backbones}</ul>
<p>{versions}</p>
</body></html>
"""
