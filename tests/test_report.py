"""The sweep report renders offline: HTML parses, every plot is a non-empty PNG."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np

import featx
from featx.cli import main

from test_sweep import TableBackbone, circles

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
