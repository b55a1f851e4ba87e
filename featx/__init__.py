"""featx: transfer learning on cached embeddings.

Pluggable backbones (timm, transformers, third-party plugins) → a content-addressed HDF5
embedding cache → scikit-learn heads.  Heavy modules load on first use of the name that needs
them, so ``import featx`` stays fast.

>>> import featx
>>> "timm/*" in featx.list_backbones()
True
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "backbones.base", "TorchBackbone": "backbones.base", "TimmBackbone": "backbones.timm",
    "HFBackbone": "backbones.hf", "digest": "_fs", "file_digest": "_fs", "EmbeddingCache": "cache", "Store": "cache",
    "Embedder": "estimators", "TransferClassifier": "estimators", "TransferRegressor": "estimators", "extract": "extraction.pipeline",
    "Extraction": "extraction.pipeline", "ExtractStats": "extraction.pipeline", "hookimpl": "plugins.hookspecs", "finetune": "finetuning.run",
    "FineTunedClassifier": "finetuning.estimator", "FineTuneResult": "finetuning.run", "sweep": "selection.sweep",
    "SweepResult": "selection.sweep", "load": "persist", "save": "persist", "create_backbone": "plugins.registry",
    "list_backbones": "plugins.registry", "FeatxError": "errors", "BadInputError": "errors", "CacheError": "errors",
    "PluginError": "errors", "UnknownBackboneError": "errors", "UnknownHeadError": "errors",
    "RandomInitWarning": "errors", "detect_shift": "shift.detect", "ShiftReport": "shift.detect",
    "export": "deploy.export",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time each name loads on first use
    from ._fs import digest, file_digest
    from .backbones.base import Backbone, TorchBackbone
    from .backbones.hf import HFBackbone
    from .backbones.timm import TimmBackbone
    from .cache import EmbeddingCache, Store
    from .errors import (BadInputError, CacheError, FeatxError, PluginError, RandomInitWarning,
                         UnknownBackboneError, UnknownHeadError)
    from .estimators import Embedder, TransferClassifier, TransferRegressor
    from .extraction.pipeline import Extraction, ExtractStats, extract
    from .finetuning.estimator import FineTunedClassifier
    from .finetuning.run import FineTuneResult, finetune
    from .plugins.hookspecs import hookimpl
    from .persist import load, save
    from .plugins.registry import create_backbone, list_backbones
    from .selection.sweep import SweepResult, sweep
    from .shift.detect import ShiftReport, detect_shift
    from .deploy.export import export


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
