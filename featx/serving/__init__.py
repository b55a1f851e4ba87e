"""Serving exported models without torch: ``OnnxModel`` runs a folder written by ``featx.export``."""

from .onnx_model import OnnxModel

__all__ = ["OnnxModel"]
