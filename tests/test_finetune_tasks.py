"""Fine-tuning a regression target (MSE) and multi-label targets (BCE), with the matching scores."""

from __future__ import annotations

import numpy as np
import pytest

import featx


def text_regression(n=30):
    """Texts whose target grows with the number of 'big' words: learnable, continuous (noise added)."""
    rng = np.random.default_rng(1)
    words = "the cat sat on the mat stock market fell rose today quietly house".split()
    X, y = [], []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        X.append(" ".join(list(rng.choice(words, size=4)) + ["big"] * k))
        y.append(k + rng.normal(0, 0.1))
    return X, np.asarray(y)


def text_tags(n=30):
    """Label lists: 'cats' when the text has 'cat', 'stocks' when it has 'stock' (either, both or none)."""
    rng = np.random.default_rng(2)
    X, y = [], []
    for i in range(n):
        cat, stock = i % 2 == 0, i % 3 == 0
        words = (["cat"] if cat else []) + (["stock"] if stock else []) + list(rng.choice(["the", "sat", "today"], 3))
        X.append(" ".join(words))
        y.append([label for label, on in (("cats", cat), ("stocks", stock)) if on])
    return X, y


def test_regression_finetune_lowers_the_training_mse_and_saves(tiny_bert_dir, tmp_path):
    X, y = text_regression()
    setup = featx.TransferRegressor(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X, y, strategy="lp-ft", epochs=3, lr=1e-3, batch_size=8, patience=10, progress=False,
                            run_dir=tmp_path / "run")
    model = result.model
    assert model.task_ == "regression" and model.network_.head.out_features == 1
    history = result.history
    assert "val_r2" in history[0] and history[-1]["train_loss"] < history[0]["train_loss"]
    prediction = model.predict(X)
    assert prediction.shape == (len(X),) and abs(prediction.mean() - y.mean()) < y.std()  # in the target's units
    assert model.score(X, y) == pytest.approx(1 - ((y - prediction) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert set(result.scores) == {"frozen", "finetuned", "probe"}  # the ridge setup standardises: not the probe
    val = model.val_indices_
    assert result.scores["frozen"] == pytest.approx(result.frozen.score([X[i] for i in val], y[val]))  # R² both
    assert "R²" in result.summary()
    loaded = featx.load(featx.save(model, tmp_path / "reg.featx"), cache_dir=tmp_path / "c2")
    np.testing.assert_allclose(loaded.predict(X), prediction, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "run" / "log.csv").read_text().startswith("epoch,train_loss,val_loss,val_r2")
    assert not hasattr(model, "predict_proba")
    from featx.deploy.export import export

    with pytest.raises(featx.BadInputError, match="regression"):
        export(model, tmp_path / "onnx")


def test_regression_lp_ft_at_lr_0_keeps_the_probe_predictions(tiny_bert_dir, tmp_path):
    X, y = text_regression()
    result = featx.finetune(f"hf/{tiny_bert_dir}", X, y, task="regression", strategy="lp-ft", epochs=1, lr=0.0,
                            batch_size=8, cache_dir=tmp_path / "c", progress=False)
    assert featx.finetuning.estimator.is_linear_probe(result.probe)
    np.testing.assert_allclose(result.model.predict(X), result.probe.predict(X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["lists", "matrix"])
def test_multilabel_finetune_probabilities_per_label_and_predictions_in_y_form(tiny_bert_dir, tmp_path, form):
    X, y = text_tags()
    if form == "matrix":
        y = np.array([[int("cats" in t), int("stocks" in t)] for t in y])
    setup = featx.TransferClassifier(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X, y, strategy="lp-ft", epochs=2, lr=1e-3, batch_size=8, progress=False)
    model = result.model
    proba = model.predict_proba(X)
    assert model.task_ == "multilabel" and proba.shape == (len(X), 2) and 0 <= proba.min() and proba.max() <= 1
    assert not np.allclose(proba.sum(axis=1), 1)  # one sigmoid per label, not a softmax
    predicted = model.predict(X)
    if form == "lists":
        assert isinstance(predicted, list) and all(set(p) <= {"cats", "stocks"} for p in predicted)
        assert list(model.classes_) == ["cats", "stocks"]
    else:
        assert predicted.shape == (len(X), 2) and set(np.unique(predicted)) <= {0, 1}
    assert "val_subset_accuracy" in result.history[0] and "probe" not in result.scores  # the logreg setup is the probe
    assert 0 <= result.scores["finetuned"] <= 1
    loaded = featx.load(featx.save(model, tmp_path / "ml.featx"), cache_dir=tmp_path / "c2")
    np.testing.assert_allclose(loaded.predict_proba(X), proba, rtol=1e-5, atol=1e-6)
    assert loaded.predict(X) == predicted if form == "lists" else (loaded.predict(X) == predicted).all()


def test_multilabel_lp_ft_at_lr_0_keeps_the_probe_probabilities(tiny_bert_dir, tmp_path):
    X, y = text_tags()
    setup = featx.TransferClassifier(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X, y, strategy="lp-ft", epochs=1, lr=0.0, batch_size=8, progress=False)
    np.testing.assert_allclose(result.model.predict_proba(X), result.frozen.predict_proba(X), atol=1e-5)
    assert result.scores["finetuned"] == result.scores["frozen"]


def test_task_that_contradicts_the_setup(tiny_bert_dir, tmp_path):
    X, y = text_regression()
    with pytest.raises(featx.BadInputError, match="task='regression'.*TransferClassifier"):
        featx.finetune(featx.TransferClassifier(f"hf/{tiny_bert_dir}"), X, y, task="regression", progress=False)
    with pytest.raises(featx.BadInputError, match="TransferRegressor"):  # continuous y, classifier by default
        featx.finetune(f"hf/{tiny_bert_dir}", X, y, cache_dir=tmp_path, progress=False)


def test_regression_on_images_at_lr_0_keeps_the_probe_predictions(tmp_path):
    """A timm network with BatchNorm: the red channel's level (0..1) as the target."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths, y = [], []
    for i in range(16):
        pixels = rng.integers(0, 60, size=(20, 20, 3), dtype=np.uint8)
        pixels[..., 0] = red = int(rng.integers(0, 256))
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
        y.append(red / 255)
    setup = featx.TransferRegressor("timm/test_efficientnet", backbone_options={"image_size": 32, "pretrained": False},
                                    cache_dir=tmp_path / "c")
    result = featx.finetune(setup, paths, np.asarray(y), strategy="lp-ft", epochs=1, lr=0.0, batch_size=4,
                            val_size=0.25, progress=False)
    np.testing.assert_allclose(result.model.predict(paths), result.probe.predict(paths), atol=1e-5)
    assert result.scores["probe"] > 0.9  # the probe is a real fit, not a constant
