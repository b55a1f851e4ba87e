"""The command line, run in-process through featx.cli.main (same code path as the console script)."""

from __future__ import annotations

import csv
import json

import pytest

from featx.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_backbones_lists_patterns_and_plugins(capsys):
    code, out, _ = run(capsys, "backbones", "acme/*")
    assert code == 0 and "acme/colorhist" in out and "colorhist" in out
    code, _, err = run(capsys, "backbones", "nothing-matches-*")
    assert code == 1 and "no backbone matches" in err


def test_extract_fit_predict_and_cache_on_an_image_folder(capsys, tmp_path, image_folder):
    cache = tmp_path / "c"
    code, out, _ = run(capsys, "extract", image_folder, "-b", "acme/colorhist", "-o", "bins=4", "--cache-dir", cache, "-q")
    assert code == 0 and "12 samples (12 unique), 0 cached, 12 embedded" in out
    code, out, _ = run(capsys, "extract", image_folder, "-b", "acme/colorhist", "-o", "bins=4", "--cache-dir", cache, "-q")
    assert "12 cached, 0 embedded" in out

    model = tmp_path / "m.featx"
    code, out, _ = run(capsys, "fit", image_folder, "-b", "acme/colorhist", "-o", "bins=4", "--head", "knn",
                       "--out", model, "--cache-dir", cache, "-q")
    assert code == 0 and model.exists()
    preds = tmp_path / "p.csv"
    code, _, _ = run(capsys, "predict", model, image_folder, "--out", preds, "--cache-dir", cache, "-q")
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 12
    assert all(r["prediction"] == r["sample"].split("/")[-2] for r in rows)  # colours are easy

    code, out, _ = run(capsys, "cache", "ls", "--cache-dir", cache)
    assert code == 0 and "acme/colorhist" in out and "12" in out
    code, out, _ = run(capsys, "cache", "info", "acme/colorhist", "--cache-dir", cache)
    assert code == 0 and "count        12" in out and "dim          12" in out


def test_text_table_fit(capsys, tmp_path):
    rows = [{"body": f"{'red' if i % 2 else 'blue'} sample {i}", "topic": "r" if i % 2 else "b"} for i in range(12)]
    table = tmp_path / "t.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    code, _, err = run(capsys, "fit", table, "-b", "acme/colorhist", "--text-column", "body", "--label-column", "topic",
                       "--out", tmp_path / "m.featx", "--cache-dir", tmp_path / "c", "-q")
    assert code == 2 and "holds texts but backbone" in err  # colorhist is an image backbone: a clear error, no traceback


def test_user_errors_exit_2_with_a_message(capsys, tmp_path):
    code, _, err = run(capsys, "extract", tmp_path / "missing", "-b", "acme/colorhist")
    assert code == 2 and "missing" in err
    code, _, err = run(capsys, "extract", tmp_path, "-b", "acme/colorhst")
    assert code == 2 and "acme/colorhist" in err
    code, _, err = run(capsys, "predict", tmp_path / "nope.featx", tmp_path)
    assert code == 2 and "does not exist" in err


def test_bad_option_syntax_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["extract", "x", "-b", "acme/colorhist", "-o", "novalue"])
    assert info.value.code == 2
