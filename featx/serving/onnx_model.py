"""Run a model written by ``featx.export`` with onnxruntime: no torch, timm or transformers.

The folder holds ``model.onnx`` (backbone + pooling + head in one graph), ``featx-onnx.json`` (what
the graph expects) and, for text, ``tokenizer.json``.  Images are decoded and resized here exactly
as featx's torch path does (the same PIL resize and centre crop, recorded in the metadata at export);
texts are tokenised with the ``tokenizers`` library, sorted by length and run in dynamic-padded
batches, as featx's torch path does.

>>> model = OnnxModel("exported/")                      # doctest: +SKIP
>>> model.predict(["photo.jpg"]), model.classes_        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError

METADATA = "featx-onnx.json"
GRAPH = "model.onnx"
TOKENIZER = "tokenizer.json"
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class OnnxModel:
    """An exported featx model, loaded with onnxruntime.

    Parameters
    ----------
    path : str or path
        The folder ``featx.export`` wrote.
    threads : int, optional
        onnxruntime intra-op threads (default: onnxruntime's choice, one per physical core).
    batch_size : int, default 32
        Samples per graph call.

    Attributes
    ----------
    classes_ : ndarray
        The class labels, in the order of ``predict_proba``'s columns.
    metadata : dict
        The contents of ``featx-onnx.json``.
    modality : str
        ``"image"`` or ``"text"``.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, batch_size: int = 32) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        meta_path, graph_path = self.path / METADATA, self.path / GRAPH
        if not meta_path.is_file() or not graph_path.is_file():
            raise BadInputError(f"{str(self.path)!r} is not an exported model folder: it needs {GRAPH} and {METADATA} "
                                f"(write one with `featx export MODEL.featx --out DIR`)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise BadInputError(f"batch_size={batch_size!r} must be a positive int")
        self.metadata: dict[str, Any] = json.loads(meta_path.read_text())
        self.modality: str = self.metadata["modality"]
        self.classes_ = np.asarray(self.metadata["classes"])
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = None
        if self.modality == "text":
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER))
            self._tokenizer.no_padding()
            self._tokenizer.enable_truncation(self.metadata["max_length"])

    def __repr__(self) -> str:
        return f"<OnnxModel {str(self.path)!r} {self.modality} {self.metadata.get('backbone')!r} {len(self.classes_)} classes>"

    # -- inputs -> graph feeds ------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """One RGB PIL image → the graph's uint8 pixels ``(H, W, 3)``: the resize and centre crop
        featx's torch path applies (torchvision's rules, done with PIL: the same pixels)."""
        from PIL import Image

        for step in self.metadata["preprocess"]:
            if "resize" in step:
                size, max_size = step["resize"], step.get("max_size")
                w, h = image.size
                if len(size) == 2:
                    new_h, new_w = size
                else:  # the shorter side to size[0], keeping the aspect ratio (torchvision's rounding)
                    short, long = (w, h) if w <= h else (h, w)
                    new_short, new_long = size[0], int(size[0] * long / short)
                    if max_size is not None and new_long > max_size:
                        new_short, new_long = int(max_size * new_short / new_long), max_size
                    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
                if (new_w, new_h) != (w, h):
                    image = image.resize((new_w, new_h), PIL_FILTERS[step["interpolation"]])
            elif "center_crop" in step:
                crop_h, crop_w = step["center_crop"]
                w, h = image.size
                if crop_w > w or crop_h > h:  # padded with black first, as torchvision does
                    pixels = np.asarray(image)
                    left, top = max(crop_w - w, 0) // 2, max(crop_h - h, 0) // 2
                    padded = np.pad(pixels, ((top, max(crop_h - h, 0) - top), (left, max(crop_w - w, 0) - left), (0, 0)))
                    image = Image.fromarray(padded)
                    w, h = image.size
                top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
                image = image.crop((left, top, left + crop_w, top + crop_h))
        return np.asarray(image, dtype=np.uint8)

    def _pixels(self, X: Sequence[Any]) -> np.ndarray:
        from ..data.samples import Samples

        samples = Samples("image", list(X), None)  # featx's own decoding: paths, PIL images, arrays -> RGB
        # Pillow releases the GIL while it decodes and resizes: one thread per core (200 photos: 0.30 -> 0.18 s)
        with ThreadPoolExecutor(min(len(samples), os.cpu_count() or 1)) as pool:
            return np.stack(list(pool.map(lambda i: self.preprocess(samples.load(i)), range(len(samples)))))

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise BadInputError(f"text model: sample {bad} is a {type(texts[bad]).__name__}, not a str")
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    # -- running the graph ----------------------------------------------------------------------
    def _run(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, labels)`` for all of X, in input order."""
        if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
            raise BadInputError(f"X must be a list of samples, not a {type(X).__name__}; wrap a single one: [x]")
        X = list(X)
        if not X:
            raise BadInputError("X is empty: pass at least one sample")
        n_classes = len(self.classes_)
        probabilities = np.empty((len(X), n_classes), dtype=np.float32)
        labels = np.empty(len(X), dtype=self.classes_.dtype)
        if self.modality == "text":
            encoded = self._encode(X)
            order = np.argsort([-len(ids) for ids in encoded], kind="stable")  # similar lengths batch together
            pad_id = self.metadata["pad_id"]
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo:lo + self.batch_size]
                width = len(encoded[idx[0]])
                ids = np.full((len(idx), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    ids[row, :len(encoded[i])] = encoded[i]
                    mask[row, :len(encoded[i])] = 1
                p, y = self.session.run(["probabilities", "label"], {"input_ids": ids, "attention_mask": mask})
                probabilities[idx], labels[idx] = p, np.asarray(y).astype(self.classes_.dtype)
        else:
            for lo in range(0, len(X), self.batch_size):
                p, y = self.session.run(["probabilities", "label"], {"pixels": self._pixels(X[lo:lo + self.batch_size])})
                probabilities[lo:lo + len(p)], labels[lo:lo + len(p)] = p, np.asarray(y).astype(self.classes_.dtype)
        return probabilities, labels

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X : list
            Image paths, PIL images or uint8 arrays (any size), or texts.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            float32, columns in the order of ``classes_``.
        """
        return self._run(X)[0]

    def predict(self, X) -> np.ndarray:
        """The predicted class of each sample (the graph's ``label`` output).

        Parameters
        ----------
        X : list
            Image paths, PIL images or uint8 arrays (any size), or texts.

        Returns
        -------
        ndarray of shape (n_samples,)
            Values of ``classes_``.
        """
        return self._run(X)[1]
