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


def test_sweep_then_finetune_the_best_from_the_run_folder(capsys, tmp_path, image_folder):
    import json

    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "sweep", image_folder, "-b", "timm/test_efficientnet", "-b", "acme/colorhist",
                                 "-o", "timm/test_efficientnet:image_size=32", "-o", "acme/colorhist:bins=4",
                                 "--head", "logreg", "--head", "knn", "--cv", "2", "--test-size", "0.34",
                                 "--run-dir", run_dir, "--cache-dir", tmp_path / "c", "-q")
    assert code == 0 and (run_dir / "report.html").exists() and (run_dir / "best.featx").exists()
    source = json.loads((run_dir / "source.json").read_text())
    assert source["options"] == {"timm/test_efficientnet": {"image_size": 32}, "acme/colorhist": {"bins": 4}}
    rows = json.loads((run_dir / "leaderboard.json").read_text())["leaderboard"]
    assert len(rows) == 4
    timm_row = 1 + next(i for i, r in enumerate(rows) if r["backbone"] == "timm/test_efficientnet")
    code, out, err = run(capsys, "finetune", run_dir, "--row", timm_row, "--strategy", "llrd", "--epochs", "1",
                       "--batch-size", "4", "--cache-dir", tmp_path / "c", "-q")
    assert code == 0 and "test accuracy: frozen " in out and "fine-tuned (llrd)" in out, err
    summary = json.loads((run_dir / "finetune-llrd" / "finetune.json").read_text())
    assert summary["strategy"] == "llrd" and summary["held_out"] == "test"
    assert (run_dir / "finetune-llrd" / "finetuned.featx").exists()
    code, _, err = run(capsys, "finetune", run_dir, "--row", 99)
    assert code == 2 and "rows 1..4" in err
