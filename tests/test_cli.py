"""The command line, run in-process through featx.cli.main (same code path as the console script)
on tiny models; tests/test_user_paths.py runs the installed executable on real models and data."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

import featx
from featx.cli import main

TOPICS = {"pets": "the cat sat on the mat", "markets": "stock market fell sharply today"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def table(tmp_path):
    """A JSONL table of 12 short texts from the tiny BERT's vocabulary, 6 per topic, with ids."""
    rows = [{"id": f"t{i}", "body": f"{TOPICS[topic]} {'big' if i % 2 else 'small'} {'house ' * (i % 3)}".strip(),
             "topic": topic} for i, topic in enumerate(list(TOPICS) * 6)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_backbones_show_a_header_modality_dim_and_weights(capsys):
    code, out, _ = run(capsys, "backbones", "acme/*")
    header, row = (re.split(r"\s{2,}", line) for line in out.splitlines())
    assert code == 0 and header == ["name", "modality", "dim", "weights", "plugin", "description"]
    assert row[:4] == ["acme/colorhist", "image", "24", "none (not learned)"]
    code, out, _ = run(capsys, "backbones", "timm/resnet18")
    assert re.split(r"\s{2,}", out.splitlines()[1])[:4] == ["timm/resnet18", "image", "512", "random init"]
    code, _, err = run(capsys, "backbones", "nothing-matches-*")
    assert code == 1 and "no backbone matches" in err


def test_extract_fit_predict_and_cache_on_an_image_folder(capsys, tmp_path, image_folder):
    cache = tmp_path / "c"
    code, out, _ = run(capsys, "extract", image_folder, "-b", "acme/colorhist", "-o", "bins=4", "--cache-dir", cache, "-q")
    assert code == 0 and "12 samples (12 unique), 0 cached, 12 embedded" in out
    code, out, _ = run(capsys, "extract", image_folder, "-b", "acme/colorhist", "-o", "bins=4", "--cache-dir", cache, "-q")
    assert "12 cached, 0 embedded" in out

    model = tmp_path / "m.featx"
    code, out, err = run(capsys, "fit", image_folder, "-b", "acme/colorhist", "-o", "bins=4", "--head", "knn",
                         "--head-param", "n_neighbors=3", "--out", model, "--cache-dir", cache, "-q")
    assert code == 0 and model.exists(), err
    assert "12 samples from" in out and "blue 6, red 6" in out and "5-fold cross-validated accuracy 1.000" in out
    assert featx.load(model).head_params == {"n_neighbors": 3}
    preds = tmp_path / "p.csv"
    code, _, _ = run(capsys, "predict", model, image_folder, "--out", preds, "--cache-dir", cache, "-q")
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 12
    assert all(r["prediction"] == r["sample"].split("/")[-2] for r in rows)  # colours are easy

    code, out, _ = run(capsys, "cache", "ls", "--cache-dir", cache)
    assert code == 0 and "acme/colorhist" in out and "12" in out and "last used" in out
    code, out, _ = run(capsys, "cache", "info", "acme/colorhist", "--cache-dir", cache)
    assert code == 0 and "count        12" in out and "dim          12" in out


def test_text_fit_predict_with_ids_and_probabilities_then_evaluate(capsys, tmp_path, tiny_bert_dir, table):
    path, rows = table
    backbone, cache, model = f"hf/{tiny_bert_dir}", tmp_path / "c", tmp_path / "m.featx"
    code, out, err = run(capsys, "fit", path, "-b", backbone, "--text-column", "body", "--label-column", "topic",
                         "--cv", "3", "--out", model, "--cache-dir", cache, "-q")
    assert code == 0, err
    assert "markets 6, pets 6" in out and "3-fold cross-validated accuracy" in out

    code, out, _ = run(capsys, "predict", model, path, "--text-column", "body", "--cache-dir", cache, "-q")
    predicted = rows_of(out)
    assert code == 0 and [r["row"] for r in predicted] == [str(i) for i in range(1, 13)]
    assert {r["prediction"] for r in predicted} <= set(TOPICS)

    out_file = tmp_path / "p.csv"
    code, _, _ = run(capsys, "predict", model, path, "--text-column", "body", "--id-column", "id", "--proba",
                     "--out", out_file, "--cache-dir", cache, "-q")
    with_proba = list(csv.DictReader(open(out_file)))
    assert list(with_proba[0]) == ["id", "prediction", "confidence", "proba_markets", "proba_pets"]
    assert [r["id"] for r in with_proba] == [r["id"] for r in rows]
    assert all(abs(float(r["proba_markets"]) + float(r["proba_pets"]) - 1) < 1e-3 for r in with_proba)
    assert [r["prediction"] for r in with_proba] == [r["prediction"] for r in predicted]

    metrics = tmp_path / "metrics.json"
    code, out, _ = run(capsys, "evaluate", model, path, "--text-column", "body", "--label-column", "topic",
                       "--out", metrics, "--cache-dir", cache, "-q")
    scores = json.loads(metrics.read_text())
    right = sum(p["prediction"] == r["topic"] for p, r in zip(predicted, rows))
    assert code == 0 and scores["accuracy"] == pytest.approx(right / 12) and scores["samples"] == 12
    assert sum(map(sum, scores["confusion"]["matrix"])) == 12 and scores["confusion"]["labels"] == ["markets", "pets"]
    assert "confusion matrix" in out and f"accuracy {scores['accuracy']:.3f}" in out


def test_fit_gives_a_held_out_score_when_a_class_has_one_sample(capsys, tmp_path, tiny_bert_dir, table):
    path, rows = table
    rows.append({"id": "t12", "body": "the big house", "topic": "houses"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "fit", path, "-b", f"hf/{tiny_bert_dir}", "--text-column", "body", "--label-column",
                         "topic", "--out", tmp_path / "m.featx", "--cache-dir", tmp_path / "c", "-q")
    assert code == 0, err
    assert "houses 1, markets 6, pets 6" in out
    assert re.search(r"held-out accuracy [01]\.\d{3} on 4 of 13 samples \(class 'houses' has a single sample, too "
                     r"few for cross-validation\)", out)


def test_predict_into_a_missing_folder_fails_before_embedding(capsys, tmp_path, image_folder):
    model, cache = tmp_path / "m.featx", tmp_path / "c"
    assert run(capsys, "fit", image_folder, "-b", "acme/colorhist", "--cv", "0", "--out", model,
               "--cache-dir", cache, "-q")[0] == 0
    (image_folder / "red" / "new.png").write_bytes((image_folder / "red" / "0.png").read_bytes()[:-1] + b"\0")
    before = featx.EmbeddingCache(cache).stores()[0].info().count
    code, _, err = run(capsys, "predict", model, image_folder, "--out", tmp_path / "missing" / "p.csv",
                       "--cache-dir", cache, "-q")
    assert code == 2 and f"--out {str(tmp_path / 'missing' / 'p.csv')!r}: folder" in err and ".tmp" not in err
    assert featx.EmbeddingCache(cache).stores()[0].info().count == before  # the new image was not embedded
    assert not (tmp_path / "missing").exists()


def test_a_text_table_for_an_image_backbone_is_named(capsys, tmp_path, table):
    path, _ = table
    code, _, err = run(capsys, "fit", path, "-b", "acme/colorhist", "--text-column", "body", "--label-column",
                       "topic", "--out", tmp_path / "m.featx", "--cache-dir", tmp_path / "c", "-q")
    assert code == 2 and f"input {str(path)!r} holds texts (a table) but backbone 'acme/colorhist' embeds images" in err
    assert not (tmp_path / "m.featx").exists()


def test_predict_errors_skip_lists_unreadable_images_and_predicts_the_rest(capsys, tmp_path, image_folder):
    cache, model = tmp_path / "c", tmp_path / "m.featx"
    assert run(capsys, "fit", image_folder, "-b", "acme/colorhist", "--cv", "0", "--out", model,
               "--cache-dir", cache, "-q")[0] == 0
    (image_folder / "red" / "broken.png").write_bytes(b"not a png")
    out_file = tmp_path / "p.csv"
    code, _, err = run(capsys, "predict", model, image_folder, "--out", out_file, "--cache-dir", cache, "-q")
    assert code == 2 and "broken.png" in err and "--errors skip" in err and not out_file.exists()
    code, _, err = run(capsys, "predict", model, image_folder, "--errors", "skip", "--out", out_file,
                       "--cache-dir", cache, "-q")
    rows = list(csv.DictReader(open(out_file)))
    assert code == 0 and len(rows) == 12 and not any("broken" in r["sample"] for r in rows)
    assert "featx: skipped (unreadable):" in err and "broken.png" in err


def test_sweep_and_finetune_errors_skip_leave_out_unreadable_images(capsys, tmp_path, image_folder):
    """The sweep's "pass --errors skip" advice works, and the run's fine-tuning skips the same samples."""
    (image_folder / "red" / "broken.png").write_bytes(b"not a png")
    run_dir, cache = tmp_path / "run", tmp_path / "c"
    sweep = ["sweep", image_folder, "-b", "timm/test_efficientnet", "-o", "image_size=32", "--head", "logreg",
             "--cv", "2", "--test-size", "0.3",
             "--run-dir", run_dir, "--cache-dir", cache, "-q"]
    code, _, err = run(capsys, *sweep)
    assert code == 2 and "broken.png" in err and "--errors skip" in err and not run_dir.exists()
    code, _, err = run(capsys, *sweep, "--errors", "skip")
    assert code == 0, err
    assert err.count("featx: skipped (unreadable):") == 1 and "broken.png" in err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["n_train"] + manifest["n_test"] == 12 and len(manifest["skipped"]) == 1
    page = (run_dir / "report.html").read_text()
    reproduce = re.search(r'<pre id="reproduce"><code>(.*?)</code>', page, re.S)[1]
    assert "1 unreadable sample was left out" in page and "--errors skip" in reproduce
    code, out, err = run(capsys, "finetune", run_dir, "--strategy", "full", "--epochs", "1", "--batch-size", "4",
                         "--cache-dir", cache, "-q")
    assert code == 0 and "test accuracy" in out, err
    assert "broken.png" in err and "broken.png" in json.loads((run_dir / "finetune-full" / "finetune.json").read_text())["skipped"][0]
    code, _, err = run(capsys, "finetune", run_dir, "--errors", "raise", "--epochs", "1", "--cache-dir", cache, "-q")
    assert code == 2 and "broken.png" in err and "--errors skip" in err


def test_cache_rm_and_prune(capsys, tmp_path, image_folder):
    cache = tmp_path / "c"
    for bins in (4, 8):
        run(capsys, "extract", image_folder, "-b", "acme/colorhist", "-o", f"bins={bins}", "--cache-dir", cache, "-q")
    stores = featx.EmbeddingCache(cache).stores()
    assert len(stores) == 2
    code, out, _ = run(capsys, "cache", "rm", stores[0].path.name, "--cache-dir", cache)
    assert code == 0 and f"removed store {stores[0].path.name[:16]} (acme/colorhist, 12 vectors" in out
    assert [s.path.name for s in featx.EmbeddingCache(cache).stores()] == [stores[1].path.name]
    code, out, _ = run(capsys, "cache", "prune", "--older-than", "30d", "--cache-dir", cache)
    assert code == 0 and "0 stores removed" in out
    code, out, _ = run(capsys, "cache", "prune", "--older-than", "0s", "--cache-dir", cache)
    assert code == 0 and "1 stores removed" in out and featx.EmbeddingCache(cache).stores() == []


def test_user_errors_exit_2_with_a_message(capsys, tmp_path):
    code, _, err = run(capsys, "extract", tmp_path / "missing", "-b", "acme/colorhist")
    assert code == 2 and "missing" in err
    code, _, err = run(capsys, "extract", tmp_path, "-b", "acme/colorhst")
    assert code == 2 and "acme/colorhist" in err
    code, _, err = run(capsys, "predict", tmp_path / "nope.featx", tmp_path)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "cache", "verify", "--cache-dir", tmp_path / "nowhere")
    assert code == 2 and "no embedding cache at" in err and "nowhere" in err


@pytest.mark.parametrize("argv, words", [
    (["extract", "x", "-b", "acme/colorhist", "-o", "novalue"], "'novalue' must look like key=value"),
    (["extract", "x", "-b", "acme/colorhist", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["sweep", "x", "-b", "a", "--cv", "1", "--run-dir", "r"], "--cv: must be an integer >= 2, got 1"),
    (["sweep", "x", "-b", "a", "--test-size", "1", "--run-dir", "r"], "--test-size: must be a fraction"),
    (["fit", "x", "-b", "a", "--device", "cuda:x", "--out", "m"], "unknown device 'cuda:x'"),
    (["cache", "prune", "--older-than", "soon"], "'soon': give a number and a unit"),
])
def test_bad_arguments_are_usage_errors(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and words in capsys.readouterr().err


def test_sweep_then_finetune_the_best_from_the_run_folder(capsys, tmp_path, image_folder):
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
    code, out, err = run(capsys, "predict", run_dir / "finetune-llrd" / "finetuned.featx", image_folder,
                         "--cache-dir", tmp_path / "c", "-q")
    assert code == 0 and len(rows_of(out)) == 12, err
    code, _, err = run(capsys, "finetune", run_dir, "--row", 99)
    assert code == 2 and "rows 1..4" in err
    code, out, err = run(capsys, "finetune", run_dir, "--row", timm_row, "--strategy", "full", "--epochs", "1",
                         "--batch-size", "4", "--no-augment", "--batchnorm", "frozen", "--target", image_folder,
                         "--adapt", "adabn", "--out-dir", tmp_path / "adabn", "--cache-dir", tmp_path / "c", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "adabn" / "finetune.json").read_text())["adapt"] == "adabn"
    code, _, err = run(capsys, "finetune", run_dir, "--adapt", "dann")
    assert code == 2 and "--target DATA" in err and "--adapt adabn|dann go together" in err
