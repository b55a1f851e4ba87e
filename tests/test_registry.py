"""Plugins arrive through the pluggy hook and entry points; names resolve or suggest close ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

import featx
from featx.errors import UnknownBackboneError
from featx.plugins.manager import Registry
from featx.plugins.registry import describe_backbones


def test_builtins_and_entry_point_plugins_are_registered():
    names = featx.list_backbones()
    assert {"timm/*", "hf/*", "acme/colorhist"} <= set(names)
    plugins = {name: plugin for name, plugin, _ in describe_backbones()}
    assert plugins["acme/colorhist"] == "colorhist"  # the entry-point name
    assert plugins["timm/*"] == "featx.backbones.timm"


def test_pattern_matching():
    assert featx.list_backbones("acme/*") == ["acme/colorhist"]
    assert featx.list_backbones("nothing*") == []


def test_exact_name_built_with_options():
    backbone = featx.create_backbone("acme/colorhist", bins=4)
    assert (backbone.name, backbone.dim, backbone.modality) == ("acme/colorhist", 12, "image")


def test_unknown_name_is_a_keyerror_with_suggestions():
    with pytest.raises(KeyError) as info:
        featx.create_backbone("acme/colorhst")
    assert isinstance(info.value, UnknownBackboneError)
    assert "acme/colorhist" in str(info.value)


def test_namespace_factory_gets_the_rest_of_the_name():
    seen = []
    registry = Registry()
    registry.registrar("p")("zoo/*", lambda rest, **kw: seen.append((rest, kw)))
    registry.registrar("p")("zoo/special", lambda **kw: seen.append(("exact", kw)))
    entry, args = registry.resolve("zoo/lion")
    entry.factory(*args, size=3)
    entry, args = registry.resolve("zoo/special")
    entry.factory(*args)
    assert seen == [("lion", {"size": 3}), ("exact", {})]


def test_duplicate_registration_keeps_the_first_and_warns():
    registry = Registry()
    registry.registrar("first")("x/y", dict)
    with pytest.warns(UserWarning, match="'first' and 'second'"):
        registry.registrar("second")("x/y", list)
    assert registry.resolve("x/y")[0].plugin == "first"


def test_import_featx_and_help_do_not_import_torch():
    code = "import sys, featx, featx.cli; featx.cli.build_parser(); print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    help_text = subprocess.run([sys.executable, "-m", "featx", "--help"], capture_output=True, text=True, check=True).stdout
    assert "backbones" in help_text and "extract" in help_text


def test_public_functions_are_not_shadowed_by_their_modules():
    import featx.extraction.pipeline  # noqa: F401
    import featx.finetuning.run  # noqa: F401
    import featx.selection.sweep  # noqa: F401

    assert all(callable(f) and f.__module__.startswith("featx.") for f in (featx.extract, featx.sweep, featx.finetune))
    assert featx.sweep.__name__ == "sweep" and featx.finetune.__name__ == "finetune"
