"""The contract every backbone implements, built-in or third-party.

A backbone turns a list of samples into a float32 matrix, one row per sample::

    import numpy as np
    import featx

    class ColorHistogram(featx.Backbone):
        modality = "image"

        def __init__(self, bins: int = 8):
            self.name, self.bins, self.dim = "acme/colorhist", bins, 3 * bins

        def fingerprint(self) -> str:
            return featx.digest("acme/colorhist", 1, self.bins)   # bump 1 if the maths change

        def embed_batch(self, items):                        # RGB PIL images
            rows = [np.concatenate([np.histogram(np.asarray(im)[..., c], self.bins, (0, 256))[0]
                                    for c in range(3)]) for im in items]
            return np.asarray(rows, dtype=np.float32)
"""

from __future__ import annotations

import os
from numbers import Integral
from typing import Any, Sequence

import numpy as np

MODALITIES = ("image", "text")


class Backbone:
    """Base class of every backbone.

    Subclasses set ``name``, ``modality`` (``"image"`` or ``"text"``) and ``dim``, and implement
    ``fingerprint()`` and ``embed_batch(items)``.  Image items arrive as RGB ``PIL.Image.Image``,
    text items as ``str``.  Construction must be cheap: load weights lazily, on first embedding.

    Optional: ``views`` names column ranges of the output (several layers or poolings computed in
    one forward pass and stored once); ``options`` describes the settings that shape the output
    (for display); ``random_init`` says the weights are random, not learned; ``to(device)`` moves
    the model; ``embed_many`` embeds a large chunk at once (the built-ins sort texts by token
    length there).
    """

    name: str = ""
    modality: str = "image"
    dim: int = 0
    default_batch_size: int = 32
    random_init: bool = False  # True for a network with random weights: its features are a baseline only

    @property
    def options(self) -> dict[str, Any]:
        """The settings that shape the output, JSON-serialisable, for display (``featx cache ls``,
        sweep reports); ``{}`` unless a backbone says more."""
        return {}

    def fingerprint(self) -> str:
        """A digest that changes whenever outputs would: weights, preprocessing, layer, pooling, dtype."""
        raise NotImplementedError(f"{type(self).__name__} must implement fingerprint()")

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        """Embed ``items``; return a float32 array of shape ``(len(items), dim)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed_batch(items)")

    @property
    def views(self) -> dict[str, slice]:
        """Named column ranges of the output; by default the whole vector is one view."""
        return {"all": slice(0, self.dim)}

    def to(self, device: str) -> "Backbone":
        """Move to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …); a no-op for non-torch backbones."""
        return self

    def embed_many(self, items: Sequence[Any], batch_size: int) -> np.ndarray:
        """Embed any number of items, ``batch_size`` at a time (each batch's output is checked)."""
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([
            check_output(self, self.embed_batch(items[i:i + batch_size]), len(items[i:i + batch_size]))
            for i in range(0, len(items), batch_size)
        ])

    def __deepcopy__(self, memo) -> "Backbone":
        """Backbones are shared, not copied: ``sklearn.clone`` of an estimator holding one reuses it
        (its configuration is fixed at construction; copying would duplicate the weights)."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} modality={self.modality} dim={self.dim}>"


def check_output(backbone: Backbone, out: Any, n: int) -> np.ndarray:
    """A backbone's output as float32 ``(n, dim)``, or a ``PluginError`` naming the backbone."""
    from ..errors import PluginError

    problem = None
    if not isinstance(out, np.ndarray):
        problem = f"returned {type(out).__name__}, not a numpy array"
    elif out.shape != (n, backbone.dim):
        problem = f"returned shape {out.shape} for {n} samples; expected ({n}, {backbone.dim})"
    elif out.dtype.kind != "f":
        problem = f"returned dtype {out.dtype}; expected float32"
    elif not np.isfinite(out).all():
        problem = "returned NaN or infinite values"
    if problem:
        raise PluginError(f"backbone {backbone.name!r} ({type(backbone).__module__}.{type(backbone).__name__}) {problem}")
    return out.astype(np.float32, copy=False)


DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(device: str = "auto") -> str:
    """The torch device to use: ``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"mps"`` on
    Apple silicon, else ``"cpu"``; any other name is checked against what this machine has.

    Parameters
    ----------
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    str
        A device torch can use here; a ``BadInputError`` names the device otherwise.

    >>> resolve_device("cpu")
    'cpu'
    """
    from ..errors import BadInputError

    kind, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise BadInputError(f"device={device!r} is not a device featx knows; use {DEVICES}")
    if device == "cpu":
        return device
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if kind == "mps" and not has_mps:
        raise BadInputError("device='mps' but this machine has no Apple GPU; use device='auto' or 'cpu'")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        seen = torch.cuda.device_count()
        raise BadInputError(
            f"device={device!r} but torch sees {seen or 'no'} CUDA GPU{'s' if seen != 1 else ''} here; "
            f"use device='auto' (the GPU when there is one, else the CPU) or 'cpu'"
        )
    return device


def check_flag(owner: str, option: str, value: Any) -> bool:
    """``value`` if it is a bool, else a ``BadInputError`` naming ``owner``'s option (the strings
    ``"false"``/``"0"`` would otherwise count as true)."""
    from ..errors import BadInputError

    if not isinstance(value, (bool, np.bool_)):
        raise BadInputError(f"{owner}: {option}={value!r} must be True or False")
    return bool(value)


def layer_list(owner: str, layers: Any) -> list[int] | None:
    """``layers`` as a list of ints (a single int ``-1`` means ``[-1]``), or ``None``; a
    ``BadInputError`` naming ``owner`` for anything else."""
    from ..errors import BadInputError

    if layers is None:
        return None
    if isinstance(layers, Integral) and not isinstance(layers, bool):
        return [int(layers)]
    if isinstance(layers, (list, tuple)) and layers and all(
            isinstance(i, Integral) and not isinstance(i, bool) for i in layers):
        return [int(i) for i in layers]
    raise BadInputError(f"{owner}: layers={layers!r} must be an int or a non-empty list of ints, e.g. -1 or [-1, -2]")


_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Opt-in: let glibc keep freed activation memory in the process instead of handing large
    blocks back to the OS after every batch, whose page faults cost more than the convolutions at
    batch 8 and up on CPU (EfficientNet-Lite0 on 2 cores: batch 32 40 → 70 img/s, see
    docs/performance.md).  It changes the allocator of the whole process, so featx does it only
    when asked: call it, or set ``FEATX_MALLOC_TUNING=1`` and the first CPU model built does.
    Linux with glibc only; returns whether the settings are in effect."""
    global _allocator_tuned
    if not _allocator_tuned:
        import ctypes

        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
            return False
        m_trim_threshold, m_mmap_threshold = -1, -3
        _allocator_tuned = bool(mallopt(m_mmap_threshold, 256 << 20) and mallopt(m_trim_threshold, 512 << 20))
    return _allocator_tuned


class TorchBackbone(Backbone):
    """Helpers for torch backbones: lazy model build, device placement, eval + inference_mode, AMP.

    Subclasses implement ``build_model() -> torch.nn.Module`` and ``forward(batch) -> Tensor``
    (pooled, shape ``(n, dim)``), and call ``self.run(batch)`` inside ``embed_batch``.
    ``precision`` is ``"fp32"`` (default), ``"fp16"`` or ``"bf16"`` (autocast; part of the fingerprint).
    A subclass may also override ``optimize(model)`` to return a faster inference-only equivalent
    (its ``forward`` then receives it as ``model=``); ``model`` itself stays trainable.
    """

    def __init__(self, *, device: str = "auto", precision: str = "fp32") -> None:
        if precision not in ("fp32", "fp16", "bf16"):
            from ..errors import BadInputError

            raise BadInputError(f"precision={precision!r}: use 'fp32', 'fp16' or 'bf16'")
        self.precision = precision
        self.device = device
        self._model = None
        self._optimized = None  # optimize(model), made on the first embedding

    def build_model(self):
        raise NotImplementedError

    def optimize(self, model):
        """An inference-only module computing what ``model`` computes in eval mode, faster; by
        default ``model`` itself."""
        return model

    def _inference_model(self):
        """``optimize(model)``, built once; ``weights_changed()`` drops it."""
        model = self.model
        if model.training:  # a user may have called .train(); never embed with batch statistics
            model.eval()
        if self._optimized is None:
            self._optimized = self.optimize(model)
        return self._optimized

    def weights_changed(self) -> None:
        """Say that the model's weights were changed in place (fine-tuning, ``load_state_dict``): the
        inference copy made by ``optimize`` is rebuilt from them on the next embedding."""
        self._optimized = None

    @property
    def model(self):
        """The torch module, built on first use, in eval mode on ``self.device``."""
        if self._model is None:
            self.device = resolve_device(self.device)
            if self.device == "cpu" and os.environ.get("FEATX_MALLOC_TUNING") == "1":
                tune_cpu_allocator()
            self._model = self.build_model().eval().to(self.device)
        return self._model

    def to(self, device: str) -> "TorchBackbone":
        device = resolve_device(device)
        if self._model is not None and device != self.device:
            self._model = self._model.to(device)
            self.weights_changed()
        self.device = device
        return self

    def run(self, *tensors) -> np.ndarray:
        """``self.forward(*tensors)`` on the model's device, under ``inference_mode`` (+ autocast),
        returned as float32 numpy.  Inputs are CPU tensors; they are pinned when going to a GPU."""
        import torch

        fast = self._inference_model()
        device = torch.device(self.device)
        if device.type == "cuda":
            tensors = [t.pin_memory().to(device, non_blocking=True) for t in tensors]
        else:
            tensors = [t.to(device) for t in tensors]
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = self.forward(*tensors) if fast is self.model else self.forward(*tensors, model=fast)
        return out.float().cpu().numpy()

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def embed_many(self, items: Sequence[Any], batch_size: int) -> np.ndarray:
        """Like ``Backbone.embed_many``; on a GPU out-of-memory error the batch size is halved and
        the call retried (the smaller size then sticks for this backbone)."""
        import torch

        batch_size = min(batch_size, getattr(self, "_max_batch", batch_size))
        while True:
            try:
                return self.embed_chunk(items, batch_size)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = self._max_batch = batch_size // 2

    def embed_chunk(self, items: Sequence[Any], batch_size: int) -> np.ndarray:
        """The batched loop behind ``embed_many`` (override for a faster one)."""
        return Backbone.embed_many(self, items, batch_size)
