"""Save and load fitted featx models without pickle.

A model file is a zip archive: ``manifest.json`` (featx version, estimator parameters, backbone
name and fingerprint, classes) and ``head.skops`` (the scikit-learn head in skops' safe format,
loaded with only scikit-learn/numpy/scipy types trusted).

>>> import featx                                             # doctest: +SKIP
>>> featx.save(clf, "model.featx"); featx.load("model.featx").predict(X)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from .errors import BadInputError

FORMAT = "featx-model-v1"
TRUSTED_PREFIXES = ("featx.heads.", "sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def save(model, path: str | os.PathLike) -> Path:
    """Write a fitted ``TransferClassifier`` to ``path`` (written atomically)."""
    import skops.io as sio
    from sklearn.utils.validation import check_is_fitted

    from . import __version__
    from .backbones.base import Backbone

    check_is_fitted(model, "head_")
    # cache_dir is where *this* machine keeps embeddings; the loader picks its own
    params = {k: v for k, v in model.get_params(deep=False).items() if k not in ("head", "cache_dir")}
    if isinstance(params["backbone"], Backbone):
        params["backbone"] = params["backbone"].name
    if not isinstance(model.head, str):
        params["head_params"] = None  # a custom head's parameters live in head.skops
    manifest = {
        "format": FORMAT, "featx_version": __version__, "estimator": type(model).__name__,
        "params": params, "head": model.head if isinstance(model.head, str) else None,
        "backbone": model.backbone_name_, "fingerprint": model.fingerprint_,
        "classes": [str(c) for c in model.classes_],
    }
    try:
        json.dumps(manifest)
    except TypeError as exc:
        raise BadInputError(f"cannot save {type(model).__name__}: a parameter is not JSON-serialisable ({exc})") from None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=2))
        z.writestr("head.skops", sio.dumps(model.head_))
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike, *, backbone=None, cache_dir=None):
    """Read a model written by ``save``; refuses files with untrusted content.

    The backbone is rebuilt from its recorded name and options and must have the recorded
    fingerprint (same weights and preprocessing), else the predictions would silently differ.
    Pass ``backbone=`` (a name or instance) to supply it explicitly; ``cache_dir`` as for the estimators.
    """
    import skops.io as sio

    from .estimators import TransferClassifier, resolve_backbone

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            head_bytes = z.read("head.skops")
    except FileNotFoundError:
        raise BadInputError(f"model file {str(path)!r} does not exist") from None
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BadInputError(f"{str(path)!r} is not a featx model file ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("estimator") != "TransferClassifier":
        raise BadInputError(f"{str(path)!r}: unsupported model format {manifest.get('format')!r}")
    try:
        untrusted = sio.get_untrusted_types(data=head_bytes)
    except Exception as exc:
        raise BadInputError(f"{str(path)!r}: the head is damaged ({exc})") from None
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise BadInputError(
            f"{str(path)!r} refers to types outside featx heads/scikit-learn/numpy/scipy ({', '.join(refused)}); "
            f"refusing to load it. Only load model files you trust after inspecting them with skops."
        )
    head = sio.loads(head_bytes, trusted=untrusted)

    params = dict(manifest["params"])
    params["head"] = manifest["head"] if manifest["head"] is not None else head
    if backbone is not None:
        params["backbone"], params["backbone_options"] = backbone, None
    params["cache_dir"] = cache_dir
    model = TransferClassifier(**params)
    built = resolve_backbone(model.backbone, model.backbone_options)
    if built.fingerprint() != manifest["fingerprint"]:
        raise BadInputError(
            f"{str(path)!r} was fitted on backbone {manifest['backbone']!r} with fingerprint "
            f"{manifest['fingerprint']}, but {built.name!r} here has fingerprint {built.fingerprint()} "
            f"(different weights, preprocessing or options). Install the same weights or pass backbone=."
        )
    model.head_ = head
    model.classes_ = head.classes_
    model.n_features_in_ = built.dim
    model.backbone_name_ = built.name
    model.fingerprint_ = built.fingerprint()
    return model
