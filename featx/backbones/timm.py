"""Built-in plugin: any timm model as ``"timm/<model name>"``.

>>> import featx
>>> b = featx.create_backbone("timm/resnet18", image_size=64)   # random weights: a baseline only
>>> b.dim, b.modality, b.random_init
(512, 'image', True)

Options: ``pretrained`` / ``weights`` (a local state_dict file: .pth/.pt/.bin/.safetensors; nothing is
downloaded), ``pooling`` (timm's ``global_pool``: ``"avg"``, ``"max"``, ``"avgmax"``, ``"token"`` for
ViTs; default the model's own), ``layers`` (feature-stage indices such as ``[-1, -2]``, or one
int: every listed stage is pooled and concatenated, all from one forward pass), ``image_size``,
``precision``.  Without weights the model is randomly initialised with a fixed seed, the
fingerprint says so and ``random_init`` is True; ``"timm/tf_efficientnet_lite0"`` ships
ImageNet weights.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError, UnknownBackboneError, did_you_mean
from ..hookspecs import hookimpl
from .._fs import digest, file_digest, user_cache_dir, write_json_atomic
from .base import TorchBackbone, check_flag, layer_list

ADAPTER_VERSION = 1
SPEC_VERSION = 2  # bump when _compute_spec records more: memoised specs are then computed again
INIT_SEED = 0
LAYER_POOLINGS = ("avg", "max", "avgmax")


class TimmBackbone(TorchBackbone):
    """A timm image model; cheap to construct (dim and preprocessing are memoised on disk)."""

    modality = "image"
    default_batch_size = 16

    def __init__(self, model_name: str, *, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 pooling: str | None = None, layers: Sequence[int] | None = None, image_size: int | None = None,
                 device: str = "auto", precision: str = "fp32") -> None:
        super().__init__(device=device, precision=precision)
        name = f"timm/{model_name}"
        if check_flag(name, "pretrained", pretrained) and weights is None:
            raise BadInputError(
                f"{name}: pretrained=True needs weights=<local state_dict file> (weights are never "
                f"downloaded), or a backbone that ships them, such as 'timm/tf_efficientnet_lite0' (see `featx backbones`)"
            )
        if weights is not None and not Path(weights).is_file():
            raise BadInputError(f"{name}: weights file {str(weights)!r} does not exist")
        if pooling is not None and (not isinstance(pooling, str) or not pooling):
            raise BadInputError(f"{name}: pooling={pooling!r} must be a name such as 'avg', 'max', 'avgmax' or 'token'")
        self.layers = layer_list(name, layers)
        if self.layers is not None and (pooling or "avg") not in LAYER_POOLINGS:
            raise BadInputError(f"{name}: with layers=, pooling must be one of {LAYER_POOLINGS}")
        if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8):
            raise BadInputError(f"{name}: image_size={image_size!r} must be an int >= 8")
        self.model_name = model_name
        self.name = name
        self.weights = None if weights is None else str(weights)
        self.random_init = self.weights is None
        self.pooling = pooling
        self.image_size = image_size
        self._spec_cache: dict | None = None
        self._transform = None
        self._pixel_steps = None

    # -- cheap description: dim, views, preprocessing ------------------------------------------
    def _spec(self) -> dict:
        if self._spec_cache is None:
            key = digest(ADAPTER_VERSION, SPEC_VERSION, version("timm"), self.model_name, self.pooling, self.layers,
                         self.image_size)
            memo = user_cache_dir() / "timm-specs" / f"{key}.json"
            try:
                self._spec_cache = json.loads(memo.read_text())
            except (OSError, ValueError):
                self._spec_cache = self._compute_spec()
                try:
                    memo.parent.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(memo, self._spec_cache)
                except OSError:
                    pass  # the memo only saves time
        return self._spec_cache

    def _create(self, **kwargs):
        import timm

        extra = {"global_pool": self.pooling} if self.pooling and self.layers is None else {}
        return timm.create_model(self.model_name, pretrained=False, num_classes=0, **extra, **kwargs)

    def _compute_spec(self) -> dict:
        import timm
        import torch
        from timm.data import resolve_model_data_config

        if not timm.is_model(self.model_name):
            raise UnknownBackboneError(
                f"unknown timm model {self.model_name!r}.{did_you_mean(self.model_name, timm.list_models())} "
                f"List them with `featx backbones 'timm/*PATTERN*'`"
            )
        with torch.device("meta"):
            model = timm.create_model(self.model_name, pretrained=False, num_classes=0).eval()
            own = self._check_pooling(model)
            if self.pooling and self.layers is None and self.pooling != own:
                model = self._create().eval()
            config = resolve_model_data_config(model)
            if self.image_size is not None:
                config["input_size"] = (3, self.image_size, self.image_size)
            if self.layers is None:
                widths = {"features": model.num_features}
            else:
                x = torch.empty(1, *config["input_size"])
                stages = self._stages(model)
                maps = model.forward_intermediates(x, indices=stages, intermediates_only=True)
                widths = {f"stage{s}": int(m.shape[1]) for s, m in zip(stages, maps)}
        return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, "widths": widths,
                "pooling": own}

    def _check_pooling(self, model) -> str | None:
        """The model's own pooling; a ``BadInputError`` listing the valid ones if ``pooling`` is not
        one of them (checked here, before timm builds the model with it)."""
        pool = getattr(model, "global_pool", None)
        if pool is None:
            pool = getattr(getattr(model, "head", None), "global_pool", None)
        own = pool if isinstance(pool, str) else getattr(pool, "pool_type", None)
        own = own or None
        valid = list(LAYER_POOLINGS) + (["token"] if isinstance(pool, str) else [])  # a str: a ViT-style head
        valid += [own] if own and own not in valid else []
        if self.pooling is not None and self.layers is None and self.pooling not in valid:
            raise BadInputError(
                f"{self.name}: pooling={self.pooling!r} is not one this model takes.{did_you_mean(self.pooling, valid)} "
                f"Valid: {', '.join(valid)} (default: {own or 'avg'})"
            )
        return own

    def _stages(self, model) -> list[int]:
        """The requested feature stages as sorted non-negative indices (timm returns them in depth order)."""
        n = len(model.feature_info)
        bad = [i for i in self.layers if not -n <= i < n]
        if bad or not self.layers:
            raise BadInputError(f"{self.name}: layers={self.layers} but the model has {n} feature stages (use -{n}..{n - 1})")
        return sorted({i % n for i in self.layers})

    @property
    def dim(self) -> int:
        return sum(self._spec()["widths"].values())

    @property
    def views(self) -> dict[str, slice]:
        views, start = {}, 0
        for view, width in self._spec()["widths"].items():
            views[view] = slice(start, start + width)
            start += width
        return views

    @property
    def options(self) -> dict[str, Any]:
        """Input size, pooling (the model's own when not given), layers and the weights file."""
        spec = self._spec()
        return {"image_size": spec["config"]["input_size"][-1], "pooling": self.pooling or spec["pooling"] or "avg",
                "layers": self.layers, "weights": Path(self.weights).name if self.weights else "random init"}

    @property
    def data_config(self) -> dict:
        """timm's resolved preprocessing (input size, interpolation, mean/std, crop): part of the fingerprint."""
        return dict(self._spec()["config"])

    def fingerprint(self) -> str:
        weights = f"file:{file_digest(self.weights)}" if self.weights else f"random-init:seed={INIT_SEED}:timm={version('timm')}"
        return digest("timm", ADAPTER_VERSION, self.model_name, weights, self.data_config, self.pooling,
                      self.layers, self.precision)

    # -- the model --------------------------------------------------------------------------------
    def read_state_dict(self, path: str) -> dict:
        """Tensors from a local weights file; override to rename keys of a foreign checkpoint."""
        import torch

        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInputError(f"{self.name}: cannot read weights file {path!r} ({exc})") from None
        return state.get("state_dict", state) if isinstance(state, dict) else state

    def build_model(self):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model = self._create()
        if self.weights:
            state = self.read_state_dict(self.weights)
            head = set(model.state_dict()) ^ set(state)
            result = model.load_state_dict(state, strict=False)
            missing = [k for k in result.missing_keys if k in head]
            if missing:
                raise BadInputError(
                    f"{self.name}: weights file {self.weights!r} lacks {len(missing)} tensors of this model "
                    f"(e.g. {missing[:3]}); is it for another architecture?"
                )
        return model.to(memory_format=torch.channels_last)  # measured 1.2x faster convolutions on CPU

    def transform(self):
        """The eval transform (resize, centre crop, normalise) built from ``data_config``."""
        if self._transform is None:
            from timm.data import create_transform

            config = self.data_config
            config["input_size"] = tuple(config["input_size"])
            self._transform = create_transform(**config, is_training=False)
        return self._transform

    def optimize(self, model):
        """A copy of ``model`` with every BatchNorm folded into the convolution feeding it (measured
        1.2-1.5x faster on CPU); ``model`` itself when nothing folds or the copy's outputs differ."""
        import torch

        example = torch.randn(2, *self.data_config["input_size"], generator=torch.Generator().manual_seed(0))
        example = example.to(next(model.parameters()).device).contiguous(memory_format=torch.channels_last)
        expected = []  # the original's outputs, from the pass that finds the pairs
        folded = fold_batchnorm(model, lambda m: expected.append(self.forward(example, model=m)))
        if folded is None:
            return model
        with torch.inference_mode():
            expected, got = expected[0], self.forward(example, model=folded)
        tolerance = 1e-4 * float(expected.abs().max()) + 1e-5
        return folded if torch.allclose(expected, got, rtol=1e-3, atol=tolerance) else model

    def forward(self, batch, model=None):
        model = self.model if model is None else model
        if self.layers is None:
            return model.forward_head(model.forward_features(batch), pre_logits=True)
        stages = self._stages(model)
        maps = model.forward_intermediates(batch, indices=stages, intermediates_only=True)
        return __import__("torch").cat([_pool(m, self.pooling or "avg") for m in maps], dim=1)

    def _split_transform(self):
        """The eval transform's per-image PIL steps, and its tensor conversion + normalisation, which
        ``embed_batch`` applies to a whole uint8 batch at once."""
        if self._pixel_steps is None:
            from timm.data.transforms import MaybeToTensor, ToTensor
            from torchvision import transforms

            steps = self.transform().transforms
            if not (isinstance(steps[-2], (MaybeToTensor, ToTensor, transforms.ToTensor))
                    and isinstance(steps[-1], transforms.Normalize)):
                raise TypeError(f"{self.name}: unexpected eval transform {steps}")  # timm's eval transforms all end so
            self._pixel_steps = transforms.Compose(steps[:-2])
        return self._pixel_steps

    def preprocess(self, image) -> np.ndarray:
        """One RGB PIL image → resized, cropped uint8 pixels ``(H, W, 3)`` (runs in DataLoader workers)."""
        return np.asarray(self._split_transform()(image), dtype=np.uint8)

    def pixels_to_tensor(self, pixels: np.ndarray):
        """A uint8 batch ``(n, H, W, 3)`` → the normalised float tensor the model takes, in
        channels-last memory (what ``ToTensor`` + ``Normalize`` do image by image, done once)."""
        import torch

        config = self.data_config
        mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()  # NCHW view of NHWC memory
        return batch.div_(255.0).sub_(mean).div_(std)

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        """Embed RGB PIL images, or uint8 pixel arrays already made by ``preprocess``."""
        pixels = np.stack([x if isinstance(x, np.ndarray) else self.preprocess(x) for x in items])
        return self.run(self.pixels_to_tensor(pixels))


def fold_batchnorm(model, run) -> Any:
    """A copy of ``model`` in which each BatchNorm fed directly by a convolution is merged into that
    convolution's weights and bias (inference only), or ``None`` if no such pair exists.

    Pairs are found by running ``run(model)`` once and matching each BatchNorm's input tensor to a
    convolution's output; timm's ``BatchNormAct2d`` keeps its activation.  The caller checks that
    the copy computes the same outputs (a convolution output used elsewhere too must not fold).
    """
    import copy

    import torch
    from timm.layers import BatchNormAct2d, Conv2dSame

    produced: dict[int, tuple[str, Any]] = {}
    pairs: list[tuple[str, str]] = []
    calls: dict[str, int] = {}

    def count(name):
        calls[name] = calls.get(name, 0) + 1

    def after_conv(name):
        def hook(module, inputs, output):
            count(name)
            produced[id(output)] = (name, output)  # kept alive, so no other tensor can reuse its id
        return hook

    def before_norm(name):
        def hook(module, inputs):
            count(name)
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                pairs.append((source[0], name))
        return hook

    convs, norms = (torch.nn.Conv2d, Conv2dSame), (torch.nn.BatchNorm2d, BatchNormAct2d)  # exact types only:
    hooks = []  # a subclass may transform its weights (weight standardisation) or do more than normalise
    for name, module in model.named_modules():
        if type(module) in convs:
            hooks.append(module.register_forward_hook(after_conv(name)))
        elif type(module) in norms and module.track_running_stats:
            hooks.append(module.register_forward_pre_hook(before_norm(name)))
    try:
        with torch.inference_mode():
            run(model)
    finally:
        for hook in hooks:
            hook.remove()
    pairs = [(c, n) for c, n in pairs if calls[c] == 1 and calls[n] == 1]
    if not pairs:
        return None
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for conv_name, norm_name in pairs:
            conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
            scale = torch.rsqrt(norm.running_var + norm.eps)
            shift = -norm.running_mean * scale
            if norm.affine:
                scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(bias, requires_grad=False)
            rest = torch.nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else torch.nn.Identity()
            parent, _, attr = norm_name.rpartition(".")
            setattr(folded.get_submodule(parent) if parent else folded, attr, rest)
    return folded.eval()


def _pool(feature_map, pooling: str):
    avg = feature_map.mean(dim=(2, 3))
    if pooling == "avg":
        return avg
    peak = feature_map.amax(dim=(2, 3))
    return peak if pooling == "max" else 0.5 * (avg + peak)


def timm_factory(rest: str, **options: Any) -> TimmBackbone:
    """``timm/<rest>`` → ``TimmBackbone(rest, **options)``."""
    return TimmBackbone(rest, **options)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


timm_factory.names = _timm_names


@hookimpl
def featx_register_backbones(register):
    register("timm/*", timm_factory, description="any timm image model (random init unless weights= a local file)")
