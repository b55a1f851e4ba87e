"""timm adapter: shapes, eval mode, layers from one pass, fingerprints that track every output change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import featx
from featx.backbones.timm import TimmBackbone
from featx.errors import BadInputError, UnknownBackboneError

MODEL = "test_efficientnet"  # a tiny timm model with BatchNorm


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(5)]


def backbone(**options):
    return featx.create_backbone(f"timm/{MODEL}", **{"image_size": 64, **options})


def test_shape_dtype_and_determinism_across_instances(images):
    a, b = backbone(), backbone()
    Za, Zb = a.embed_batch(images), b.embed_batch(images)
    assert Za.shape == (5, a.dim) and Za.dtype == np.float32 and a.dim == a.model.num_features
    np.testing.assert_array_equal(Za, Zb)  # fixed-seed random init
    assert a.fingerprint() == b.fingerprint()


def test_eval_mode_gives_batch_size_invariant_features(images):
    b = backbone()
    together = b.embed_batch(images)
    alone = np.concatenate([b.embed_batch([im]) for im in images])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    b.model.train()  # even if someone flips the model to training mode, BatchNorm stays in eval
    np.testing.assert_allclose(b.embed_batch(images[:1]), alone[:1], rtol=1e-4, atol=1e-5)
    assert not b.model.training


def test_layers_from_one_forward_pass_equal_single_layer_runs(images):
    both = backbone(layers=[-1, -2])
    last, second = backbone(layers=[-1]), backbone(layers=[-2])
    Z = both.embed_batch(images)
    views = both.views
    assert list(views) == [f"stage{i}" for i in sorted(int(k[5:]) for k in views)]
    assert Z.shape[1] == both.dim == last.dim + second.dim
    np.testing.assert_allclose(Z[:, views[next(iter(views))]], second.embed_batch(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Z[:, list(views.values())[-1]], last.embed_batch(images), rtol=1e-5, atol=1e-6)


def test_forward_is_counted_once_for_several_layers(images):
    b = backbone(layers=[-1, -2, -3])
    b.embed_batch(images[:1])  # builds the model and its inference copy
    calls = []
    for module in {id(m): m for m in (b.model, b._inference_model())}.values():
        original = module.forward_intermediates
        module.forward_intermediates = lambda *a, original=original, **k: calls.append(1) or original(*a, **k)
    b.embed_batch(images)
    assert len(calls) == 1


def plain_forward(b, images):
    """What a user's own loop computes: timm's eval transform, contiguous memory, no folding."""
    x = torch.stack([b.transform()(im) for im in images])
    with torch.inference_mode():
        return b.forward(x).numpy()


def randomise_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def test_batchnorm_is_folded_for_inference_and_the_model_stays_trainable(images):
    b = backbone()
    randomise_batchnorm(b.model)
    Z = b.embed_batch(images)
    fast = b._inference_model()
    norms = lambda m: sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())  # noqa: E731
    assert norms(fast) == 0 and norms(b.model) > 0  # folded copy for inference; the original keeps its BatchNorms
    assert fast.conv_stem.bias is not None and b.model.conv_stem.bias is None
    np.testing.assert_allclose(Z, plain_forward(b, images), rtol=1e-4, atol=1e-5)


def test_changed_weights_rebuild_the_inference_copy(images):
    b = backbone()
    before = b.embed_batch(images)
    randomise_batchnorm(b.model, seed=1)  # as fine-tuning or a state_dict load would change them
    with torch.no_grad():
        b.model.conv_stem.weight.mul_(1.5)
    np.testing.assert_array_equal(b.embed_batch(images), before)  # the folded copy until told
    b.weights_changed()
    after = b.embed_batch(images)
    assert not np.allclose(before, after, atol=1e-4)
    np.testing.assert_allclose(after, plain_forward(b, images), rtol=1e-4, atol=1e-5)


class SharedConvOutput(torch.nn.Module):
    """conv -> BatchNorm, but the conv output also feeds a residual sum: folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4).eval()
        randomise_batchnorm(self)

    def forward_features(self, x):
        y = self.conv(x)
        return self.bn(y) + y

    def forward_head(self, x, pre_logits=True):
        return x.mean(dim=(2, 3))


def test_folding_that_changes_outputs_is_refused():
    from featx.backbones.timm import fold_batchnorm

    model = SharedConvOutput()
    x = torch.randn(2, 3, 64, 64)
    folded = fold_batchnorm(model, lambda m: m.forward_features(x))
    with torch.inference_mode():
        assert not torch.allclose(folded.forward_features(x), model.forward_features(x), atol=1e-3)
    assert backbone().optimize(model) is model  # the outputs check keeps the original


@pytest.mark.parametrize("change", [{"pooling": "max"}, {"layers": [-1]}, {"image_size": 72}, {"precision": "bf16"}])
def test_fingerprint_changes_with_every_output_option(change):
    assert backbone(**change).fingerprint() != backbone().fingerprint()


def test_fingerprint_tracks_weights_file_content(tmp_path):
    reference = backbone()
    path = tmp_path / "w.pth"
    torch.save(reference.model.state_dict(), path)
    from_file = backbone(weights=str(path))
    assert from_file.fingerprint() != reference.fingerprint()  # file weights vs random init
    same = from_file.fingerprint()
    state = reference.model.state_dict()
    state[next(k for k in state if k.endswith("weight"))] += 1.0
    torch.save(state, path)
    assert backbone(weights=str(path)).fingerprint() != same


def test_weights_file_is_loaded(tmp_path, images):
    donor = backbone()
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in donor.model.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    loaded = backbone(weights=str(tmp_path / "w.pth"))
    assert torch.equal(loaded.model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert not np.allclose(loaded.embed_batch(images), donor.embed_batch(images))


def test_vit_token_pooling(images):
    vit = featx.create_backbone("timm/test_vit", pooling="token")
    avg = featx.create_backbone("timm/test_vit", pooling="avg")
    Zt, Za = vit.embed_batch(images[:2]), avg.embed_batch(images[:2])
    assert Zt.shape == Za.shape == (2, vit.dim)
    assert not np.allclose(Zt, Za)


def test_construction_is_cheap_and_lazy():
    b = backbone(layers=[-1])
    b.fingerprint()
    assert b._model is None  # no weights loaded until the first embedding


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(UnknownBackboneError, match="resnet18"):
        featx.create_backbone("timm/resnet18x").dim
    with pytest.raises(BadInputError, match="weights=<local state_dict file>"):
        featx.create_backbone("timm/resnet18", pretrained=True)
    with pytest.raises(BadInputError, match="does not exist"):
        featx.create_backbone("timm/resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(BadInputError, match="feature stages"):
        backbone(layers=[-40]).dim
    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(BadInputError, match="lacks"):
        backbone(weights=str(bad)).model


def test_timm_namespace_lists_models():
    names = featx.list_backbones("timm/resnet1*")
    assert "timm/resnet18" in names and all(n.startswith("timm/resnet1") for n in names)


def test_dataloader_workers_give_the_same_vectors(image_folder, tmp_path):
    from featx.data.loaders import load_image_folder

    paths, _ = load_image_folder(image_folder)
    serial = featx.Embedder(f"timm/{MODEL}", backbone_options={"image_size": 64}, cache_dir=tmp_path / "a").transform(paths)
    workers = featx.Embedder(f"timm/{MODEL}", backbone_options={"image_size": 64}, cache_dir=tmp_path / "b",
                             num_workers=2, batch_size=4).transform(paths)
    np.testing.assert_allclose(workers, serial, rtol=1e-5, atol=1e-6)


def test_a_chunk_holds_model_sized_pixels_not_whole_photos(tmp_path):
    from featx.data.samples import as_samples
    from featx.extraction.pipeline import _load

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(photo)
    b = backbone()
    good, items = _load(as_samples([str(photo)], "image"), [0], b, num_workers=0, failed={})
    assert good == [0] and items[0].shape == (64, 64, 3) and items[0].dtype == np.uint8
    np.testing.assert_allclose(b.embed_batch(items), b.embed_batch([Image.open(photo).convert("RGB")]), rtol=1e-6)


@pytest.mark.parametrize("setting, expected", [(None, "False"), ("1", "True")])
def test_the_host_allocator_is_changed_only_when_asked(setting, expected):
    """A library must not change its host process's allocator: only FEATX_MALLOC_TUNING=1 (or a
    call to tune_cpu_allocator) does."""
    import os
    import subprocess
    import sys

    code = ("import featx, numpy as np, featx.backbones.base as base; "
            "b = featx.create_backbone('timm/test_efficientnet', image_size=32, pretrained=False, device='cpu'); "
            "b.embed_batch([np.zeros((32, 32, 3), np.uint8)]); print(base._allocator_tuned)")
    env = {k: v for k, v in os.environ.items() if k != "FEATX_MALLOC_TUNING"}
    env.update({} if setting is None else {"FEATX_MALLOC_TUNING": setting})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == [expected]


def test_options_random_init_and_one_layer_as_an_int():
    b = backbone(layers=-1)
    assert b.layers == [-1] and b.fingerprint() == backbone(layers=[-1]).fingerprint()
    assert b.random_init and b.options == {"image_size": 64, "pooling": "avg", "layers": [-1], "weights": "random init"}
    assert featx.create_backbone("timm/test_vit").options["pooling"] == "token"  # the model's own
    assert backbone(pooling="avgmax").options["pooling"] == "avgmax"


def test_options_name_the_weights_file(tmp_path):
    torch.save(backbone().model.state_dict(), tmp_path / "mine.pth")
    b = backbone(weights=tmp_path / "mine.pth")
    assert not b.random_init and b.options["weights"] == "mine.pth"


@pytest.mark.parametrize("pooling, valid", [("foo", "Valid: avg, max, avgmax (default: avg)"),
                                            ("map", "Valid: avg, max, avgmax, token (default: token)")])
def test_pooling_is_checked_against_the_model(pooling, valid):
    name = "test_vit" if pooling == "map" else MODEL
    with pytest.raises(BadInputError) as info:
        featx.create_backbone(f"timm/{name}", pooling=pooling).dim
    assert f"pooling={pooling!r}" in str(info.value) and valid in str(info.value)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", 0])
def test_unknown_devices_are_named(device):
    from featx.backbones.base import resolve_device

    with pytest.raises(BadInputError, match=f"device={device!r} is not a device featx knows; use 'auto', 'cpu'"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_named(image_folder, tmp_path):
    from featx.data.loaders import load_image_folder

    paths, _ = load_image_folder(image_folder)
    with pytest.raises(BadInputError, match="device='cuda' but torch sees no CUDA GPUs here; use device='auto'"):
        featx.extract(backbone(), paths, device="cuda", cache_dir=tmp_path)
