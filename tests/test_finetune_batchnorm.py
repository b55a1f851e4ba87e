"""LP-FT starts from the probe and stays there at lr=0 (BatchNorm included); trained weights reach predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import featx
from featx.data.loaders import load_image_folder

IMAGE = "timm/test_efficientnet"  # a tiny EfficientNet: 13 BatchNorm layers, folded at inference
IMAGE_OPTIONS = {"image_size": 32, "pretrained": False}


@pytest.fixture
def images(image_folder):
    return load_image_folder(image_folder)


def image_setup(tmp_path):
    return featx.TransferClassifier(IMAGE, backbone_options=IMAGE_OPTIONS, cache_dir=tmp_path / "c")


def test_lp_ft_at_lr_0_keeps_the_probe_probabilities_on_images(images, tmp_path):
    paths, labels = images
    result = featx.finetune(image_setup(tmp_path), paths, labels, strategy="lp-ft", epochs=2, lr=0.0, batch_size=4,
                            val_size=0.34, progress=False)
    assert result.model.batchnorm == "frozen"
    expected = result.frozen.predict_proba(paths)
    assert expected.max(axis=1).min() < 0.99  # not a saturated probe: the comparison below means something
    np.testing.assert_allclose(result.model.predict_proba(paths), expected, atol=1e-5)
    assert result.scores["finetuned"] == result.scores["frozen"]


def test_updating_batchnorm_statistics_moves_the_predictions_even_at_lr_0(images, tmp_path):
    paths, labels = images
    result = featx.finetune(image_setup(tmp_path), paths, labels, strategy="lp-ft", epochs=1, lr=0.0, batch_size=4,
                            val_size=0.34, batchnorm="update", progress=False)
    drift = np.abs(result.model.predict_proba(paths) - result.frozen.predict_proba(paths)).max()
    assert drift > 1e-3


def test_lp_ft_at_lr_0_keeps_the_probe_probabilities_on_text(tiny_bert_dir, tmp_path):
    from test_finetune import text_task

    X, y = text_task(30)
    setup = featx.TransferClassifier(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X, y, strategy="lp-ft", epochs=2, lr=0.0, batch_size=8, progress=False)
    np.testing.assert_allclose(result.model.predict_proba(X), result.frozen.predict_proba(X), atol=1e-5)


def test_predictions_use_the_trained_weights(images, tmp_path):
    """The cached, BatchNorm-folded inference path serves what the trained network computes."""
    paths, labels = images
    result = featx.finetune(image_setup(tmp_path), paths, labels, strategy="full", epochs=1, lr=1e-2, batch_size=4,
                            val_size=0.34, progress=False)
    model = result.model
    base = model.backbone_.base
    pixels = torch.stack([base.transform()(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        direct = model.network_(pixels).softmax(-1).numpy()
    np.testing.assert_allclose(model.predict_proba(paths), direct, atol=1e-5)
    frozen_features = featx.extract(featx.create_backbone(IMAGE, **IMAGE_OPTIONS), paths, cache_dir=tmp_path / "c").vectors
    tuned_features = featx.extract(model.backbone_, paths, cache_dir=tmp_path / "c").vectors
    assert np.abs(tuned_features - frozen_features).max() > 1e-3  # the weights did move


@pytest.mark.integration
def test_one_epoch_of_lp_ft_on_textile_images_does_not_lose_to_the_probe(tmp_path):
    """A smaller variant of examples/finetune_textile.py (64 px, 300 training images): the
    fine-tuned model's held-out accuracy stays within 2 points of the frozen probe's, or above."""
    from sklearn.model_selection import train_test_split

    import conformal_clip_data

    paths, labels = load_image_folder(conformal_clip_data.textile_simulated_root())
    keep = np.random.default_rng(0).permutation(len(paths))[:600]  # the 600 images the demo's quick mode used
    paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    X_train, X_test, y_train, y_test = train_test_split(paths, labels, train_size=300, test_size=200,
                                                        stratify=labels, random_state=0)
    setup = featx.TransferClassifier("timm/tf_efficientnet_lite0", backbone_options={"image_size": 64},
                                     head_params={"C": 10.0}, cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X_train, y_train, strategy="lp-ft", epochs=1, lr=1e-4, batch_size=32,
                            X_test=X_test, y_test=y_test, progress=False)
    assert result.scores["frozen"] > 0.5  # the probe is far above chance (1/3): there is something to keep
    assert result.scores["finetuned"] >= result.scores["frozen"] - 0.02, result.scores
