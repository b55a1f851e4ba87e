"""The hooks a featx plugin can implement (pluggy project name: ``"featx"``).

A third-party package adds backbones with one module and one entry point::

    # acme_featx.py
    import featx

    @featx.hookimpl
    def featx_register_backbones(register):
        register("acme/colorhist", ColorHistogram, description="RGB colour histogram")

    # pyproject.toml
    [project.entry-points.featx]
    acme = "acme_featx"
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("featx")
hookimpl = pluggy.HookimplMarker("featx")


@hookspec
def featx_register_backbones(register):
    """Register backbone factories by calling ``register(name, factory, *, description="")``.

    ``name`` is either exact (``"acme/colorhist"``, built by ``factory(**options)``) or a
    namespace ending in ``"/*"`` (``"timm/*"``, built by ``factory(rest, **options)`` where
    ``rest`` is the part of the requested name after the slash).  Register cheap factories:
    import heavy libraries inside them, never at module import time.
    """
