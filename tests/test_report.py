"""The sweep report renders offline and in headless Chromium: plots load, tables, command and badges show."""

from __future__ import annotations

import csv
import html
import json
import math
import re
import shlex
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

import featx
from featx.cli import main
from featx.selection.report import PLOTS, reproduce_command

from conftest import WORDS
from test_sweep import RandomInitTable, TableBackbone, circles

PNG = b"\x89PNG\r\n\x1a\n"


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.rows, self.external = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.rows += tag == "tr"
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])


def test_report_renders_offline(cache_dir, tmp_path):
    X, y, F = circles(90)
    noise = TableBackbone(np.random.default_rng(0).standard_normal((90, 2)), "test/noise")
    result = featx.sweep(X, y, backbones=[TableBackbone(F), noise, TableBackbone(F * 3 + 1, "test/scaled")],
                         heads=["logreg", "knn"], test_size=0.3, cv=3, cache_dir=cache_dir, run_dir=tmp_path / "run",
                         progress=False)
    page = (tmp_path / "run" / "report.html").read_text()
    parsed = Collector()
    parsed.feed(page)
    assert parsed.tags[0] == "html" and not parsed.external and "<script" not in page
    assert parsed.rows >= len(result.leaderboard) + 1
    assert sorted(parsed.images) == sorted(["accuracy.png", "cost.png", "confusion.png", "transferability.png"])
    for name in parsed.images:
        data = (tmp_path / "run" / name).read_bytes()
        assert data[:8] == PNG and len(data) > 2000
    assert "test/noise" in page and "Spearman" in page


def test_featx_report_command_rerenders(cache_dir, tmp_path, capsys):
    X, y, F = circles(60)
    featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=3, cache_dir=cache_dir,
                run_dir=tmp_path / "run", progress=False, report=False)
    assert not (tmp_path / "run" / "report.html").exists()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "accuracy.png").read_bytes()[:8] == PNG
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a sweep run folder" in capsys.readouterr().err


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium binary found")


# Test-only page: loads the report in an iframe and writes what Chromium rendered into <pre id="facts">.
PROBE = """<!DOCTYPE html><html><body><iframe id="report" src="report.html" style="width:1400px;height:2400px"></iframe>
<pre id="facts"></pre><script>
window.addEventListener("load", () => {
  const page = document.getElementById("report").contentDocument;
  const table = (id) => [...page.querySelectorAll(`#${id} tr`)].map(tr => [...tr.cells].map(c => c.textContent.trim()));
  const shown = (e) => e.getBoundingClientRect().width > 0 && getComputedStyle(e).backgroundColor !== "rgba(0, 0, 0, 0)";
  document.getElementById("facts").textContent = JSON.stringify({
    images: [...page.images].map(i => [i.getAttribute("src"), i.complete && i.naturalWidth > 100]),
    leaderboard: table("leaderboard"), perClass: table("per-class"), correlations: table("correlations"),
    badges: [...page.querySelectorAll("#leaderboard .badge")].map(b => [b.closest("tr").rowIndex, shown(b)]),
    reproduce: page.getElementById("reproduce").textContent, useBest: page.getElementById("use-best").textContent,
    scripts: page.scripts.length, stylesheets: page.querySelectorAll("link").length,
  });
});
</script></body></html>"""


def rendered(run, tmp_path) -> dict:
    """What headless Chromium shows of ``run/report.html`` (and a screenshot of it, checked not blank)."""
    from PIL import Image

    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    (run / "probe.html").write_text(PROBE)
    dom = subprocess.run(browser + ["--allow-file-access-from-files", "--dump-dom", (run / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "report.png"
    subprocess.run(browser + [f"--screenshot={shot}", "--window-size=1400,2400", (run / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1400) and pixels.std() > 20  # text, tables and plots, not a blank page
    return json.loads(html.unescape(re.search(r'<pre id="facts">(.*?)</pre>', dom, re.S).group(1)))


def test_report_in_headless_chromium_shows_plots_tables_command_and_badge(cache_dir, tmp_path):
    X, y, F = circles(90)
    untrained = RandomInitTable(np.random.default_rng(0).standard_normal((90, 2)), "test/untrained")
    source = {"data": str(tmp_path / "circles.csv"), "text_column": "sentence", "label_column": "label",
              "test_size": 0.3, "seed": 0, "options": {"test/untrained": {"image_size": 32}}}
    run = tmp_path / "run"
    featx.sweep(X, y, backbones=[TableBackbone(F), untrained], heads=["logreg", "knn"], test_size=0.3, cv=3,
                cache_dir=cache_dir, run_dir=run, source=source, progress=False)
    facts = rendered(run, tmp_path)
    assert sorted(facts["images"]) == [[name, True] for name in sorted(PLOTS)]
    header, *rows = facts["leaderboard"]
    assert header[:5] == ["#", "backbone", "backbone options", "view", "head"] and len(rows) == 4
    untrained_rows = [i for i, row in enumerate(rows, 1) if row[1].startswith("test/untrained")]
    assert sorted(facts["badges"]) == [[i, True] for i in untrained_rows] and len(untrained_rows) == 2
    assert all(rows[i - 1][1] == "test/untrained random init" and rows[i - 1][2] == "image_size=32, weights=random init"
               for i in untrained_rows)
    header, *per_class = facts["perClass"]
    assert header == ["class", "precision", "recall", "F1", "support"]
    assert [r[0] for r in per_class[:2]] == ["inner", "outer"] and sum(int(r[4]) for r in per_class[:2]) == 27
    command = " ".join(facts["reproduce"].replace("\\\n", " ").split())
    assert command.startswith(f"featx sweep {tmp_path / 'circles.csv'} --text-column sentence -b test/table -b test/untrained")
    assert "-o test/untrained:image_size=32" in command and f"--cv 3 --test-size 0.3 --seed 0 --run-dir {run}" in command
    assert f"featx predict {run / 'best.featx'} NEW_TEXTS.csv --text-column sentence" in facts["useBest"]
    assert facts["scripts"] == 0 and facts["stylesheets"] == 0
    assert [r[0] for r in facts["correlations"][1:]] == ["h_score", "logme", "nce", "nleep", "sfda"]  # no static: plugins
    assert [r[1:3] for r in facts["correlations"][1:]] == [["–", "–"]] * 5  # two setups cannot be ranked
    assert all(r[4] == "needs at least 3 backbone/view setups to rank; this sweep has 2" for r in facts["correlations"][1:])


def test_reproduce_command_repeats_a_cli_run(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)  # lengths overlap between the topics: CV accuracy is neither chance nor perfect
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 7) + 2 * (i % 2))) for i in range(40)]
    labels = ["pets" if i % 2 else "markets" for i in range(40)]
    data = tmp_path / "news.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("body", "topic")] + list(zip(texts, labels)))
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    name = f"hf/{tiny_bert_dir}"
    source = {"data": str(data), "text_column": "body", "label_column": "topic", "test_size": 0.25, "seed": 3,
              "options": {name: {"max_length": 12}}}
    run = tmp_path / "run"
    first = featx.sweep(texts, labels, backbones=[(name, {"max_length": 12})], heads=["logreg", "knn"], test_size=0.25,
                        cv=3, seed=3, cache_dir=tmp_path / "cache", run_dir=run, source=source, progress=False)
    command = reproduce_command(first.manifest, source, run)
    assert main(shlex.split(command.replace("\\\n", " "))[1:] + ["--quiet"]) == 0
    again = json.loads((run / "leaderboard.json").read_text())["leaderboard"]
    keys = ("backbone", "view", "head", "params", "cv_accuracy", "test_accuracy")
    assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in first.leaderboard]
    assert all(r["embedded"] == 0 for r in again)  # the same samples: every embedding came from the cache


def test_reproduce_command_options_read_back_by_the_cli_parser():
    from featx.cli import build_parser

    manifest = {"backbones": [{"name": "timm/resnet18"}], "heads": ["knn", "Recorder"], "cv": 4}
    options = {"layers": [-1, -2], "pooling": "avg", "weights": "my weights.pth", "image_size": 64, "tag": "7"}
    source = {"data": "/data/my images", "test_size": 0, "seed": 2, "options": {"timm/resnet18": options}}
    note, *command = reproduce_command(manifest, source, "runs/a b").split("\n")
    assert note == "# heads given in Python (Recorder) have no command-line form; this sweeps the others"
    args = build_parser().parse_args(shlex.split(" ".join(command).replace("\\ ", " "))[1:])
    assert (args.data, args.backbone, args.head, args.cv, args.test_size, args.seed, args.run_dir) == \
        ("/data/my images", ["timm/resnet18"], ["knn"], 4, 0.0, 2, "runs/a b")
    assert dict(args.option) == {f"timm/resnet18:{k}": v for k, v in options.items()}


def test_api_run_report_has_a_python_snippet_and_explains_undefined_correlations(cache_dir, tmp_path):
    X, y, F = circles(60)
    run = tmp_path / "run"
    result = featx.sweep(X, y, backbones=[TableBackbone(F)], heads=["knn"], cv=3, test_size=0.25,
                         cache_dir=cache_dir, run_dir=run, progress=False)
    assert all(math.isnan(v) for v in result.correlations.values())
    page = (run / "report.html").read_text()
    snippet = html.unescape(re.search(r'<pre id="reproduce"><code>(.*?)</code>', page, re.S).group(1))
    assert "X, y: the same 60 samples" in snippet
    assert (f"featx.sweep(X, y, backbones=['test/table'],\n                     heads=['knn'], test_size=0.25, cv=3,"
            f"\n                     seed=0, run_dir={str(run)!r})") in snippet
    compile(snippet, "snippet", "exec")
    assert page.count("needs at least 3 backbone/view setups to rank; this sweep has 1") == 5
    assert not (run / "source.json").exists()
