"""Backbone names → factories.  ``list_backbones`` and ``create_backbone`` are the public face.

>>> import featx
>>> "timm/*" in featx.list_backbones()
True
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from ..errors import did_you_mean
from .manager import get_registry


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching an fnmatch ``pattern``, sorted.

    Namespaces appear as ``"timm/*"``; a pattern inside a namespace that can enumerate its
    members (a factory with a ``names()`` attribute, as the timm one has) lists them too.

    Parameters
    ----------
    pattern : str
        An ``fnmatch`` pattern such as ``"hf/*"`` or ``"timm/*resnet*"``.

    Returns
    -------
    list of str
        The matching names, sorted.

    >>> import featx
    >>> featx.list_backbones("hf/*")
    ['hf/*', 'hf/all-MiniLM-L6-v2']
    >>> "timm/resnet18" in featx.list_backbones("timm/resnet*")
    True
    """
    names: set[str] = set()
    for entry in get_registry().entries():
        if fnmatch.fnmatchcase(entry.name, pattern):
            names.add(entry.name)
        enumerate_members = getattr(entry.factory, "names", None)
        if entry.is_namespace and enumerate_members and pattern.startswith(entry.prefix):
            names.update(
                n for n in (entry.prefix + rest for rest in enumerate_members())
                if fnmatch.fnmatchcase(n, pattern)
            )
    return sorted(names)


def describe_backbones() -> list[tuple[str, str, str]]:
    """``(name, plugin, description)`` for every registration, in registration order."""
    return [(e.name, e.plugin, e.description) for e in get_registry().entries()]


def factory_options(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword options ``factory`` takes (its parameters with defaults), following
    ``**options`` to where they go: a class's base class, or the class a function's return
    annotation names.  ``None`` when that cannot be told (any option is then passed through).

    >>> from featx.backbones.hf import hf_factory
    >>> factory_options(hf_factory)
    ['pooling', 'layers', 'max_length', 'normalize', 'device', 'precision', 'name']
    """
    import inspect
    import typing

    names: list[str] = []
    target: Any = factory
    while target is not None:
        try:
            params = list(inspect.signature(target).parameters.values())
        except (TypeError, ValueError):
            return None
        names += [p.name for p in params if p.default is not p.empty and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if isinstance(target, type):
            target = next((base for base in target.__mro__[1:] if "__init__" in vars(base)), None)
            target = None if target is object else target
        else:
            try:
                target = typing.get_type_hints(target).get("return")
            except Exception:  # an annotation that does not resolve: no more to learn
                return None
            target = target if isinstance(target, type) else None
    return None


def create_backbone(name: str, **options: Any):
    """Build the backbone registered under ``name`` (cheap: weights load on first use).

    Parameters
    ----------
    name : str
        A registered name (see ``list_backbones``), e.g. ``"timm/tf_efficientnet_lite0"``,
        ``"hf/all-MiniLM-L6-v2"`` or ``"timm/<any timm model>"``.
    **options
        The backbone's options (``image_size=``, ``pooling=``, ``layers=``, …); an unknown one is
        a ``BadInputError`` listing the valid ones.

    Returns
    -------
    Backbone
        The backbone, weights not loaded yet.

    >>> import featx
    >>> featx.create_backbone("timm/resnet18", pretrained=False).random_init   # random weights, on purpose
    True
    """
    from ..backbones.base import Backbone
    from ..errors import BadInputError, FeatxError, PluginError

    if not isinstance(name, str):
        raise BadInputError(f"backbone name {name!r} must be a str such as 'timm/tf_efficientnet_lite0'")
    entry, args = get_registry().resolve(name)
    valid = factory_options(entry.factory)
    unknown = [key for key in options if valid is not None and key not in valid]
    if unknown:
        raise BadInputError(
            f"backbone {name!r} has no option {unknown[0]!r}.{did_you_mean(unknown[0], valid)} "
            f"Its options: {', '.join(valid) or 'none'}"
        )
    try:
        backbone = entry.factory(*args, **options)
    except (TypeError, ValueError) as exc:  # a plugin's own check of its options, in its own words
        if isinstance(exc, FeatxError):
            raise
        raise BadInputError(f"backbone {name!r} does not accept the options {options}: {exc}") from None
    if not isinstance(backbone, Backbone):
        raise PluginError(
            f"plugin {entry.plugin!r}: the factory for {name!r} returned "
            f"{type(backbone).__name__}, not a featx.Backbone subclass"
        )
    return backbone


_shared: dict[str, Any] = {}


def resolve_backbone(backbone: Any, options: dict | None = None):
    """A ``Backbone`` from a registered name (+ options) or an instance.

    Instances built from the same name and options are shared within the process, so the clones
    of an estimator in a grid search load the weights once.

    >>> resolve_backbone("timm/resnet18", {"pretrained": False}) is resolve_backbone("timm/resnet18", {"pretrained": False})
    True
    """
    import json

    from ..backbones.base import Backbone
    from ..errors import BadInputError

    if isinstance(backbone, Backbone):
        if options:
            raise BadInputError(f"backbone_options={options!r} apply to a backbone name, not to the Backbone "
                                f"instance {backbone.name!r}: pass the options when building it")
        return backbone
    if not isinstance(backbone, str):
        raise BadInputError(f"backbone must be a registered name or a featx.Backbone, got {type(backbone).__name__}")
    if options is not None and not isinstance(options, dict):
        raise BadInputError(f"backbone_options must be a dict such as {{'image_size': 224}}, got {type(options).__name__}")
    key = json.dumps([backbone, options or {}], sort_keys=True, default=repr)
    if key not in _shared:
        _shared[key] = create_backbone(backbone, **(options or {}))
    return _shared[key]
