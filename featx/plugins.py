"""The plugin manager: built-in backbones are plugins exactly like third-party ones.

Entry points in the ``featx`` group are loaded once, lazily, on first use of the registry.
A plugin that fails to import or whose hook raises is reported (naming it) and skipped;
the other plugins, built-ins included, keep working.  Built-ins register first and keep their
names.  Entry points of plugins that are now built in (left by an older install) are not loaded.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry

DEFAULT_PLUGINS = ("featx.backbones.timm", "featx.backbones.hf", "featx.backbones.pretrained")
BUILT_IN_NOW = ("featx_pretrained",)  # modules of former plugins whose backbones featx now ships

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
plugin_errors: list[str] = []


class FeatxPluginWarning(UserWarning):
    """A third-party plugin was skipped because it is broken."""


def _report(message: str) -> None:
    plugin_errors.append(message)
    warnings.warn(message, FeatxPluginWarning, stacklevel=3)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with built-ins and entry-point plugins registered."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("featx")
            pm.add_hookspecs(hookspecs)
            for module_name in DEFAULT_PLUGINS:
                pm.register(importlib.import_module(module_name), name=module_name)
            for ep in entry_points(group="featx"):
                if pm.has_plugin(ep.name) or pm.is_blocked(ep.name) or ep.module in BUILT_IN_NOW:
                    continue
                try:
                    pm.register(ep.load(), name=ep.name)
                except Exception as exc:  # a broken plugin must not take the others down
                    _report(
                        f"featx plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                        f"{type(exc).__name__}: {exc}. Reinstall or uninstall "
                        f"{ep.dist.name if ep.dist else ep.name!r}."
                    )
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
            for impl in pm.hook.featx_register_backbones.get_hookimpls():  # built-ins first
                try:
                    impl.function(register=registry.registrar(impl.plugin_name))
                except Exception as exc:
                    _report(
                        f"featx plugin {impl.plugin_name!r}: featx_register_backbones raised "
                        f"{type(exc).__name__}: {exc}; its backbones are unavailable."
                    )
            _registry = registry
        return _registry


def reset() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in a running process)."""
    global _pm, _registry
    with _lock:
        _pm, _registry = None, None
        plugin_errors.clear()


__all__ = ["DEFAULT_PLUGINS", "FeatxPluginWarning", "PluginError", "get_plugin_manager", "get_registry", "reset"]
