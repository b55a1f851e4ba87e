"""Fine-tune stage domain adaptation: AdaBN's statistics, DANN's gradient reversal, their inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featx
from featx.data.samples import as_samples
from featx.errors import BadInputError
from featx.finetuning.training import adapt_batchnorm, batchnorm_layers, reverse_gradient

IMAGE = "timm/test_efficientnet"  # a tiny random EfficientNet with BatchNorm
IMAGE_OPTIONS = {"image_size": 32, "pretrained": False}


def coloured(n: int, seed: int, brightness: int) -> tuple[np.ndarray, list[str]]:
    """``n`` 20×20 images, red or blue (alternating), around ``brightness``: the source is dark, the target bright."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 20, 20, 3)).astype(np.uint8) + np.uint8(brightness)
    labels = ["red" if i % 2 else "blue" for i in range(n)]
    for image, label in zip(images, labels):
        image[..., 0 if label == "red" else 2] = 215
    return images, labels


def setup(tmp_path):
    return featx.TransferClassifier(IMAGE, backbone_options=IMAGE_OPTIONS, cache_dir=tmp_path / "c")


def tune(tmp_path, **params):
    X, y = coloured(12, 0, 0)
    X_target, _ = coloured(8, 1, 120)  # two target batches of 4: their average is the mean
    result = featx.finetune(setup(tmp_path), X, y, strategy="full", epochs=1, lr=1e-3, batch_size=4, val_size=0.34,
                            progress=False, X_target=X_target, **params)
    return result, X_target


def test_adabn_sets_running_statistics_to_the_target_batch_statistics(tmp_path):
    result, X_target = tune(tmp_path, adapt="adabn")
    model = result.model
    network = model.network_
    first = batchnorm_layers(network)[0]  # fed by the stem convolution only, whose weights adaptation leaves alone
    seen = []
    handle = first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    samples = as_samples(X_target, "image")
    pixels = torch.stack([model.backbone_.base.transform()(samples.load(i)) for i in range(len(samples))])
    with torch.no_grad():
        network(pixels)
    handle.remove()
    torch.testing.assert_close(first.running_mean, seen[0].mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)

    adapted = {k: v.clone() for k, v in network.state_dict().items()}
    for layer in batchnorm_layers(network):  # other statistics, then AdaBN again: the same ones, in every layer
        layer.running_mean.add_(1.0)
        layer.running_var.mul_(3.0)
    adapt_batchnorm(network, model.backbone_.base, X_target, batch_size=4, device="cpu")
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, adapted[name], msg=name)


def test_adabn_changes_only_the_batchnorm_buffers_of_the_trained_network(tmp_path):
    adapted = tune(tmp_path / "a", adapt="adabn")[0].model.network_.state_dict()
    plain = featx.finetune(setup(tmp_path / "p"), *coloured(12, 0, 0), strategy="full", epochs=1, lr=1e-3,
                           batch_size=4, val_size=0.34, progress=False).model.network_.state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], adapted[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)


def test_adabn_statistics_survive_save_and_load(tmp_path):
    result, X_target = tune(tmp_path, adapt="adabn")
    featx.save(result.model, tmp_path / "m.featx")
    loaded = featx.load(tmp_path / "m.featx", cache_dir=tmp_path / "c2")
    assert loaded.adapt == "adabn" and loaded.fingerprint_ == result.model.fingerprint_
    np.testing.assert_allclose(loaded.predict_proba(X_target), result.model.predict_proba(X_target), atol=1e-6)
    torch.testing.assert_close(batchnorm_layers(loaded.network_)[0].running_mean,
                               batchnorm_layers(result.model.network_)[0].running_mean)


def test_gradient_reversal_is_identity_forward_and_negated_scaled_gradient_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.3, -0.6, -0.9]))


def test_dann_trains_with_a_domain_loss_and_predicts(tmp_path):
    result, X_target = tune(tmp_path, adapt="dann")
    row = result.history[0]
    assert 0.0 < row["domain_loss"] < 5.0 and np.isfinite(row["train_loss"])
    assert result.model.predict_proba(X_target).shape == (8, 2)
    assert "domain" not in "".join(result.model.network_.state_dict())  # the domain classifier is not kept


def test_adabn_on_a_network_without_batchnorm_names_the_option(tiny_bert_dir, tmp_path):
    from test_finetune import text_task

    X, y = text_task(12)
    tx = featx.TransferClassifier(f"hf/{tiny_bert_dir}", cache_dir=tmp_path / "c")
    with pytest.raises(BadInputError, match="adapt='adabn'.*no BatchNorm"):
        featx.finetune(tx, X, y, strategy="full", epochs=1, X_target=X[:4], adapt="adabn", progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"X_target": "images"}, "X_target was given but adapt=None"),
    ({"adapt": "dann"}, "adapt='dann'.*pass them as X_target="),
    ({"adapt": "adabn", "X_target": ["a news text", "another one"]}, "X_target holds texts.*embeds images"),
    ({"adapt": "adabn", "X_target": "one"}, "X_target holds 1 sample"),
    ({"adapt": "coral", "X_target": "images"}, "adapt"),
])
def test_target_arguments_are_checked_before_training(tmp_path, kwargs, message):
    X, y = coloured(12, 0, 0)
    if kwargs.get("X_target") == "images":
        kwargs["X_target"] = coloured(4, 1, 100)[0]
    elif kwargs.get("X_target") == "one":
        kwargs["X_target"] = coloured(1, 1, 100)[0]
    with pytest.raises(BadInputError, match=message):
        featx.finetune(setup(tmp_path), X, y, epochs=1, progress=False, **kwargs)
    assert not (tmp_path / "c").exists()  # nothing embedded
