"""featx: transfer learning on cached embeddings.

Pluggable backbones (timm, transformers, third-party plugins) → a content-addressed HDF5
embedding cache → scikit-learn heads.  Heavy modules load on first use of the name that needs
them, so ``import featx`` stays fast.

>>> import featx
>>> "timm/*" in featx.list_backbones()
True
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "backbones.base", "TorchBackbone": "backbones.base", "digest": "backbones.base",
    "file_digest": "backbones.base", "EmbeddingCache": "cache", "Embedder": "estimators",
    "TransferClassifier": "estimators", "extract": "extraction", "hookimpl": "hookspecs",
    "finetune": "finetuning", "FineTunedClassifier": "finetuning", "sweep": "selection",
    "SweepResult": "selection", "load": "persist", "save": "persist", "create_backbone": "registry",
    "list_backbones": "registry", "FeatxError": "errors", "BadInputError": "errors", "CacheError": "errors",
    "PluginError": "errors", "UnknownBackboneError": "errors", "UnknownHeadError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
