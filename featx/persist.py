"""Save and load fitted featx models without pickle.

A model file is a zip archive: ``manifest.json`` (featx version, estimator parameters, backbone
name and fingerprint, classes) and either ``head.skops`` (a ``TransferClassifier``'s head in skops'
safe format, loaded with only featx-head/scikit-learn/numpy/scipy types trusted) or
``weights.safetensors`` (a ``FineTunedClassifier``'s network).

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


def _write(path: Path, files: dict[str, bytes]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    os.replace(tmp, path)
    return path


def save(model, path: str | os.PathLike) -> Path:
    """Write a fitted ``TransferClassifier`` or ``FineTunedClassifier`` to ``path`` (atomically)."""
    import skops.io as sio
    from sklearn.utils.validation import check_is_fitted

    from . import __version__
    from .backbones.base import Backbone

    if type(model).__name__ == "FineTunedClassifier":
        return _save_finetuned(model, Path(path))
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
    return _write(Path(path), {"manifest.json": json.dumps(manifest, indent=2).encode(), "head.skops": sio.dumps(model.head_)})


def _save_finetuned(model, path: Path) -> Path:
    from safetensors.torch import save as to_safetensors
    from sklearn.utils.validation import check_is_fitted

    from . import __version__

    check_is_fitted(model, "network_")
    manifest = {
        "format": FORMAT, "featx_version": __version__, "estimator": "FineTunedClassifier",
        "params": {k: v for k, v in model.get_params(deep=False).items() if k != "cache_dir"},
        "backbone": model.backbone_name_, "fingerprint": model.fingerprint_, "classes": model.classes_.tolist(),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.network_.state_dict().items()}
    return _write(path, {"manifest.json": json.dumps(manifest, indent=2).encode(), "weights.safetensors": to_safetensors(state)})


def _load_finetuned(path: Path, manifest: dict, weights: bytes, cache_dir):
    import numpy as np
    from safetensors.torch import load as from_safetensors

    from .finetuning import FineTunedClassifier, _network, _new_backbone

    params = manifest["params"]
    try:
        state = from_safetensors(weights)
    except Exception as exc:
        raise BadInputError(f"{str(path)!r}: the weights are damaged ({exc})") from None
    backbone = _new_backbone(params["backbone"], params["backbone_options"])
    network = _network(backbone, len(manifest["classes"]))
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise BadInputError(f"{str(path)!r}: weights do not fit {params['backbone']!r} ({str(exc)[:200]})") from None
    model = FineTunedClassifier(**{**params, "cache_dir": cache_dir})
    model._set_state(network, backbone, np.asarray(manifest["classes"]))
    if model.fingerprint_ != manifest["fingerprint"]:
        raise BadInputError(f"{str(path)!r}: the weights do not match the recorded fingerprint (file tampered or "
                            f"base backbone {params['backbone']!r} changed)")
    return model


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
            if manifest.get("estimator") == "FineTunedClassifier" and manifest.get("format") == FORMAT:
                return _load_finetuned(path, manifest, z.read("weights.safetensors"), cache_dir)
            head_bytes = z.read("head.skops")
    except FileNotFoundError:
        raise BadInputError(f"model file {str(path)!r} does not exist") from None
    except (zipfile.BadZipFile, KeyError, ValueError, AttributeError) as exc:
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
    model.n_features_in_ = getattr(head, "n_features_in_", built.dim)
    model.backbone_name_ = built.name
    model.fingerprint_ = built.fingerprint()
    return model
