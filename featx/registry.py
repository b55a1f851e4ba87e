"""Backbone names → factories.  ``list_backbones`` and ``create_backbone`` are the public face.

>>> import featx
>>> "timm/*" in featx.list_backbones()
True
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UnknownBackboneError, did_you_mean


@dataclass(frozen=True)
class Registration:
    """One registered name: exact (``"acme/colorhist"``) or a namespace (``"timm/*"``)."""

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str

    @property
    def is_namespace(self) -> bool:
        return self.name.endswith("/*")

    @property
    def prefix(self) -> str:
        return self.name[:-1]  # "timm/*" -> "timm/"


class Registry:
    """The names every plugin registered, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, Registration] = {}

    def registrar(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callable handed to one plugin's hook (it records who registered what)."""

        def register(name: str, factory: Callable[..., Any], *, description: str = "") -> None:
            if not isinstance(name, str) or not name or not callable(factory):
                raise TypeError(
                    f"plugin {plugin!r}: register(name, factory) needs a non-empty str name and a "
                    f"callable factory, got {name!r}, {factory!r}"
                )
            if name in self._entries:
                first = self._entries[name].plugin
                warnings.warn(
                    f"backbone {name!r} is registered by both {first!r} and {plugin!r}; "
                    f"keeping the one from {first!r}",
                    stacklevel=2,
                )
                return
            self._entries[name] = Registration(name, factory, description, plugin)

        return register

    def entries(self) -> list[Registration]:
        return list(self._entries.values())

    def resolve(self, name: str) -> tuple[Registration, tuple[str, ...]]:
        """The registration that builds ``name`` and the positional args its factory takes."""
        if name in self._entries and not self._entries[name].is_namespace:
            return self._entries[name], ()
        for entry in self._entries.values():
            if entry.is_namespace and name.startswith(entry.prefix) and len(name) > len(entry.prefix):
                return entry, (name[len(entry.prefix):],)
        raise UnknownBackboneError(
            f"unknown backbone {name!r}.{did_you_mean(name, self._entries)} "
            f"Run `featx backbones` to see every registered name."
        )


def _registry() -> Registry:
    from .plugins import get_registry

    return get_registry()


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching an fnmatch ``pattern``, sorted.

    Namespaces appear as ``"timm/*"``; a pattern inside a namespace that can enumerate its
    members (a factory with a ``names()`` attribute, as the timm one has) lists them too::

        list_backbones("timm/*resnet*")  # -> ["timm/resnet18", ...]
    """
    names: set[str] = set()
    for entry in _registry().entries():
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
    return [(e.name, e.plugin, e.description) for e in _registry().entries()]


def create_backbone(name: str, **options: Any):
    """Build the backbone registered under ``name`` (cheap: weights load on first use).

    >>> import featx
    >>> featx.create_backbone("timm/resnet18", pretrained=False).name
    'timm/resnet18'
    """
    from .plugins import PluginError

    entry, args = _registry().resolve(name)
    backbone = entry.factory(*args, **options)
    from .backbones.base import Backbone

    if not isinstance(backbone, Backbone):
        raise PluginError(
            f"plugin {entry.plugin!r}: the factory for {name!r} returned "
            f"{type(backbone).__name__}, not a featx.Backbone subclass"
        )
    return backbone
