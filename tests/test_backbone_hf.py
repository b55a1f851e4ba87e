"""transformers adapter on a tiny random BERT saved to disk and loaded through the public path."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featx
from featx.errors import BadInputError, UnknownBackboneError

TEXTS = ["the cat sat", "a dog sat on the big mat today", "stock market fell", "house", "the small dog rose quietly"]


def test_shape_and_values_match_a_plain_transformers_forward(tiny_bert_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    b = featx.create_backbone(f"hf/{tiny_bert_dir}")
    Z = b.embed_many(TEXTS, batch_size=2)
    assert Z.shape == (5, 32) and Z.dtype == np.float32
    tok, model = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()
    for text, row in zip(TEXTS, Z):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            expected = model(**enc).last_hidden_state.mean(1)[0].numpy()
        np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-5)


def test_length_sorted_batches_equal_one_at_a_time(tiny_bert_dir):
    b = featx.create_backbone(f"hf/{tiny_bert_dir}")
    batched = b.embed_many(TEXTS, batch_size=3)
    alone = np.concatenate([b.embed_many([t], batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)


def test_batches_are_sorted_by_token_length(tiny_bert_dir):
    b = featx.create_backbone(f"hf/{tiny_bert_dir}")
    widths = []
    original = b.forward
    b.forward = lambda ids, mask: widths.append(ids.shape[1]) or original(ids, mask)
    b.embed_many(TEXTS, batch_size=2)
    assert widths == sorted(widths, reverse=True) and len(widths) == 3


def test_cls_pooling_layers_normalize(tiny_bert_dir):
    cls = featx.create_backbone(f"hf/{tiny_bert_dir}", pooling="cls")
    mean = featx.create_backbone(f"hf/{tiny_bert_dir}")
    assert not np.allclose(cls.embed_many(TEXTS, 8), mean.embed_many(TEXTS, 8))
    layered = featx.create_backbone(f"hf/{tiny_bert_dir}", layers=[-1, -2], normalize=True)
    Z = layered.embed_many(TEXTS, 8)
    assert Z.shape == (5, 64) and list(layered.views) == ["layer-1", "layer-2"]
    np.testing.assert_allclose(np.linalg.norm(Z[:, layered.views["layer-1"]], axis=1), 1.0, rtol=1e-5)
    last = featx.create_backbone(f"hf/{tiny_bert_dir}", normalize=True).embed_many(TEXTS, 8)
    np.testing.assert_allclose(Z[:, :32], last, rtol=1e-4, atol=1e-5)


def test_truncation_by_max_length(tiny_bert_dir):
    long_text = " ".join(["cat"] * 200)
    short = featx.create_backbone(f"hf/{tiny_bert_dir}", max_length=8)
    assert short.embed_many([long_text], 1).shape == (1, 32)
    assert short.fingerprint() != featx.create_backbone(f"hf/{tiny_bert_dir}").fingerprint()


def test_fingerprint_tracks_weights_and_options_without_loading(tiny_bert_dir, tmp_path):
    import shutil

    b = featx.create_backbone(f"hf/{tiny_bert_dir}")
    fp = b.fingerprint()
    assert b._model is None
    for change in ({"pooling": "cls"}, {"layers": [-1]}, {"normalize": True}, {"precision": "bf16"}):
        assert featx.create_backbone(f"hf/{tiny_bert_dir}", **change).fingerprint() != fp
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    assert featx.create_backbone(f"hf/{copy}").fingerprint() == fp  # content, not path
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert featx.create_backbone(f"hf/{copy}").fingerprint() != fp


def test_missing_directory_is_an_unknown_backbone(tmp_path):
    with pytest.raises(UnknownBackboneError, match="Only local folders"):
        featx.create_backbone(f"hf/{tmp_path / 'nope'}")


def test_cache_round_trip_through_embedder(tiny_bert_dir, tmp_path):
    backbone = featx.create_backbone(f"hf/{tiny_bert_dir}")
    first = featx.extract(backbone, TEXTS, cache_dir=tmp_path / "c")
    assert first.stats.embedded == 5
    np.testing.assert_array_equal(featx.Embedder(backbone, cache_dir=tmp_path / "c").transform(TEXTS[::-1]), first.vectors[::-1])
    assert featx.extract(backbone, TEXTS, cache_dir=tmp_path / "c").stats.embedded == 0


def test_one_layer_as_an_int_options_and_weights(tiny_bert_dir):
    one = featx.create_backbone(f"hf/{tiny_bert_dir}", layers=-1)
    assert one.layers == [-1] and one.fingerprint() == featx.create_backbone(f"hf/{tiny_bert_dir}", layers=[-1]).fingerprint()
    assert one.options == {"pooling": "mean", "layers": [-1], "max_length": 64, "normalize": False}
    assert not one.random_init  # weights come from the folder
    json.dumps(one.options)


@pytest.mark.parametrize("option, named", [
    ({"normalize": "yes"}, "normalize='yes' must be True or False"), ({"layers": [-9]}, "layers=[-9] out of range"),
    ({"max_length": 0}, "max_length=0"), ({"pooling": "max"}, "pooling='max'"), ({"layers": []}, "layers=[]"),
])
def test_bad_options_are_named(tiny_bert_dir, option, named):
    with pytest.raises(BadInputError) as info:
        featx.create_backbone(f"hf/{tiny_bert_dir}", **option)
    assert named in str(info.value)
