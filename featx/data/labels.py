"""Classification labels: one per sample, none missing, at least two classes, not a regression target."""

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
        raise BadInputError(f"y has shape {shape}: multi-label (or one-hot) targets are not supported yet; "
                            f"pass one class label per sample, a 1-D list{hint}")
    if isinstance(y, np.ndarray):
        arr = y
    else:  # a list of one plain type becomes a typed array: checked without a Python loop
        y = list(y)
        types = set(map(type, y))
        several = types & {list, tuple, set, frozenset, np.ndarray}
        if several:
            first = next(v for v in y if type(v) in several)
            raise BadInputError(f"y holds label collections such as {first!r}: multi-label targets are not supported "
                                f"yet; pass one class label per sample")
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
    if y.dtype.kind == "f" and len(classes) > min(CONTINUOUS_VALUES, len(y) / 2) and (classes != np.round(classes)).any():
        examples = ", ".join(f"{v:g}" for v in classes[:: max(len(classes) // 3, 1)][:3])
        raise BadInputError(
            f"y looks continuous ({len(classes)} distinct float values, e.g. {examples}): featx classifiers need "
            f"class labels (str or int); bin the values into classes, or fit a regressor on featx.extract(...).vectors"
        )
    return y
