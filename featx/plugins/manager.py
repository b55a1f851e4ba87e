"""The plugin manager: built-in backbones are plugins exactly like third-party ones.

Plugins are pluggy plugins of the project ``"featx"``: the built-ins (``DEFAULT_PLUGINS``) are
registered first, then every ``featx`` entry point through ``pm.load_setuptools_entrypoints``
(so pluggy knows each plugin's distribution: ``pm.list_plugin_distinfo()``).  Which entry points
load is the user's choice: ``FEATX_LOAD_PLUGINS`` is a comma list of entry-point names, empty for
the built-ins only; unset, all of them load.  Each plugin's ``featx_register_backbones`` is called
through pluggy on its own (``pm.subset_hook_caller``), so one that fails to import or raises is
reported by name and skipped while the others, built-ins included, keep working.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from ..errors import UnknownBackboneError, did_you_mean
from . import hookspecs

GROUP = "featx"  # the entry-point group, and pluggy's project name
DEFAULT_PLUGINS = ("featx.backbones.timm", "featx.backbones.hf", "featx.backbones.pretrained")
HOOK = "featx_register_backbones"

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: "Registry | None" = None
plugin_errors: list[str] = []


class FeatxPluginWarning(UserWarning):
    """A third-party plugin was skipped because it is broken."""


def _report(message: str) -> None:
    plugin_errors.append(message)
    warnings.warn(message, FeatxPluginWarning, stacklevel=4)


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
    """The names every plugin registered, in registration order (built-ins first); the first
    registration of a name is kept."""

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



def _wanted_entry_points() -> list[str] | None:
    """The entry-point names ``FEATX_LOAD_PLUGINS`` selects (``None``: every one)."""
    chosen = os.environ.get("FEATX_LOAD_PLUGINS")
    return None if chosen is None else [name.strip() for name in chosen.split(",") if name.strip()]


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with the built-ins and the chosen entry-point plugins."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(GROUP)
            pm.add_hookspecs(hookspecs)
            for module_name in DEFAULT_PLUGINS:
                pm.register(importlib.import_module(module_name), name=module_name)
            available = sorted({ep.name for ep in entry_points(group=GROUP)})
            wanted = _wanted_entry_points()
            for name in available:
                if wanted is not None and name not in wanted:
                    pm.set_blocked(name)
                    continue
                try:
                    pm.load_setuptools_entrypoints(GROUP, name=name)
                except Exception as exc:  # a broken plugin must not take the others down
                    _report(f"featx plugin {name!r} failed to load and was skipped: {type(exc).__name__}: {exc}. "
                            f"Reinstall or uninstall the package that provides it, or leave it out with "
                            f"FEATX_LOAD_PLUGINS.")
            for name in sorted(set(wanted or ()) - set(available)):
                _report(f"FEATX_LOAD_PLUGINS names {name!r}, but no installed package provides a featx plugin of "
                        f"that name (installed: {', '.join(available) or 'none'})")
            pm.check_pending()
            _pm = pm
        return _pm


def get_registry() -> Registry:
    """Every backbone registered through ``featx_register_backbones``, built once."""
    global _registry
    pm = get_plugin_manager()
    with _lock:
        if _registry is None:
            registry = Registry()
            plugins = [impl.plugin for impl in getattr(pm.hook, HOOK).get_hookimpls()]  # built-ins first
            for plugin in plugins:
                call = pm.subset_hook_caller(HOOK, remove_plugins=[p for p in plugins if p is not plugin])
                name = pm.get_name(plugin)
                try:
                    call(register=registry.registrar(name))
                except Exception as exc:
                    _report(f"featx plugin {name!r}: {HOOK} raised {type(exc).__name__}: {exc}; its backbones "
                            f"are unavailable.")
            _registry = registry
        return _registry


def reset() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in a running process)."""
    global _pm, _registry
    with _lock:
        _pm, _registry = None, None
        plugin_errors.clear()
