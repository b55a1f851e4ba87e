"""Save and load fitted models without pickle.

A model file is a zip archive: ``manifest.json`` (format, featx version, estimator class, the
backbones inside with their fingerprints, classes) and either ``model.skops`` — any fitted
scikit-learn estimator or pipeline, featx's ``TransferClassifier`` and ``Embedder`` included, in
skops' safe format, loaded with only featx-estimator/scikit-learn/numpy/scipy types trusted — or
the files of a featx class that stores its own state: ``__featx_state__() -> (manifest fields,
files)`` to save and the classmethod ``__featx_restore__(manifest, files, cache_dir=)`` to load
(``FineTunedClassifier``: its network as ``weights.safetensors``).  persist names no class: the
manifest records the class's import path.  Backbones are not stored: they are rebuilt from their
names and options when loading, and must have the recorded fingerprints.

>>> import featx                                             # doctest: +SKIP
>>> featx.save(clf, "model.featx"); featx.load("model.featx").predict(X)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from .errors import BadInputError, FeatxError

FORMAT = "featx-model-v2"
OWN_STATE_FORMATS = ("featx-model-v1", FORMAT)  # a fine-tuned model's layout did not change
LEGACY_NAMES = {"FineTunedClassifier": "featx.finetuning.estimator.FineTunedClassifier"}  # as featx-model-v1 named it
MODEL = "model.skops"
TRUSTED_PREFIXES = ("featx.heads.", "featx.shift.adapt.", "sklearn.", "numpy.", "scipy.", "skada.")  # skada: adapted heads
TRUSTED_TYPES = ("featx.estimators.Embedder", "featx.estimators.TransferClassifier", "featx.estimators.TransferRegressor")


def _write(path: Path, files: dict[str, bytes]) -> Path:
    """The zip of ``files`` written to ``path`` atomically (a reader never sees half a model)."""
    from ._fs import atomic_write

    if not path.parent.is_dir():
        raise BadInputError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first")
    if path.is_dir():
        raise BadInputError(f"cannot write {str(path)!r}: it is a folder; pass a file name such as model.featx")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    try:
        with atomic_write(path) as f:
            f.write(buffer.getvalue())
    except OSError as exc:
        raise BadInputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def save(model: Any, path: str | os.PathLike) -> Path:
    """Write a fitted model to ``path``, atomically.

    Parameters
    ----------
    model : estimator or result
        Any fitted scikit-learn estimator or ``Pipeline`` (featx ``TransferClassifier`` and
        ``Embedder`` steps included), a ``FineTunedClassifier``, or a result that keeps a model in
        ``best_`` (``featx.finetune``'s, ``featx.sweep``'s): that model is saved.
    path : str or path
        The file to write (``model.featx``); its folder must exist.

    Returns
    -------
    Path
        ``path``.
    """
    import skops.io as sio
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from . import __version__
    from .estimators import portable_state

    if not isinstance(model, BaseEstimator) and hasattr(model, "best_"):
        model = model.best_  # the model a fine-tune or sweep result keeps
    if not (hasattr(model, "fit") and hasattr(model, "get_params")):
        raise BadInputError(f"cannot save a {type(model).__name__}: featx.save takes a fitted scikit-learn estimator "
                            f"or pipeline, or a fine-tune/sweep result")
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise BadInputError(f"cannot save this {type(model).__name__}: it is not fitted; call fit(X, y) first") from None
    if hasattr(type(model), "__featx_state__"):
        return _save_own_state(model, Path(path))
    with portable_state() as backbones:
        try:
            payload = sio.dumps(model)
        except Exception as exc:  # skops names the object it cannot represent
            raise BadInputError(f"cannot save {type(model).__name__}: skops cannot store part of it ({exc})") from None
    manifest = {
        "format": FORMAT, "featx_version": __version__,
        "estimator": f"{type(model).__module__}.{type(model).__qualname__}", "backbones": backbones,
        "classes": [str(c) for c in getattr(model, "classes_", [])],
    }
    return _write(Path(path), {"manifest.json": json.dumps(manifest, indent=2).encode(), MODEL: payload})


def _save_own_state(model, path: Path) -> Path:
    """A model that says what to store (``__featx_state__``): its manifest fields and files."""
    from . import __version__

    fields, files = model.__featx_state__()
    manifest = {"format": FORMAT, "featx_version": __version__, "estimator": _qualified(type(model)), **fields}
    return _write(path, {"manifest.json": json.dumps(manifest, indent=2).encode(), **files})


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _own_state_class(manifest: dict, path: Path):
    """The featx class that restores this file itself (``__featx_restore__``), or None for skops files."""
    import importlib

    name = LEGACY_NAMES.get(manifest.get("estimator"), manifest.get("estimator") or "")
    module, _, qualname = name.rpartition(".")
    if not module.startswith("featx."):
        return None
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        raise BadInputError(f"{str(path)!r} holds a {name}, which this featx does not have; load it with the "
                            f"featx version that saved it ({manifest.get('featx_version')})") from None
    return cls if hasattr(cls, "__featx_restore__") else None


def load(path: str | os.PathLike, *, backbone: Any = None, cache_dir: str | os.PathLike | None = None):
    """Read a model written by ``save``; refuses files with untrusted content.

    Every featx estimator inside gets its backbone rebuilt from the recorded name and options,
    and it must have the recorded fingerprint (same weights and preprocessing), else the
    predictions would silently differ.

    Parameters
    ----------
    path : str or path
        A ``.featx`` file.
    backbone : str or Backbone, optional
        The backbone to use instead of the recorded one (it must have the same fingerprint).
    cache_dir : str or path, optional
        The embedding cache the loaded featx estimators use (default ``$FEATX_CACHE_DIR`` or ``./cache``).

    Returns
    -------
    estimator
        The fitted model, ready to ``predict``.
    """
    import skops.io as sio

    from .estimators import restoring

    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{str(path)!r} is a folder, not a model file: pass the .featx file inside it "
                            f"(e.g. {str(path / 'best.featx')!r})")
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            own = _own_state_class(manifest, path) if manifest.get("format") in OWN_STATE_FORMATS else None
            if own is not None:
                files = {name: z.read(name) for name in z.namelist() if name != "manifest.json"}
                try:
                    return own.__featx_restore__(manifest, files, cache_dir=cache_dir)
                except (BadInputError, KeyError) as exc:
                    raise BadInputError(f"{str(path)!r}: {exc}") from None
            if manifest.get("format") != FORMAT:
                raise BadInputError(f"{str(path)!r}: unsupported model format {manifest.get('format')!r} (this featx "
                                    f"reads {FORMAT!r}); fit the model again and save it with this version")
            payload = z.read(MODEL)
    except FileNotFoundError:
        raise BadInputError(f"model file {str(path)!r} does not exist") from None
    except (zipfile.BadZipFile, KeyError, ValueError, AttributeError, OSError) as exc:
        if isinstance(exc, FeatxError):
            raise
        raise BadInputError(f"{str(path)!r} is not a featx model file ({exc})") from None
    try:
        untrusted = sio.get_untrusted_types(data=payload)
    except Exception as exc:
        raise BadInputError(f"{str(path)!r}: the model is damaged ({exc})") from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES and not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise BadInputError(
            f"{str(path)!r} refers to types outside featx estimators/scikit-learn/numpy/scipy ({', '.join(refused)}); "
            f"refusing to load it. Only load model files you trust after inspecting them with skops."
        )
    with restoring(backbone, cache_dir) as backbones:
        try:
            model = sio.loads(payload, trusted=untrusted)
        except FeatxError as exc:
            raise type(exc)(f"{str(path)!r}: {exc}") from None
    recorded = manifest.get("backbones") or []
    if _sorted(backbones) != _sorted(recorded):
        raise BadInputError(f"{str(path)!r}: the manifest records backbones {recorded}, the model holds {backbones} "
                            f"(a different fingerprint: the file was changed after saving); save the model again")
    return model


def _sorted(backbones: list[dict]) -> list[tuple]:
    return sorted((b.get("name"), b.get("fingerprint")) for b in backbones)
