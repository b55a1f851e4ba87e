"""Exceptions a user can cause, each naming the input at fault and the fix."""

from __future__ import annotations


class FeatxError(Exception):
    """Base class of every error featx raises on purpose."""


class UnknownNameError(FeatxError, KeyError):
    """A backbone or head name that is not registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class UnknownBackboneError(UnknownNameError):
    """``create_backbone`` got a name no plugin registered."""


class UnknownHeadError(UnknownNameError):
    """A head name that is neither built in nor a scikit-learn classifier."""


class PluginError(FeatxError):
    """A third-party plugin failed to load, register or produce valid embeddings."""


class BadInputError(FeatxError, ValueError):
    """Samples, labels or files that featx cannot use as given."""


class CacheError(FeatxError):
    """The embedding cache cannot be read or written."""


def did_you_mean(name: str, candidates) -> str:
    """``" Did you mean: 'a', 'b'?"`` for the candidates closest to ``name`` (or ``""``)."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
