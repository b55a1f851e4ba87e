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


class FeatxWarning(UserWarning):
    """Something the user should know that does not stop the run (a setting lowered, a file not written)."""


class RandomInitWarning(FeatxWarning):
    """A model was fitted on a backbone with random weights although ``pretrained=False`` was not
    asked for: its features are a baseline, not transferred knowledge."""


def did_you_mean(name: str, candidates) -> str:
    """``" Did you mean: 'a', 'b'?"`` for the candidates closest to ``name``, ignoring case (or ``""``).

    >>> did_you_mean("c", ["C", "class_weight", "max_iter"])
    " Did you mean: 'C'?"
    """
    import difflib

    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(str(candidate).lower(), candidate)
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(repr(by_lower[c]) for c in close)}?" if close else ""


def validate_params(estimator) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints`` (scikit-learn's
    checker); a ``BadInputError`` with scikit-learn's message, which names the parameter, if one
    is off."""
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        estimator._validate_params()
    except InvalidParameterError as exc:
        raise BadInputError(str(exc)) from None
