"""The shift report: ``report.html`` with a 2-D PCA projection of both sets (``projection.png``)
and the samples of the new set that look least like the reference (thumbnails ``shifted-N.png`` or
text snippets).  Self-contained like the sweep report: inline CSS, PNGs beside it, no scripts."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._fs import atomic_write
from ..data.samples import IMAGE_SUFFIXES
from ..selection.report import STYLE

SHOWN = 12  # most shifted samples on the page
THUMBNAIL = 96  # pixels
SNIPPET = 240  # characters


def write_report(report, ref: np.ndarray, new: np.ndarray, out_dir, *, new_samples: Sequence[Any] | None = None,
                 names: tuple[str, str] = ("reference", "new")) -> Path:
    """Write ``out_dir/report.html`` (and its PNGs) for ``report`` on the vectors ``ref`` and ``new``.

    Parameters
    ----------
    report : ShiftReport
        What ``detect_shift`` returned for these vectors.
    ref, new : ndarray of shape (n, dim)
        The two sets' embeddings.
    out_dir : str or path
        Created if missing; files in it are replaced whole (never half-written).
    new_samples : sequence, optional
        The samples behind ``new`` (image paths, PIL images or arrays, or texts), shown for the
        most shifted ones.
    names : (str, str)
        How the page names the two sets (e.g. their paths).

    Returns
    -------
    Path of ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices, scores = (part[:SHOWN] for part in report.most_shifted_)
    _projection_plot(out / "projection.png", ref, new, indices, names)
    cells = [_sample_cell(out, rank, new_samples[i] if new_samples is not None else None, i, score)
             for rank, (i, score) in enumerate(zip(indices.tolist(), scores.tolist()), 1)]
    page = _page(report, names, "\n".join(cells))
    with atomic_write(out / "report.html") as f:
        f.write(page.encode("utf-8"))
    return out / "report.html"


def _projection_plot(path: Path, ref, new, shown, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    points = PCA(n_components=2, random_state=0).fit_transform(np.vstack([ref, new]))
    ref_2d, new_2d = points[:len(ref)], points[len(ref):]
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=110)
    ax.scatter(*ref_2d.T, s=8, alpha=0.45, color="#1f77b4", label=f"{names[0]} ({len(ref)})")
    ax.scatter(*new_2d.T, s=8, alpha=0.45, color="#d62728", label=f"{names[1]} ({len(new)})")
    ax.scatter(*new_2d[shown].T, s=70, facecolors="none", edgecolors="black", label="most shifted (numbered)")
    for rank, (x, y) in enumerate(new_2d[shown], 1):
        ax.annotate(str(rank), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="both sets' embeddings, first two principal components")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def _sample_cell(out: Path, rank: int, sample: Any, index: int, score: float) -> str:
    caption = f"#{rank}: sample {index}, score {score:.3f}"
    if sample is None:
        body = ""
    elif isinstance(sample, str) and Path(sample).suffix.lower() not in IMAGE_SUFFIXES:
        text = sample if len(sample) <= SNIPPET else sample[:SNIPPET - 1] + "…"
        body = f"<blockquote>{html.escape(text)}</blockquote>"
    else:
        name = f"shifted-{rank}.png"
        _thumbnail(sample, out / name)
        label = f" {html.escape(str(sample))}" if isinstance(sample, (str, Path)) else ""
        body = f'<img src="{name}" alt="most shifted sample {rank}">'
        caption += f"<br><code>{label}</code>" if label else ""
    return f'<figure class="sample">{body}<figcaption>{caption}</figcaption></figure>'


def _thumbnail(sample: Any, path: Path) -> None:
    from PIL import Image

    image = sample if isinstance(sample, Image.Image) else (
        Image.fromarray(np.asarray(sample)) if isinstance(sample, np.ndarray) else Image.open(sample))
    image = image.convert("RGB")
    scale = THUMBNAIL / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    with atomic_write(path) as f:
        image.save(f, format="PNG")


def _page(report, names, cells: str) -> str:
    verdict_class = "warning" if report.shifted else "ok"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>featx shift report</title>
<style>{STYLE}
#summary td {{ text-align: left; }}
.ok {{ background: #eaf5ea; border-left: 4px solid #2e7d32; padding: 0.5em 1em; }}
.samples {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.sample {{ width: 220px; }} .sample img {{ image-rendering: pixelated; width: {THUMBNAIL}px; }}
blockquote {{ margin: 0; padding: 0.4em; background: #f6f8fa; border: 1px solid #ddd; font-size: 12px; }}
</style></head><body>
<h1>featx shift</h1>
<p class="{verdict_class}"><b>{html.escape(report.verdict())}</b></p>
<table id="summary">
<tr><th>reference</th><td>{html.escape(names[0])}</td><td>{report.n_ref} samples</td></tr>
<tr><th>new</th><td>{html.escape(names[1])}</td><td>{report.n_new} samples</td></tr>
<tr><th>test</th><td>{report.method}</td><td>statistic {report.statistic:.4g}, p-value {report.p_value:.4g}, alpha {report.alpha:g}</td></tr>
</table>
<h2>Both sets, projected</h2>
<figure><img src="projection.png" alt="2-D PCA projection of both sets"><figcaption>PCA of the pooled embeddings; the most shifted new samples circled and numbered</figcaption></figure>
<h2>The new samples least like the reference</h2>
<p>Highest score first (1 = nothing like the reference; how the score is computed depends on the test: {_score_meaning(report.method)}).</p>
<div class="samples">
{cells}
</div>
</body></html>
"""


def _score_meaning(method: str) -> str:
    return {"mmd": "one minus the mean kernel similarity to the reference samples",
            "classifier": "the out-of-fold probability the classifier gives to &quot;new&quot;",
            "ks": "how far into the reference's tails the sample lies, averaged over dimensions"}[method]
