"""featx.export + featx.serving.OnnxModel on tiny random models: parity with the torch path (1e-4),
every built-in head, a fine-tuned model, int8, the CLI, and OnnxModel where torch cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

import featx
from featx.cli import main
from featx.errors import BadInputError
from featx.serving import OnnxModel
from conftest import without_training_stack

IMAGE = "timm/test_efficientnet"
TOLERANCE = 1e-4


def image_inputs(folder: Path) -> list:
    """Every kind of image input, of sizes smaller and larger than the crop: PIL, paths, arrays (grey too)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    items: list = []
    for i in range(12):
        pixels = rng.integers(0, 256, (20 + 9 * i, 48 - 2 * i, 3), dtype=np.uint8)
        pixels[..., i % 3] //= 4  # three colour classes, so the heads learn something
        if i % 3 == 0:
            path = folder / f"{i}.png"
            Image.fromarray(pixels).save(path)
            items.append(str(path))
        elif i % 3 == 1:
            items.append(Image.fromarray(pixels))
        else:
            items.append(pixels)
    items.append(rng.integers(0, 256, (30, 30), dtype=np.uint8))  # grey array
    return items


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    X = image_inputs(tmp_path_factory.mktemp("images"))
    return X, [f"c{i % 3}" for i in range(len(X))]


def fit(head, X, y, cache_dir, **options):
    return featx.TransferClassifier(IMAGE if not options else options.pop("backbone"), head=head, cache_dir=cache_dir,
                                    device="cpu", backbone_options=options or {"image_size": 32, "pretrained": False}).fit(X, y)


def assert_parity(model, exported: OnnxModel, X) -> None:
    expected, got = model.predict_proba(X), exported.predict_proba(X)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < TOLERANCE
    assert (exported.predict(X) == model.predict(X)).all()
    assert list(exported.classes_) == list(model.classes_)


@pytest.mark.parametrize("head", ["logreg", "svm", "mlp", "knn"])
def test_image_heads_match_the_torch_path(head, images, tmp_path):
    X, y = images
    model = fit(head, X, y, tmp_path / "cache")
    out = featx.export(model, tmp_path / "onnx")
    exported = OnnxModel(out, batch_size=5)  # batches of 5: a partial last batch too
    assert_parity(model, exported, X)
    meta = json.loads((out / "featx-onnx.json").read_text())
    assert meta["modality"] == "image" and meta["input_size"] == [32, 32] and meta["classes"] == ["c0", "c1", "c2"]
    assert meta["fingerprint"] == model.fingerprint_ and meta["opset"] == 17
    assert exported.metadata == meta and exported.modality == "image"
    import onnx

    graph = onnx.load(out / "model.onnx")
    assert [i.name for i in graph.graph.input] == ["pixels"]
    assert [o.name for o in graph.graph.output] == ["probabilities", "label"]


def test_a_plain_sklearn_head_and_a_view_export(images, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    X, y = images
    model = featx.TransferClassifier(IMAGE, head=RandomForestClassifier(n_estimators=5, random_state=0),
                                     backbone_options={"image_size": 32, "layers": [-1, -2], "pretrained": False}, view="stage3",
                                     cache_dir=tmp_path / "cache", device="cpu").fit(X, y)
    assert_parity(model, OnnxModel(featx.export(model, tmp_path / "onnx", opset=18)), X)


def test_text_model_matches_the_torch_path(tiny_bert_dir, tmp_path):
    words = "the a cat dog sat on mat stock market fell rose sharply today quietly house big small".split()
    rng = np.random.default_rng(1)
    X = [" ".join(rng.choice(words, size=rng.integers(1, 90))) for _ in range(20)]  # some over max_length
    y = [int("cat" in x) for x in X]
    model = featx.TransferClassifier(f"hf/{tiny_bert_dir}", head="logreg", cache_dir=tmp_path / "cache", device="cpu",
                                     backbone_options={"max_length": 48}).fit(X, y)
    out = featx.export(model, tmp_path / "onnx")
    assert (out / "tokenizer.json").is_file() and (out / "vocab.txt").is_file()
    exported = OnnxModel(out, batch_size=6)
    assert_parity(model, exported, X)
    assert exported.predict(X).dtype.kind == "i" and exported.metadata["max_length"] == 48


def test_text_export_traces_eager_attention_and_leaves_the_encoder_as_it_was(tiny_bert_dir, tmp_path):
    """The exported encoder has no IsNaN/Where pass over its attention matrices (torch's SDPA graph
    has one per layer); the fitted model keeps the attention implementation it had."""
    import onnx

    X, y = ["the cat sat", "a big cat", "stock market fell", "the market rose"] * 3, [0, 0, 1, 1] * 3
    model = featx.TransferClassifier(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "cache", device="cpu").fit(X, y)
    before = model.backbone_.model.config._attn_implementation
    assert before == "sdpa"
    out = featx.export(model, tmp_path / "onnx")
    assert model.backbone_.model.config._attn_implementation == before
    ops = [node.op_type for node in onnx.load(out / "model.onnx").graph.node]
    assert ops.count("Softmax") == 2 and "IsNaN" not in ops  # one softmax per layer, no NaN masking
    assert_parity(model, OnnxModel(out), X)


def test_finetuned_model_exports_whole(tiny_bert_dir, tmp_path):
    X = ["the cat sat on the mat", "a big cat sat quietly", "stock market fell sharply", "the market rose today"] * 4
    y = ["cats", "cats", "stocks", "stocks"] * 4
    model = featx.FineTunedClassifier(f"hf/{tiny_bert_dir}", strategy="full", epochs=1, batch_size=8, device="cpu",
                                      cache_dir=tmp_path / "cache").fit(X, y)
    exported = OnnxModel(featx.export(model, tmp_path / "onnx"))
    assert_parity(model, exported, X)
    assert exported.metadata["estimator"] == "FineTunedClassifier"


def test_int8_is_smaller_quantised_and_close_to_float32(images, tmp_path, caplog):
    import onnx

    X, y = images
    model = fit("logreg", X, y, tmp_path / "cache")
    fp32 = featx.export(model, tmp_path / "fp32")
    caplog.clear()
    int8 = featx.export(model, tmp_path / "int8", quantize="int8")
    assert caplog.records == []  # the quantiser's log lines (advice, one per float tensor) are not shown
    assert (int8 / "model.onnx").stat().st_size < 0.5 * (fp32 / "model.onnx").stat().st_size
    graph = onnx.load(int8 / "model.onnx")
    assert [(o.domain, o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [("", 17)]
    assert any(node.op_type == "DynamicQuantizeLinear" for node in graph.graph.node)
    p, p32 = OnnxModel(int8).predict_proba(X), model.predict_proba(X)
    assert p.shape == (len(X), 3) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert 0 < np.abs(p - p32).max() < 0.05  # quantised (not identical), yet close
    assert (OnnxModel(int8).predict(X) == model.predict(X)).mean() >= 0.9
    assert OnnxModel(int8).metadata["quantization"] == "int8" and OnnxModel(fp32).metadata["quantization"] is None


class Nearest(ClassifierMixin, BaseEstimator):
    """A classifier skl2onnx has no converter for."""

    def fit(self, X, y):
        self.classes_, self.X_, self.y_ = np.unique(y), np.asarray(X), np.asarray(y)
        return self

    def predict(self, X):
        return self.y_[np.argmin(((np.asarray(X)[:, None] - self.X_[None]) ** 2).sum(-1), axis=1)]


@pytest.mark.parametrize("adapt", ["coral", "sa"])
def test_adapted_heads_export_with_their_linear_map(adapt, images, tmp_path):
    X, y = images
    model = featx.TransferClassifier(IMAGE, adapt=adapt, cache_dir=tmp_path / "cache", device="cpu",
                                     backbone_options={"image_size": 32, "pretrained": False})
    model.fit(X[::2], y[::2], X_target=X[1::2])
    exported = OnnxModel(featx.export(model, tmp_path / "onnx"))
    assert_parity(model, exported, X[1::2])
    assert exported.predict(X[1::2]).dtype.kind == "U"  # class values, not the adapted head's class codes


def test_an_auto_adapted_head_that_kept_none_exports_as_the_plain_head(images, tmp_path, monkeypatch):
    """adapt="auto" choosing "none" (forced here through its scores): the head exports without an adapter map."""
    import onnx

    from featx.shift.adapt import AdaptedHead

    monkeypatch.setattr(AdaptedHead, "_score", lambda self, adapt, *data: float(adapt == "none"))
    X, y = images
    model = featx.TransferClassifier(IMAGE, adapt="auto", cache_dir=tmp_path / "cache", device="cpu",
                                     backbone_options={"image_size": 32, "pretrained": False})
    model.fit(X[::2], y[::2], X_target=X[1::2])
    assert model.head_.adapt_ == "none"
    exported = OnnxModel(featx.export(model, tmp_path / "onnx"))
    assert_parity(model, exported, X)
    assert exported.predict(X).dtype.kind == "U"
    graph = onnx.load(tmp_path / "onnx" / "model.onnx").graph
    assert not [tensor.name for tensor in graph.initializer if "adapt_" in tensor.name]  # coral's: head_adapt_matrix, ...


def test_a_self_trained_head_is_refused(images, tmp_path):
    X, y = images
    model = featx.TransferClassifier(IMAGE, adapt="self-training", cache_dir=tmp_path / "cache", device="cpu",
                                     backbone_options={"image_size": 32, "pretrained": False})
    model.fit(X[::2], y[::2], X_target=X[1::2])
    with pytest.raises(BadInputError, match="self-training.*adapt='coral', 'sa'"):
        featx.export(model, tmp_path / "onnx")


def test_a_head_skl2onnx_cannot_convert_is_named(images, tmp_path):
    X, y = images
    model = fit(Nearest(), X, y, tmp_path / "cache")
    with pytest.raises(BadInputError, match=r"cannot export head 'Nearest'.*Exportable heads: the built-in logreg, svm, mlp, knn"):
        featx.export(model, tmp_path / "onnx")


def test_bad_arguments_and_a_missing_extra(images, tmp_path, monkeypatch):
    X, y = images
    model = fit("logreg", X, y, tmp_path / "cache")
    with pytest.raises(BadInputError, match="quantize='int4'"):
        featx.export(model, tmp_path / "onnx", quantize="int4")
    with pytest.raises(BadInputError, match="opset=9"):
        featx.export(model, tmp_path / "onnx", opset=9)
    with pytest.raises(BadInputError, match="not fitted"):
        featx.export(featx.TransferClassifier(IMAGE, backbone_options={"pretrained": False}), tmp_path / "onnx")
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # as if not installed
    with pytest.raises(BadInputError, match=r"needs skl2onnx.*pip install 'featx\[export\]'"):
        featx.export(model, tmp_path / "onnx")
    with pytest.raises(BadInputError, match="not an exported model folder"):
        OnnxModel(tmp_path)


def test_cli_export(images, tmp_path, capsys):
    X, y = images
    featx.save(fit("logreg", X, y, tmp_path / "cache"), tmp_path / "model.featx")
    assert main(["export", str(tmp_path / "model.featx"), "--out", str(tmp_path / "onnx"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "model.onnx" in capsys.readouterr().out and (tmp_path / "onnx" / "featx-onnx.json").is_file()
    featx.save(fit(Nearest(), X, y, tmp_path / "cache"), tmp_path / "odd.featx")
    assert main(["export", str(tmp_path / "odd.featx"), "--out", str(tmp_path / "odd"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featx: error: ") and err.count("\n") == 1  # one line, no traceback


CLIENT = """
import json, sys
import numpy as np
from featx.serving import OnnxModel
model = OnnxModel(sys.argv[1])
X = json.load(open(sys.argv[2]))
print(json.dumps({"proba": model.predict_proba(X).tolist(), "label": model.predict(X).tolist(),
                  "torch": "torch" in sys.modules}))
"""


def test_onnx_model_runs_where_torch_cannot_be_imported(images, tmp_path):
    X, y = images
    model = fit("logreg", X, y, tmp_path / "cache")
    out = featx.export(model, tmp_path / "onnx")
    paths = [x for x in X if isinstance(x, str)]
    (tmp_path / "inputs.json").write_text(json.dumps(paths))
    env = {**os.environ, **without_training_stack(tmp_path)}
    run = subprocess.run([sys.executable, "-c", CLIENT, str(out), str(tmp_path / "inputs.json")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert not result["torch"]
    assert np.abs(np.asarray(result["proba"]) - model.predict_proba(paths)).max() < TOLERANCE
    assert result["label"] == model.predict(paths).tolist()


@pytest.fixture(scope="module")
def textile_photos():
    """30 real textile photos (the demo's data), 10 of each class: the first 8 of each to fit, all to compare."""
    import conformal_clip_data

    from featx.data.loaders import load_image_folder

    paths, labels = load_image_folder(conformal_clip_data.textile_simulated_root())
    rng, labels = np.random.default_rng(0), np.asarray(labels)
    per_class = [rng.choice(np.flatnonzero(labels == c), 10, replace=False) for c in np.unique(labels)]
    pick = np.concatenate([p[:8] for p in per_class] + [p[8:] for p in per_class])
    return [paths[i] for i in pick], labels[pick].tolist()


@pytest.mark.integration
@pytest.mark.parametrize("head", ["logreg", "svm", "mlp"])
def test_real_textile_model_matches_the_torch_path(head, textile_photos, tmp_path):
    """The demo's image model on real photos (Lite0 at 64 px, 24 fitted, 30 compared) with each built-in head."""
    X, y = textile_photos
    model = featx.TransferClassifier("timm/tf_efficientnet_lite0", head=head, cache_dir=tmp_path / "cache",
                                     device="cpu", backbone_options={"image_size": 64}).fit(X[:24], y[:24])
    assert_parity(model, OnnxModel(featx.export(model, tmp_path / "onnx")), X)


@pytest.mark.integration
def test_real_textile_graph_pads_are_constants(textile_photos, tmp_path):
    """Lite0's TensorFlow "same" padding: its pad amounts are constants in the graph (so onnxruntime
    folds each Pad into its Conv), not recomputed from the input's shape in every call."""
    import onnx

    X, y = textile_photos
    model = featx.TransferClassifier("timm/tf_efficientnet_lite0", cache_dir=tmp_path / "cache", device="cpu",
                                     backbone_options={"image_size": 64}).fit(X[:24], y[:24])
    graph = onnx.load(featx.export(model, tmp_path / "onnx") / "model.onnx").graph
    constants = {tensor.name for tensor in graph.initializer}
    pads = [node for node in graph.node if node.op_type == "Pad"]
    assert len(pads) == 5 and all(node.input[1] in constants for node in pads)  # the five stride-2 convolutions
    assert not [node.op_type for node in graph.node if node.op_type in ("Shape", "Ceil")]


@pytest.mark.integration
def test_real_bbc_model_matches_the_torch_path(tmp_path):
    """The demo's text model on real BBC articles (MiniLM, 128 tokens, + logreg: 5 per topic fitted,
    40 compared, the 25 fitted included)."""
    from featx.demo import bbc_news

    task = bbc_news(quick=True)
    rng = np.random.default_rng(0)
    fit_rows = np.concatenate([rng.choice(task.pool[task.labels[task.pool] == t], 5, replace=False)
                               for t in np.unique(task.labels)])
    rows = np.concatenate([fit_rows, task.test[:15]])
    X, y = [task.items[i] for i in rows], task.labels[rows]
    model = featx.TransferClassifier(task.backbone, cache_dir=tmp_path / "cache", device="cpu",
                                     backbone_options={"max_length": 128}).fit(X[:25], y[:25])
    assert_parity(model, OnnxModel(featx.export(model, tmp_path / "onnx")), X)


@pytest.mark.integration
@pytest.mark.parametrize("adapt", ["coral", "sa"])
def test_real_adapted_textile_model_matches_the_torch_path(adapt, textile_photos, tmp_path):
    """Lite0 + logreg adapted to the 6 held-out photos as the unlabelled target domain."""
    X, y = textile_photos
    model = featx.TransferClassifier("timm/tf_efficientnet_lite0", adapt=adapt, cache_dir=tmp_path / "cache",
                                     device="cpu", backbone_options={"image_size": 64})
    model.fit(X[:24], y[:24], X_target=X[24:])
    assert_parity(model, OnnxModel(featx.export(model, tmp_path / "onnx")), X)


@pytest.mark.integration
def test_real_finetuned_image_model_matches_the_torch_path(textile_photos, tmp_path):
    """A fine-tuned Lite0 (pretrained weights, one full epoch on 24 real photos) exported whole."""
    X, y = textile_photos
    model = featx.FineTunedClassifier("timm/tf_efficientnet_lite0", {"image_size": 64}, strategy="full", epochs=1,
                                      batch_size=10, device="cpu",
                                      cache_dir=tmp_path / "cache").fit(X[:24], y[:24])
    assert_parity(model, OnnxModel(featx.export(model, tmp_path / "onnx")), X)
