"""The demo's curve code on tiny tasks: table shape, draws per point, the same draws for featx and
the baseline, one embedding pass, the written report; and a small real subset (integration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import WORDS, CountingTextBackbone
from featx import demo

TOPIC_WORDS = {"pets": ["cat", "dog", "mat"], "money": ["stock", "market", "fell"], "homes": ["house", "big", "small"]}


def text_task(backbone) -> demo.Task:
    """3 topics x 10 short texts; 2 per topic held out, draws of 1/2/4 per topic from the other 8."""
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for topic, words in TOPIC_WORDS.items():
        for i in range(10):
            texts.append(" ".join(rng.choice(words + WORDS[:4], size=6)) + f" {i}")
            labels.append(topic)
    labels = np.array(labels)
    pool, test = demo.held_out_split(labels, 6)
    sizes = tuple(demo.Size(f"{k} per topic", shots=k) for k in (1, 2, 4))
    return demo.Task("tiny topics", texts, labels, pool, test, sizes, backbone, demo.tfidf_baseline)


def image_task(image_folder) -> demo.Task:
    """red/blue images (6 each): 4 held out, draws of 50 % and 100 % of the other 8."""
    from featx.data.loaders import load_image_folder

    paths, labels = load_image_folder(image_folder)
    labels = np.array(labels)
    pool, test = demo.held_out_split(labels, 4)
    sizes = (demo.Size("50 %", fraction=0.5), demo.Size("100 %", fraction=1.0))
    return demo.Task("tiny colours", paths, labels, pool, test, sizes, "acme/colorhist",
                     lambda images: demo.pixel_baseline(images, side=8), {"bins": 4})


@pytest.fixture
def tasks(image_folder):
    return [text_task(CountingTextBackbone()), image_task(image_folder)]


def test_curves_table_draws_and_report(tasks, cache_dir, tmp_path, capsys):
    out = tmp_path / "report"
    points = demo.run_curves(tasks, draws=3, cache_dir=cache_dir, out_dir=out)

    expected = [(t.name, m, s.label) for t in tasks for m in ("featx", "baseline") for s in t.sizes]
    assert [(p.task, "featx" if p.method.startswith("featx") else "baseline", p.size) for p in points] == expected
    assert all(len(p.accuracy) == len(p.macro_f1) == len(p.train_sets) == 3 for p in points)
    assert [p.n_train for p in points if p.task == "tiny topics"] == [3, 6, 12] * 2
    assert [p.n_train for p in points if p.task == "tiny colours"] == [4, 8] * 2
    for task in tasks:
        ours = [p for p in points if p.task == task.name and p.method.startswith("featx")]
        theirs = [p for p in points if p.task == task.name and not p.method.startswith("featx")]
        for a, b in zip(ours, theirs):
            assert all(np.array_equal(x, y) for x, y in zip(a.train_sets, b.train_sets))
            assert not np.isin(np.concatenate(a.train_sets), task.test).any()

    table = capsys.readouterr().out
    assert "mean ± std over 3 draws, the same draws for both" in table
    assert f"{points[0].accuracy.mean():.3f} ± {points[0].accuracy.std():.3f}" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert "src='curves.png'" in page and page.count("<table>") == 2
    markdown = (out / "results.md").read_text()
    assert markdown.count("| 1 per topic (3) |") == 1 and markdown.count("| 100 % (8) |") == 1
    assert not list(out.glob(".*.tmp"))


def test_recorded_draws_are_the_ones_scored(tasks, cache_dir, tmp_path):
    """Refitting the baseline on a point's recorded draw gives that draw's recorded accuracy."""
    from sklearn.metrics import accuracy_score

    task = tasks[0]
    points = demo.run_curves([task], draws=2, cache_dir=cache_dir, out_dir=tmp_path)
    baseline = task.baseline(task.items)
    point = next(p for p in points if p.method == baseline.name and p.size == "2 per topic")
    for train, recorded in zip(point.train_sets, point.accuracy):
        model = baseline.model().fit(baseline.features[train], task.labels[train])
        assert accuracy_score(task.labels[task.test], model.predict(baseline.features[task.test])) == recorded


def test_every_sample_a_draw_can_use_is_embedded_once(tasks, cache_dir, tmp_path, capsys):
    backbone = tasks[0].backbone
    demo.run_curves(tasks, draws=3, cache_dir=cache_dir, out_dir=tmp_path)
    used = demo.samples_used(tasks[0], demo.draw_training_sets(tasks[0], 3))
    assert sorted(backbone.embedded) == sorted(tasks[0].items[i] for i in used)
    assert len(used) < len(tasks[0].items)  # the draws' union, not the whole pool
    first = capsys.readouterr().out
    assert f"tiny topics: {len(used)} samples ({len(used)} distinct), {len(used)} embedded, 0 from the cache" in first

    demo.run_curves(tasks, draws=3, cache_dir=cache_dir, out_dir=tmp_path)
    assert len(backbone.embedded) == len(used)
    second = capsys.readouterr().out
    assert f"featx: 0 of {len(used) + 12} samples embedded, {len(used) + 12} from the cache" in second
    assert "nothing re-embedded" in second


def test_draws_are_seeded_nested_and_stratified(tasks):
    task = tasks[1]
    draws = demo.draw_training_sets(task, 4)
    assert all(np.array_equal(a, b) for row, again in zip(draws, demo.draw_training_sets(task, 4))
               for a, b in zip(row, again))
    half, full = draws
    assert len({d.tobytes() for d in half}) > 1  # different draws at 50 %
    assert all(np.array_equal(d, task.pool) for d in full)  # 100 %: the whole pool every time
    assert all(np.isin(h, f).all() for h, f in zip(half, full))
    assert all(sorted(np.unique(task.labels[h], return_counts=True)[1]) == [2, 2] for h in half)
    other = demo.draw_training_sets(task, 4, seed=1)[0]
    assert any(not np.array_equal(a, b) for a, b in zip(half, other))


def test_a_size_larger_than_a_class_is_refused(tasks):
    with pytest.raises(ValueError, match="'5 per topic' needs 5 samples of a class that has 4"):
        demo.draw_training_sets(demo.Task(**{**vars(tasks[1]), "sizes": (demo.Size("5 per topic", shots=5),)}), 1)


def test_cli_demo_refuses_an_output_folder_it_cannot_write(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    featx = Path(sys.executable).parent / "featx"
    done = subprocess.run([str(featx), "demo", "--quick", "--out-dir", str(blocker / "demo")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert f"cannot write the demo's report to {str(blocker / 'demo')!r}" in done.stderr
    assert "--out-dir" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.integration
def test_real_bbc_subset_shows_the_transfer_gap(cache_dir, tmp_path):
    """MiniLM beats TF-IDF from one labelled article per topic on a small real subset."""
    task = demo.bbc_news(quick=True)
    task.test = task.test[::4]
    task.sizes = task.sizes[:1]
    points = demo.run_curves([task], draws=3, cache_dir=cache_dir, out_dir=tmp_path)
    featx_one, baseline_one = (p for p in points if p.size == "1 per topic")
    assert featx_one.method == "featx all-MiniLM-L6-v2 + logreg" and baseline_one.method == "TF-IDF + logreg"
    assert featx_one.accuracy.mean() > baseline_one.accuracy.mean() + 0.05
