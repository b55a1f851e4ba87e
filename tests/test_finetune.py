"""Fine-tuning strategies set exactly the intended trainable parameters and learning rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featx
from featx.data.loaders import load_image_folder
from featx.finetuning.strategies import blocks, build_network, head_from_probe, new_backbone, plan
from featx.finetuning.training import Targets

IMAGE = "timm/test_efficientnet"


def text_task(n=24):
    rng = np.random.default_rng(0)
    pos = ["the cat sat on the mat", "a big cat sat quietly", "the small cat sat today"]
    neg = ["stock market fell sharply", "the market rose today", "a stock fell quietly"]
    X = [(pos if i % 2 else neg)[rng.integers(3)] + " " + ("big" if rng.random() < 0.5 else "small") for i in range(n)]
    return X, ["cats" if i % 2 else "stocks" for i in range(n)]


@pytest.fixture
def image_net():
    backbone = new_backbone(IMAGE, {"image_size": 48, "pretrained": False})
    return backbone, build_network(backbone, 3)


def requires_grad_per_block(network, backbone):
    return [{network.get_parameter(f"encoder.{n}").requires_grad for n in names} for names in blocks(backbone)]


def apply(the_plan, network, epoch):
    for name, p in network.named_parameters():
        p.requires_grad_(name in the_plan.trainable_at[epoch])


def test_blocks_cover_every_encoder_parameter_once(image_net, tiny_bert_dir):
    backbone, network = image_net
    names = [n for block in blocks(backbone) for n in block]
    assert sorted(names) == sorted(n for n, _ in network.encoder.named_parameters())
    text = new_backbone(f"hf/{tiny_bert_dir}", None)
    text_blocks = blocks(text)
    assert len(text_blocks) == 2 + 2  # embeddings, layer.0, layer.1, pooler
    assert all("embeddings" in n for n in text_blocks[0]) and all(".layer.1." in n for n in text_blocks[2])


def test_full_trains_everything_at_one_rate(image_net):
    backbone, network = image_net
    p = plan("full", network, backbone, epochs=2, lr=1e-4, head_lr=1e-3)
    assert p.trainable_at[0] == p.trainable_at[1] == {n for n, _ in network.named_parameters()}
    assert [g["lr"] for g in p.groups[:-1]] == [1e-4] * len(blocks(backbone)) and p.groups[-1]["lr"] == 1e-3


def test_freeze_keeps_the_first_k_blocks_frozen(image_net):
    backbone, network = image_net
    n = len(blocks(backbone))
    apply(plan("freeze", network, backbone, epochs=1, lr=1e-4, head_lr=1e-3, freeze_blocks=2), network, 0)
    assert requires_grad_per_block(network, backbone) == [{False}] * 2 + [{True}] * (n - 2)
    assert network.head.weight.requires_grad
    with pytest.raises(featx.BadInputError, match="blocks"):
        plan("freeze", network, backbone, epochs=1, lr=1e-4, head_lr=1e-3, freeze_blocks=n + 1)


def test_llrd_decays_per_block(image_net):
    backbone, network = image_net
    n = len(blocks(backbone))
    p = plan("llrd", network, backbone, epochs=1, lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    for i, group in enumerate(p.groups[:-1]):
        assert group["block"] == i and group["lr"] == pytest.approx(1e-3 * 0.5 ** (n - i))
    assert p.groups[-1]["names"] == ["head.weight", "head.bias"] and p.groups[-1]["lr"] == 1e-2


@pytest.mark.parametrize("every", [1, 2])
def test_gradual_unfreezes_one_block_from_the_top_on_schedule(image_net, every):
    backbone, network = image_net
    n = len(blocks(backbone))
    p = plan("gradual", network, backbone, epochs=3 * every, lr=1e-4, head_lr=1e-3, unfreeze_every=every)
    for epoch in range(3 * every):
        apply(p, network, epoch)
        opened = epoch // every
        assert requires_grad_per_block(network, backbone) == [{False}] * (n - opened) + [{True}] * opened
        assert network.head.weight.requires_grad


def test_unknown_strategy(image_net):
    backbone, network = image_net
    with pytest.raises(featx.BadInputError, match="lp-ft"):
        plan("sideways", network, backbone, epochs=1, lr=1e-4, head_lr=1e-3)


def test_lp_ft_head_starts_from_the_probe(tiny_bert_dir, tmp_path):
    X, y = text_task()
    probe = featx.TransferClassifier(f"hf/{tiny_bert_dir}", cache_dir=tmp_path).fit(X, y)
    backbone = new_backbone(probe.backbone, None)
    network = build_network(backbone, 2)
    head_from_probe(network.head, probe, Targets("classification", np.zeros(len(y)), 2, classes=probe.classes_))
    coef = probe.head_.model_[-1].coef_
    np.testing.assert_allclose(network.head.weight.detach().numpy(), np.vstack([np.zeros_like(coef), coef]), rtol=1e-6)
    # the initial network reproduces the probe's probabilities exactly
    ids_mask = backbone.tokenizer(X[:4], padding=True, return_tensors="pt")
    with torch.inference_mode():
        proba = network(ids_mask["input_ids"], ids_mask["attention_mask"]).softmax(-1).numpy()
    np.testing.assert_allclose(proba, probe.predict_proba(X[:4]), rtol=1e-4, atol=1e-5)


def test_gradual_training_unfreezes_on_the_right_epochs_and_restores_the_best(tiny_bert_dir, tmp_path):
    from sklearn.model_selection import train_test_split

    X, y = text_task(40)
    result = featx.finetune(f"hf/{tiny_bert_dir}", X, y, strategy="gradual", epochs=4, lr=5e-2, batch_size=8,
                            patience=10, cache_dir=tmp_path / "c", run_dir=tmp_path / "run", progress=False)
    backbone = new_backbone(f"hf/{tiny_bert_dir}", None)
    sizes = [sum(p.numel() for n in names for p in [backbone.model.get_parameter(n)]) for names in blocks(backbone)]
    head = 32 * 2 + 2
    assert [r["trainable_params"] for r in result.history] == [head + sum(sizes[len(sizes) - k:]) for k in range(4)]
    best = max(range(4), key=lambda e: (result.history[e]["val_accuracy"], -result.history[e]["val_loss"]))
    assert result.best_epoch == best
    _, val = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    assert result.model.score([X[i] for i in val], np.asarray(y)[val]) == pytest.approx(result.history[best]["val_accuracy"])
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_loss,val_accuracy") and len(log) == 5
    assert (tmp_path / "run" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.keep in ("frozen", "finetuned") and set(result.scores) == {"frozen", "finetuned"}
    assert (tmp_path / "run" / "finetuned.featx").exists() and (tmp_path / "run" / "frozen.featx").exists()


def test_image_finetune_save_load_and_new_fingerprint(image_folder, tmp_path):
    paths, labels = load_image_folder(image_folder)
    probe = featx.TransferClassifier(IMAGE, backbone_options={"image_size": 48, "pretrained": False},
                                     cache_dir=tmp_path / "c").fit(paths, labels)
    result = featx.finetune(probe, paths, labels, strategy="lp-ft", epochs=2, batch_size=4, val_size=0.34,
                            cache_dir=tmp_path / "c", progress=False)
    model = result.model
    assert model.fingerprint_ != probe.fingerprint_
    path = featx.save(model, tmp_path / "ft.featx")
    loaded = featx.load(path, cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(loaded.predict(paths), model.predict(paths))
    np.testing.assert_allclose(loaded.predict_proba(paths), model.predict_proba(paths), rtol=1e-5, atol=1e-6)
    assert loaded.fingerprint_ == model.fingerprint_
    import zipfile

    assert sorted(zipfile.ZipFile(path).namelist()) == ["manifest.json", "weights.safetensors"]
