"""A catalogue of inputs a user can get wrong: each gets its exact error type and a message naming it.

``CASES`` maps a case name to a builder ``(tmp_path) -> (action, error type, text the message must
contain)``; the text is the offending input (a path, a row, a name) wherever there is one.
"""

from __future__ import annotations

import errno
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge

import featx
from featx.cache import CacheError
from featx.data.loaders import load_image_folder, load_text_table
from featx.errors import BadInputError, PluginError, UnknownBackboneError, UnknownHeadError

from conftest import CountingTextBackbone


def colorhist():
    return featx.create_backbone("acme/colorhist", bins=4)


def embed(X, **kw):
    return lambda: featx.extract(colorhist(), X, **kw)


def embed_text(X, cache):
    return lambda: featx.extract(CountingTextBackbone(), X, cache_dir=cache)


def embed_text_with(tmp_path, **kw):
    return lambda: featx.extract(CountingTextBackbone(), ["a"], cache_dir=tmp_path / "c", **kw)


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def good_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    return str(path)


def fit(X, y, cache):
    return lambda: featx.TransferClassifier(CountingTextBackbone(), cache_dir=cache).fit(X, y)


def fitted_model(tmp_path):
    paths = [good_png(tmp_path / "m" / f"{c}{i}.png") for c in "ab" for i in range(3)]
    for i, p in enumerate(paths[3:]):
        Image.fromarray(np.full((8, 8, 3), 30 + i, np.uint8)).save(p)
    clf = featx.TransferClassifier("acme/colorhist", head="knn", head_params={"n_neighbors": 1},
                                   cache_dir=tmp_path / "c").fit(paths, list("aaabbb"))
    return featx.save(clf, tmp_path / "model.featx")


def tampered(tmp_path, manifest_change):
    path = fitted_model(tmp_path)
    out = tmp_path / "tampered.featx"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        manifest = json.loads(src.read("manifest.json"))
        manifest_change(manifest)
        dst.writestr("manifest.json", json.dumps(manifest))
        dst.writestr("model.skops", src.read("model.skops"))
    return str(out)


def failing_replace(code):
    def action(tmp_path, monkeypatch):
        import featx.cache as cache_module

        real = cache_module.os.replace

        def replace(src, dst):
            if "shard-" in str(dst):
                raise OSError(code, {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system"}[code])
            return real(src, dst)

        monkeypatch.setattr(cache_module.os, "replace", replace)
        return embed_text(["x"], tmp_path / "c")
    return action


def image_tree(root, flat=False):
    """Two classes of two PNGs each under root/<class>/ (or all four directly in root)."""
    paths = [good_png(root / ("" if flat else c) / f"{c}{i}.png") for c in ("cat", "dog") for i in range(2)]
    return paths, ["cat", "cat", "dog", "dog"]


def fit_with(tmp_path, X=None, y=None, backbone=None, **params):
    X = ["a", "b", "c", "d"] if X is None else X
    y = ["x", "x", "y", "y"] if y is None else y
    backbone = backbone or CountingTextBackbone()
    return lambda: featx.TransferClassifier(backbone, cache_dir=tmp_path / "c", **params).fit(X, y)


def dataframe():
    import pandas as pd

    return pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})


ARTICLE = "Ad sales boost Time Warner profit. Quarterly profits at US media giant TimeWarner jumped 76% " * 30


class Broken(CountingTextBackbone):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def embed_batch(self, items):
        return self.output(len(items), self.dim)


CASES = {
    # unreadable images
    "zero-byte image": lambda t: (embed([write(t / "empty.jpg", b"")], cache_dir=t / "c"), BadInputError, "empty.jpg"),
    "truncated jpeg": lambda t: (embed([write(t / "cut.jpg", (lambda b: b[: len(b) // 3])(_jpeg_bytes()))], cache_dir=t / "c"),
                                 BadInputError, "cut.jpg"),
    "text file named .jpg": lambda t: (embed([write(t / "notes.jpg", b"hello, not a picture")], cache_dir=t / "c"),
                                       BadInputError, "notes.jpg"),
    "missing image file": lambda t: (embed([str(t / "gone.png")], cache_dir=t / "c"), BadInputError, "gone.png"),
    "directory as image": lambda t: (embed([str(t)], cache_dir=t / "c"), BadInputError, str(t)),
    "every bad file listed": lambda t: (embed([write(t / "a.jpg", b""), good_png(t / "ok.png"), write(t / "b.jpg", b"x")],
                                              cache_dir=t / "c"), BadInputError, "b.jpg"),
    "float image array": lambda t: (embed(np.zeros((2, 8, 8, 3)), cache_dir=t / "c"), BadInputError, "float64"),
    "five-channel array": lambda t: (embed([np.zeros((8, 8, 5), np.uint8)], cache_dir=t / "c"), BadInputError, "(8, 8, 5)"),
    "1-d image array": lambda t: (embed(np.zeros(10, np.uint8), cache_dir=t / "c"), BadInputError, "(10,)"),
    "missing image folder": lambda t: (lambda: load_image_folder(t / "nope"), BadInputError, "nope"),
    "folder without images": lambda t: (lambda: load_image_folder(write(t / "d" / "x" / "a.txt", b"hi")[:-8]),
                                        BadInputError, "no images found"),
    # wrong kind of sample for the backbone
    "text to an image backbone": lambda t: (embed(["a cat"], cache_dir=t / "c"), BadInputError, "a cat"),
    "image to a text backbone": lambda t: (embed_text([Image.new("RGB", (4, 4))], t / "c"), BadInputError, "sample 0 is an image"),
    "images mixed with texts": lambda t: (embed_text(["a", np.zeros((4, 4, 3), np.uint8)], t / "c"), BadInputError, "sample 1"),
    "empty text": lambda t: (embed_text(["fine", ""], t / "c"), BadInputError, "sample 1 is an empty text"),
    "None text": lambda t: (embed_text(["fine", None], t / "c"), BadInputError, "sample 1 is NoneType"),
    "bytes text": lambda t: (embed_text([b"raw"], t / "c"), BadInputError, "sample 0 is bytes"),
    "a single string as X": lambda t: (embed_text("just one string", t / "c"), BadInputError, "got str"),
    # text files
    "non-UTF-8 csv": lambda t: (lambda: load_text_table(write(t / "latin.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"))),
                                BadInputError, "latin.csv"),
    "csv without the text column": lambda t: (lambda: load_text_table(write(t / "cols.csv", b"body,label\nx,a\n")),
                                              BadInputError, "'text'"),
    "broken jsonl line": lambda t: (lambda: load_text_table(write(t / "bad.jsonl", b'{"text": "a"}\n{"text": \n')),
                                    BadInputError, "line 2"),
    "unsupported table format": lambda t: (lambda: load_text_table(write(t / "sheet.xlsx", b"PK")), BadInputError, "sheet.xlsx"),
    "empty csv": lambda t: (lambda: load_text_table(write(t / "empty.csv", b"text,label\n")), BadInputError, "empty.csv"),
    # labels
    "None label": lambda t: (fit(["a", "b", "c"], ["x", None, "y"], t / "c"), BadInputError, "rows [1]"),
    "NaN label": lambda t: (fit(["a", "b", "c"], [1.0, float("nan"), 2.0], t / "c"), BadInputError, "rows [1]"),
    "NaN label in a float array": lambda t: (fit(["a", "b", "c"], np.array([1.0, 2.0, np.nan]), t / "c"), BadInputError, "rows [2]"),
    "empty label in a str array": lambda t: (fit(["a", "b", "c"], np.array(["", "x", "y"]), t / "c"), BadInputError, "rows [0]"),
    "single class": lambda t: (fit(["a", "b"], ["x", "x"], t / "c"), BadInputError, "'x'"),
    "len(X) != len(y)": lambda t: (fit(["a", "b", "c"], ["x", "y"], t / "c"), BadInputError, "len(y) = 2"),
    # names and estimator use
    "unknown backbone": lambda t: (lambda: featx.create_backbone("acme/colorhistt"), UnknownBackboneError, "acme/colorhist"),
    "unknown timm model": lambda t: (lambda: featx.create_backbone("timm/resnet18q").dim, UnknownBackboneError, "resnet18"),
    "missing hf folder": lambda t: (lambda: featx.create_backbone(f"hf/{t / 'no-model'}"), UnknownBackboneError, "no-model"),
    "unknown head": lambda t: (lambda: featx.TransferClassifier(CountingTextBackbone(), head="svn", cache_dir=t / "c")
                               .fit(["a", "b"], ["x", "y"]), UnknownHeadError, "svn"),
    "predict before fit": lambda t: (lambda: featx.TransferClassifier(CountingTextBackbone()).predict(["a"]),
                                     NotFittedError, "TransferClassifier"),
    "pretrained without weights": lambda t: (lambda: featx.create_backbone("timm/resnet18", pretrained=True),
                                             BadInputError, "weights=<local state_dict file>"),
    "missing weights file": lambda t: (lambda: featx.create_backbone("timm/resnet18", weights=t / "w.pth"), BadInputError, "w.pth"),
    "image files to a text backbone": lambda t: (fit_with(t, *image_tree(t / "imgs")), BadInputError,
                                                 "cat0.png') is an image file, but backbone 'test/counting' embeds text"),
    "an article to an image backbone": lambda t: (embed([ARTICLE], cache_dir=t / "c"), BadInputError, "sample 0 is text ('Ad sales"),
    "input says image to a text backbone": lambda t: (lambda: featx.extract(CountingTextBackbone(), ["a"], input="image",
                                                                            cache_dir=t / "c"), BadInputError, "input='image' but backbone 'test/counting' embeds texts: choose an image backbone"),
    "input not auto/text/image": lambda t: (fit_with(t, input="pictures"), BadInputError, "'input' parameter"),
    "a DataFrame as X": lambda t: (embed_text(dataframe(), t / "c"), BadInputError, "df['text']"),
    "a generator as X": lambda t: (fit_with(t, X=(x for x in "abcd")), BadInputError, "generator"),
    "a 2-D array of texts": lambda t: (embed_text(np.array([["a", "b"], ["c", "d"]]), t / "c"), BadInputError, "(2, 2)"),
    # labels
    "2-D labels": lambda t: (fit_with(t, y=np.zeros((4, 2))), BadInputError, "multi-label"),
    "one-column labels": lambda t: (fit_with(t, y=np.zeros((4, 1))), BadInputError, "y.ravel()"),
    "multi-label lists mixed with labels": lambda t: (fit_with(t, y=[["x", "y"], "x", ["y"], ["y"]]), BadInputError,
                                                      "row 1 is 'x'"),
    "continuous labels": lambda t: (fit_with(t, X=[f"t{i}" for i in range(30)], y=np.linspace(0.05, 3.1, 30)),
                                    BadInputError, "continuous (30 distinct float values"),
    "single class as a numpy str": lambda t: (fit_with(t, y=np.array(["sports"] * 4)), BadInputError, "single class 'sports'"),
    "missing label column": lambda t: (lambda: load_text_table(write(t / "news.csv", b"text,category\nx,a\n")),
                                       BadInputError, "no label column 'label' (columns: ['text', 'category'])"),
    "flat image folder": lambda t: (lambda: load_image_folder(image_tree(t / "flat", flat=True) and t / "flat"),
                                    BadInputError, "holds 4 images directly inside but no class sub-folders"),
    # heads
    "head parameter in the wrong case": lambda t: (fit_with(t, head_params={"c": 1}), BadInputError, "no parameter 'c'. Did you mean: 'C'?"),
    "parameter of a scikit-learn head": lambda t: (fit_with(t, head=LogisticRegression(), head_params={"alpah": 1}),
                                                   BadInputError, "'alpah'"),
    "a regressor as head": lambda t: (fit_with(t, head=Ridge()), BadInputError, "head=Ridge() is a regressor"),
    "a head parameter out of range": lambda t: (fit_with(t, head_params={"C": -1.0}), BadInputError, "'C' parameter of LinearProbe"),
    # estimator parameters
    "negative batch size in an estimator": lambda t: (fit_with(t, batch_size=-3), BadInputError, "'batch_size' parameter"),
    "options for a backbone instance": lambda t: (fit_with(t, backbone_options={"bins": 2}), BadInputError, "'test/counting'"),
    # backbone options
    "misspelt backbone option": lambda t: (lambda: featx.create_backbone("timm/resnet18", imagesize=128), BadInputError,
                                           "no option 'imagesize'. Did you mean: 'image_size'?"),
    "unknown timm pooling": lambda t: (lambda: featx.create_backbone("timm/test_efficientnet", pooling="foo").dim,
                                       BadInputError, "pooling='foo'"),
    "token pooling on a CNN": lambda t: (lambda: featx.create_backbone("timm/test_efficientnet", pooling="token").dim,
                                         BadInputError, "Valid: avg, max, avgmax"),
    "pretrained as a string": lambda t: (lambda: featx.create_backbone("timm/resnet18", pretrained="false"),
                                         BadInputError, "pretrained='false' must be True or False"),
    "layers as a string": lambda t: (lambda: featx.create_backbone("timm/resnet18", layers="-1"), BadInputError, "layers='-1'"),
    # extraction settings
    "device gpu": lambda t: (lambda: featx.extract("timm/test_efficientnet", [good_png(t / "a.png")], device="gpu",
                                                   cache_dir=t / "c"), BadInputError, "device='gpu'"),
    "zero batch size": lambda t: (embed([good_png(t / "a.png")], cache_dir=t / "c", batch_size=0), BadInputError, "batch_size=0"),
    "negative batch size": lambda t: (embed([good_png(t / "a.png")], cache_dir=t / "c", batch_size=-3), BadInputError, "batch_size=-3"),
    "errors policy misspelt": lambda t: (embed_text_with(t, errors="ignore"), BadInputError, "errors='ignore'"),
    # the cache directory
    "cache dir is a file": lambda t: (embed_text(["x"], write(t / "plain.txt", b"x")), CacheError, "plain.txt"),
    # model files
    "missing model file": lambda t: (lambda: featx.load(t / "none.featx"), BadInputError, "none.featx"),
    "a folder as model file": lambda t: (lambda: featx.load(t), BadInputError, f"{str(t)!r} is a folder"),
    "saving an unfitted model": lambda t: (lambda: featx.save(featx.TransferClassifier(), t / "m.featx"), BadInputError,
                                           "it is not fitted"),
    "saving into a missing folder": lambda t: (lambda: featx.save(LogisticRegression().fit([[0], [1]], [0, 1]), t / "no" / "m.featx"),
                                               BadInputError, "folder " + repr(str(t / "no")) + " does not exist"),
    "saving something else": lambda t: (lambda: featx.save({"C": 1}, t / "m.featx"), BadInputError, "a dict"),
    "model file that is not a zip": lambda t: (lambda: featx.load(write(t / "junk.featx", b"junk")), BadInputError, "junk.featx"),
    "model with a forged fingerprint": lambda t: (lambda: featx.load(tampered(t, lambda m: m["backbones"][0].update(fingerprint="0" * 32))),
                                                  BadInputError, "0" * 32),
    "model with an unknown format": lambda t: (lambda: featx.load(tampered(t, lambda m: m.update(format="v99"))),
                                               BadInputError, "'v99'"),
    # plugins returning bad vectors
    "backbone returns wrong shape": lambda t: (lambda: featx.extract(Broken(lambda n, d: np.zeros((n, d + 1), np.float32)), ["a"], cache_dir=t / "c"),
                                               PluginError, "test/counting"),
    "backbone returns NaN": lambda t: (lambda: featx.extract(Broken(lambda n, d: np.full((n, d), np.nan, np.float32)), ["a"], cache_dir=t / "c"),
                                       PluginError, "NaN"),
    "backbone returns integers": lambda t: (lambda: featx.extract(Broken(lambda n, d: np.zeros((n, d), np.int64)), ["a"], cache_dir=t / "c"),
                                            PluginError, "int64"),
    "backbone returns a list": lambda t: (lambda: featx.extract(Broken(lambda n, d: [[0.0] * d] * n), ["a"], cache_dir=t / "c"),
                                          PluginError, "list"),
}

MONKEYPATCHED = {
    "full disk": (failing_replace(errno.ENOSPC), CacheError, "disk is full"),
    "read-only filesystem": (failing_replace(errno.EROFS), CacheError, "read-only"),
}


def _jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_catalogue_is_large_enough():
    assert len(CASES) + len(MONKEYPATCHED) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    action, error, named = CASES[name](tmp_path)
    with pytest.raises(error) as info:
        action()
    assert type(info.value) is error or error is NotFittedError
    assert named in str(info.value), f"{name}: message does not name {named!r}: {info.value}"


@pytest.mark.parametrize("name", list(MONKEYPATCHED))
def test_unwritable_cache_keeps_committed_data(name, tmp_path, monkeypatch):
    featx.extract(CountingTextBackbone(), ["kept"], cache_dir=tmp_path / "c")
    build, error, text = MONKEYPATCHED[name]
    action = build(tmp_path, monkeypatch)
    with pytest.raises(error, match=text) as info:
        action()
    assert str(tmp_path / "c") in str(info.value)
    monkeypatch.undo()
    (store,) = featx.EmbeddingCache(tmp_path / "c").stores()
    assert len(store) == 1 and store.verify().ok and not list(store.path.glob(".tmp-*"))


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "RGBA", "LA", "L", "1"])
def test_unusual_image_modes_are_converted_not_crashed(mode, tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray((rng.integers(0, 65535, (16, 16))).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    Z = featx.extract(colorhist(), [str(path)], cache_dir=tmp_path / "c").vectors
    assert Z.shape == (1, 12) and np.isfinite(Z).all() and Z.sum() == pytest.approx(3.0, rel=1e-5)


def test_sixteen_bit_images_keep_their_contrast(tmp_path):
    from featx.data.samples import as_samples

    ramp = (np.arange(256, dtype=np.uint16)[None, :].repeat(4, 0) * 256)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    pixels = np.asarray(as_samples([str(tmp_path / "ramp.png")], "image").load(0))
    assert pixels.min() == 0 and pixels.max() == 255  # scaled, not clipped to white


def test_skip_policy_reports_every_skipped_file(tmp_path):
    paths = [good_png(tmp_path / "ok.png"), write(tmp_path / "bad.jpg", b""), good_png(tmp_path / "ok2.png")]
    result = featx.extract(colorhist(), paths, cache_dir=tmp_path / "c", errors="skip")
    assert result.ok.tolist() == [True, False, True]
    assert np.isnan(result.vectors[1]).all() and np.isfinite(result.vectors[[0, 2]]).all()
    assert len(result.stats.failed) == 1 and "bad.jpg" in result.stats.failed[0]
    dark = str(tmp_path / "dark.png")
    Image.fromarray(np.full((8, 8, 3), 20, np.uint8)).save(dark)
    clf = featx.TransferClassifier("acme/colorhist", head="knn", head_params={"n_neighbors": 1},
                                   cache_dir=tmp_path / "c", errors="skip").fit(paths + [dark], ["a", "a", "a", "b"])
    assert clf.head_.model_[-1].n_samples_fit_ == 3  # the unreadable sample is left out
    # what the fit skipped, asked of the fitted backbone (the samples are cached by now)
    again = featx.extract(clf.backbone_, paths + [dark], cache_dir=tmp_path / "c", errors="skip")
    assert again.ok.tolist() == [True, False, True, True] and again.stats.embedded == 0
    assert "bad.jpg" in again.stats.failed[0]


def test_an_unreadable_sample_repeated_in_later_blocks_is_reported_for_each(tmp_path, monkeypatch):
    import featx.extraction.pipeline as extraction

    monkeypatch.setattr(extraction, "BLOCK", 2)
    bad, copy = write(tmp_path / "bad.jpg", b"not a jpeg"), write(tmp_path / "copy.jpg", b"not a jpeg")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "dark.png")
    paths = [good_png(tmp_path / "ok.png"), bad, str(tmp_path / "dark.png"), copy]
    result = featx.extract(colorhist(), paths, cache_dir=tmp_path / "c", errors="skip")
    assert result.ok.tolist() == [True, False, True, False]
    assert np.isnan(result.vectors[[1, 3]]).all() and np.isfinite(result.vectors[[0, 2]]).all()
    assert len(result.stats.failed) == 2 and "bad.jpg" in result.stats.failed[0] and "copy.jpg" in result.stats.failed[1]
    assert (result.stats.unique, result.stats.embedded) == (3, 2)


def test_raise_policy_commits_the_healthy_samples_first(tmp_path):
    paths = [good_png(tmp_path / "ok.png"), write(tmp_path / "bad.jpg", b"")]
    with pytest.raises(BadInputError, match="1 of 2 samples"):
        featx.extract(colorhist(), paths, cache_dir=tmp_path / "c")
    result = featx.extract(colorhist(), paths[:1], cache_dir=tmp_path / "c")
    assert result.stats.hits == 1 and result.stats.embedded == 0
