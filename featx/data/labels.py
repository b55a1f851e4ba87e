"""Targets, checked: classification labels (one per sample, none missing, at least two classes, not a
regression target), multi-label targets (label lists or a 0/1 indicator matrix) and regression targets.

>>> Y, binarizer = multilabel_or_none([["sports"], ["politics", "sports"], []], 3)
>>> Y.tolist(), binarizer.classes_.tolist()
([[0, 1], [1, 1], [0, 0]], ['politics', 'sports'])
>>> looks_continuous(np.linspace(0, 1, 50)), looks_continuous(np.array([1.0, 2.0] * 25))
(True, False)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError
from .samples import _plain


CONTINUOUS_VALUES = 20  # distinct non-integer float labels beyond which y is a regression target


def labels_or_raise(y: Sequence[Any] | None, n: int) -> np.ndarray:
    """Validate classification labels: one per sample, one label each (not multi-label), none
    missing, classes rather than a continuous target, at least two classes."""
    if y is None:
        raise BadInputError("labels y are required for fitting")
    if getattr(y, "ndim", 1) != 1:
        shape = getattr(y, "shape", None)
        hint = " (a single column: pass y.ravel())" if shape is not None and len(shape) == 2 and shape[1] == 1 else ""
        raise BadInputError(f"y has shape {shape}: multi-label (or one-hot) targets are not supported here "
                            f"(featx.TransferClassifier takes them); pass one class label per sample, a 1-D list{hint}")
    if isinstance(y, np.ndarray):
        arr = y
    else:  # a list of one plain type becomes a typed array: checked without a Python loop
        y = list(y)
        types = set(map(type, y))
        several = types & {list, tuple, set, frozenset, np.ndarray}
        if several:
            first = next(v for v in y if type(v) in several)
            raise BadInputError(f"y holds label collections such as {first!r}: multi-label targets are not supported "
                                f"here (featx.TransferClassifier takes them); pass one class label per sample")
        arr = np.asarray(y) if len(types) == 1 and types <= {str, int, float, bool} else np.asarray(y, dtype=object)
    if len(arr) != n:
        raise BadInputError(f"len(X) = {n} but len(y) = {len(arr)}: give one label per sample")
    if arr.dtype.kind in "biuUS":  # one numpy type: only empty strings can be missing
        missing = np.flatnonzero(arr == arr.dtype.type()).tolist() if arr.dtype.kind in "US" else []
    elif arr.dtype.kind == "f":
        missing = np.flatnonzero(np.isnan(arr)).tolist()
    else:
        missing = [i for i, v in enumerate(arr) if v is None or (isinstance(v, float) and np.isnan(v)) or v == ""]
    if missing:
        raise BadInputError(f"labels missing (None/NaN/empty) at rows {missing[:10]}{' …' if len(missing) > 10 else ''}; drop those samples or label them")
    if arr.dtype == object:
        y = np.asarray(list(arr)) if len({type(v) for v in arr}) == 1 else arr.astype(str)
    else:
        y = arr
    classes = np.unique(y)
    if len(classes) < 2:
        raise BadInputError(f"y has a single class {_plain(y[0])!r}: a classifier needs at least two")
    if looks_continuous(y):
        examples = ", ".join(f"{v:g}" for v in classes[:: max(len(classes) // 3, 1)][:3])
        raise BadInputError(
            f"y looks continuous ({len(classes)} distinct float values, e.g. {examples}): featx classifiers need "
            f"class labels (str or int); for a numeric target use featx.TransferRegressor (or "
            f"featx.sweep(..., task=\"regression\")), or bin the values into classes"
        )
    return y


def looks_continuous(y: np.ndarray) -> bool:
    """Whether 1-D ``y`` is a regression target: floats with many distinct values, not all whole."""
    y = np.asarray(y)
    if y.dtype.kind != "f":
        return False
    values = np.unique(y[~np.isnan(y)])
    return bool(len(values) > min(CONTINUOUS_VALUES, len(y) / 2) and (values != np.round(values)).any())


def multilabel_or_none(y: Any, n: int):
    """A multi-label target as ``(indicator, binarizer)``, or ``None`` when ``y`` is one label per sample.

    A list whose items are label collections (lists, tuples, sets) is read as scikit-learn's
    ``MultiLabelBinarizer`` does: ``binarizer`` is that fitted binarizer.  A 2-D array (or
    DataFrame) with several columns is a 0/1 indicator matrix, one column per label:
    ``binarizer`` is ``None``.
    """
    if y is None:
        return None
    if getattr(y, "ndim", 1) == 2 and getattr(y, "shape", (0, 1))[1] > 1:
        Y = np.asarray(y)
        if len(Y) != n:
            raise BadInputError(f"len(X) = {n} but y has {len(Y)} rows: give one row of labels per sample")
        if Y.dtype.kind not in "biuf" or not np.isin(Y, (0, 1)).all():
            raise BadInputError(f"y has shape {Y.shape} but holds values other than 0/1: a multi-label indicator "
                                f"matrix has one 0/1 column per label (for multi-output regression, fit one "
                                f"featx.TransferRegressor per column)")
        if not Y.any():
            raise BadInputError(f"y is a multi-label indicator matrix of shape {Y.shape} with no label set (all 0): "
                                f"mark each sample's labels with 1")
        return Y.astype(np.int64), None
    if isinstance(y, np.ndarray) or not isinstance(y, (list, tuple)):
        return None
    collections = [isinstance(v, (list, tuple, set, frozenset)) for v in y]
    if not any(collections):
        return None
    if not all(collections):
        i = collections.index(False)
        raise BadInputError(f"y mixes label collections and single labels (row {i} is {y[i]!r}): for multi-label "
                            f"targets give every sample a list of labels ([] for none)")
    if len(y) != n:
        raise BadInputError(f"len(X) = {n} but len(y) = {len(y)}: give one label list per sample")
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer()
    try:
        Y = binarizer.fit_transform(y)
    except TypeError:  # labels of several types cannot be sorted
        raise BadInputError("y's label lists mix label types (e.g. str and int): give labels of one type") from None
    if Y.shape[1] < 1:
        raise BadInputError("y holds only empty label lists: multi-label targets need at least one label")
    return Y, binarizer


def regression_targets_or_raise(y: Any, n: int) -> np.ndarray:
    """Validate a regression target: one finite number per sample, not all equal."""
    if y is None:
        raise BadInputError("targets y are required for fitting")
    if getattr(y, "ndim", 1) != 1:
        raise BadInputError(f"y has shape {getattr(y, 'shape', None)}: featx.TransferRegressor predicts one number per "
                            f"sample; pass a 1-D target (y.ravel() for one column, one regressor per column otherwise)")
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        first = next((v for v in y if not isinstance(v, (int, float, np.number))), None)
        raise BadInputError(f"y holds {first!r}, not a number: featx.TransferRegressor needs numeric targets; "
                            f"for class labels use featx.TransferClassifier") from None
    if len(arr) != n:
        raise BadInputError(f"len(X) = {n} but len(y) = {len(arr)}: give one target per sample")
    bad = np.flatnonzero(~np.isfinite(arr)).tolist()
    if bad:
        raise BadInputError(f"targets missing or infinite (None/NaN/inf) at rows {bad[:10]}{' …' if len(bad) > 10 else ''}; "
                            f"drop those samples or give them values")
    if n and np.all(arr == arr[0]):
        raise BadInputError(f"y is {arr[0]:g} for every sample: a regressor needs targets that vary")
    return arr
