"""Broken third-party plugins are reported by name and never take the built-ins down; the
conformance kit catches broken backbones."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import numpy as np
import pytest

import featx
import featx.plugins as plugins
from featx.testing import check_backbone

from conftest import CountingTextBackbone


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Install extra entry points (module name -> module object) for one test."""
    installed = []

    def install(name: str, module: types.ModuleType | None, value: str):
        if module is not None:
            monkeypatch.setitem(sys.modules, module.__name__, module)
        installed.append(EntryPoint(name=name, value=value, group="featx"))

    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: list(real(group=group)) + installed)
    plugins.reset()
    yield install
    plugins.reset()


def test_plugin_that_fails_to_import(fake_entry_points):
    fake_entry_points("broken", None, "featx_no_such_module_xyz")
    with pytest.warns(plugins.FeatxPluginWarning, match="'broken'.*failed to load"):
        names = featx.list_backbones()
    assert {"timm/*", "hf/*", "acme/colorhist"} <= set(names)
    assert any("broken" in e for e in plugins.plugin_errors)


def test_plugin_whose_hook_raises(fake_entry_points):
    module = types.ModuleType("featx_raising_plugin")

    @featx.hookimpl
    def featx_register_backbones(register):
        register("raising/ok-before-error", lambda **kw: CountingTextBackbone())
        raise RuntimeError("boom")

    module.featx_register_backbones = featx_register_backbones
    fake_entry_points("raising", module, "featx_raising_plugin")
    with pytest.warns(plugins.FeatxPluginWarning, match="'raising'.*RuntimeError: boom"):
        names = featx.list_backbones()
    assert "timm/*" in names and "acme/colorhist" in names


def test_factory_returning_a_non_backbone_names_the_plugin(fake_entry_points):
    module = types.ModuleType("featx_wrong_plugin")

    @featx.hookimpl
    def featx_register_backbones(register):
        register("wrong/thing", lambda **kw: object())

    module.featx_register_backbones = featx_register_backbones
    fake_entry_points("wrong", module, "featx_wrong_plugin")
    with pytest.raises(featx.PluginError, match="plugin 'wrong'.*not a featx.Backbone"):
        featx.create_backbone("wrong/thing")


def test_kit_accepts_real_backbones(tiny_bert_dir):
    check_backbone(featx.create_backbone("acme/colorhist"))
    check_backbone(featx.create_backbone("timm/test_efficientnet", image_size=48))
    check_backbone(featx.create_backbone(f"hf/{tiny_bert_dir}"))


class BatchNormLike(CountingTextBackbone):
    """Normalises by batch statistics: a vector depends on its batch-mates."""

    def embed_batch(self, items):
        out = super().embed_batch(items)
        return ((out - out.mean(0)) if len(items) > 1 else out).astype(np.float32)


class Noisy(CountingTextBackbone):
    def embed_batch(self, items):
        return (super().embed_batch(items) + np.random.default_rng().normal(size=(len(items), self.dim))).astype(np.float32)


class Float64(CountingTextBackbone):
    def embed_batch(self, items):
        return super().embed_batch(items).astype(np.float64)


class Drifting(CountingTextBackbone):
    def fingerprint(self):
        return featx.digest(self.calls)


@pytest.mark.parametrize("backbone, problem", [
    (BatchNormLike(), "batch-size invariance"), (Noisy(), "not deterministic"), (Float64(), "float32"),
    (Drifting(), "fingerprint"),
])
def test_kit_rejects_broken_backbones(backbone, problem):
    with pytest.raises(AssertionError, match=problem) as info:
        check_backbone(backbone)
    assert "test/counting" in str(info.value)
