"""Broken third-party plugins are reported by name and never take the built-ins down; the
conformance kit catches broken backbones."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import featx
from featx.plugins import manager
from featx.testing import check_backbone

from conftest import CountingTextBackbone


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a plugin for one test as a real distribution on sys.path: a module and a
    ``<dist>.dist-info`` folder declaring its ``featx`` entry point."""

    def install(name: str, source: str | None, module: str | None = None) -> None:
        module = module or f"featx_test_{name}"
        if source is not None:
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"featx_test_{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: featx-test-{name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[featx]\n{name} = {module}\n")
        manager.reset()

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    manager.reset()


def test_plugin_that_fails_to_import(install_plugin):
    install_plugin("broken", None, module="featx_no_such_module_xyz")
    with pytest.warns(manager.FeatxPluginWarning, match="'broken' failed to load"):
        names = featx.list_backbones()
    assert {"timm/*", "hf/*", "acme/colorhist"} <= set(names)
    assert any("broken" in e for e in manager.plugin_errors)


def test_plugin_whose_hook_raises_leaves_the_others_working(install_plugin):
    install_plugin("raising", """
        import featx

        @featx.hookimpl
        def featx_register_backbones(register):
            raise RuntimeError("boom")
    """)
    with pytest.warns(manager.FeatxPluginWarning, match="'raising'.*RuntimeError: boom"):
        names = featx.list_backbones()
    assert "timm/*" in names and "acme/colorhist" in names


def test_entry_point_plugins_load_through_pluggy_with_their_distribution(install_plugin):
    install_plugin("good", """
        import featx
        from conftest import CountingTextBackbone

        @featx.hookimpl
        def featx_register_backbones(register):
            register("good/counting", CountingTextBackbone, description="counts")
    """)
    assert featx.create_backbone("good/counting").name == "test/counting"
    distributions = {plugin.__name__: dist.project_name for plugin, dist in manager.get_plugin_manager().list_plugin_distinfo()}
    assert distributions["featx_test_good"] == "featx-test-good"


@pytest.mark.parametrize("chosen, expected", [("", set()), ("good", {"good/counting"}), ("colorhist", {"acme/colorhist"})])
def test_featx_load_plugins_chooses_the_entry_points(install_plugin, monkeypatch, chosen, expected):
    install_plugin("good", """
        import featx
        from conftest import CountingTextBackbone

        @featx.hookimpl
        def featx_register_backbones(register):
            register("good/counting", CountingTextBackbone)
    """)
    monkeypatch.setenv("FEATX_LOAD_PLUGINS", chosen)
    names = set(featx.list_backbones())
    assert {"timm/*", "hf/*", "timm/tf_efficientnet_lite0"} <= names  # built-ins always
    assert names & {"good/counting", "acme/colorhist"} == expected


def test_featx_load_plugins_naming_a_missing_plugin_says_so(monkeypatch):
    monkeypatch.setenv("FEATX_LOAD_PLUGINS", "colorhist,nosuchplugin")
    manager.reset()
    try:
        with pytest.warns(manager.FeatxPluginWarning, match="'nosuchplugin'.*installed: .*colorhist"):
            assert "acme/colorhist" in featx.list_backbones()
    finally:
        manager.reset()


def test_factory_returning_a_non_backbone_names_the_plugin(install_plugin):
    install_plugin("wrong", """
        import featx

        @featx.hookimpl
        def featx_register_backbones(register):
            register("wrong/thing", lambda: object())
    """)
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


def test_a_plugin_rejecting_an_option_value_gives_a_featx_error():
    with pytest.raises(featx.BadInputError, match="'acme/colorhist' does not accept the options {'bins': 'foo'}.*bins='foo'"):
        featx.create_backbone("acme/colorhist", bins="foo")
