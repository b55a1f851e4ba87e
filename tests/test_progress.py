"""Progress on stderr: plain lines when it is not a terminal, an in-place bar when it is, nothing when disabled."""

from __future__ import annotations

import io
import re

import pytest

import featx
import featx.progress
from test_finetune import text_task


def lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "\r" not in err  # not a terminal: whole lines only
    return err.splitlines()


def test_extraction_lines_count_cached_and_embedded_samples(counting, cache_dir, capsys):
    texts = [f"text {i}" for i in range(10)]
    featx.extract(counting, texts, cache_dir=cache_dir, progress=True)
    first = lines(capsys)
    assert first[0].startswith("test/counting:   0% 0/10 [")
    assert re.match(r"test/counting: 100% 10/10 \[.*(sample/s|s/sample), 0 cached, 10 embedded\]$", first[-1]), first
    featx.extract(counting, texts + [f"text {i}" for i in range(10, 14)], cache_dir=cache_dir, progress=True)
    second = lines(capsys)
    assert re.match(r"test/counting: 100% 14/14 \[.*, 10 cached, 4 embedded\]$", second[-1]), second
    assert len(first) == len(second) == 2  # the start and the end: runs shorter than LOG_EVERY seconds


def test_a_line_per_update_once_the_interval_has_passed(counting, cache_dir, capsys, monkeypatch):
    monkeypatch.setattr(featx.progress, "LOG_EVERY", 0)
    texts = [f"text {i}" for i in range(30)]
    featx.extract(counting, texts[:10], cache_dir=cache_dir)
    featx.extract(counting, texts, cache_dir=cache_dir, chunk_size=10, progress=True)
    done = [int(m.group(1)) for line in lines(capsys) for m in [re.search(r" (\d+)/30 ", line)]]
    assert done[0] == 0 and done[-1] == 30 and {10, 20} <= set(done)  # cached first, then chunk by chunk


def test_fine_tuning_prints_each_epochs_batches_and_summary(tiny_bert_dir, tmp_path, capsys):
    X, y = text_task(40)  # 32 training texts: 4 batches of 8 per epoch
    featx.finetune(f"hf/{tiny_bert_dir}", X, y, strategy="full", epochs=2, batch_size=8, patience=5,
                   cache_dir=tmp_path / "c", progress=True)
    out = lines(capsys)
    for epoch in (1, 2):
        mine = [line for line in out if line.startswith(f"epoch {epoch}/2:")]
        assert mine[0].startswith(f"epoch {epoch}/2:   0% 0/4 [")
        assert re.match(rf"epoch {epoch}/2: 100% 4/4 \[.*(batch/s|s/batch), loss \d+\.\d{{4}}\]$", mine[-2]), mine
        assert re.match(rf"epoch {epoch}/2: train loss \d+\.\d{{4}}  val loss \d+\.\d{{4}}  val accuracy \d\.\d{{4}}", mine[-1])
    unique = len(set(X))  # repeated texts are embedded once: the others count as cached
    assert f"hf/{tiny_bert_dir}: 100% 40/40" in out[1] and f"{40 - unique} cached, {unique} embedded]" in out[1]


def test_progress_false_prints_nothing(tiny_bert_dir, tmp_path, capsys):
    X, y = text_task(40)
    featx.finetune(f"hf/{tiny_bert_dir}", X, y, epochs=1, batch_size=8, cache_dir=tmp_path / "c", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_on_a_terminal_the_bar_is_redrawn_in_place(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with featx.progress.progress_bar(4, "work", unit="step") as bar:
        for _ in range(4):
            bar.update(1)
    text = terminal.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n") and "4/4" in text and "step/s" in text


@pytest.mark.parametrize("enabled", [True, False])
def test_a_disabled_bar_is_silent(capsys, enabled):
    with featx.progress.progress_bar(2, "quiet", enabled=enabled) as bar:
        bar.update(2)
    assert (capsys.readouterr().err != "") is enabled
