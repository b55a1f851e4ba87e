"""Export a fitted featx model as one ONNX graph: backbone + pooling + head, with its preprocessing.

The backbone goes through ``torch.onnx.export``, the scikit-learn head through ``skl2onnx``, and
``onnx.compose.merge_models`` joins them; ``featx.serving.OnnxModel`` runs the folder without torch.

- Image graphs take uint8 RGB pixels ``pixels`` ``(N, H, W, 3)`` at the model's input size; the
  scaling to [0, 1] and the mean/std normalisation are inside the graph.  The resize and centre
  crop that bring any photo to that size are recorded in ``featx-onnx.json`` (``OnnxModel`` does
  them with PIL, as featx does).
- Text graphs take ``input_ids`` and ``attention_mask`` (int64, ``(N, L)``, any L up to
  ``max_length``); the tokenizer is written beside the graph as ``tokenizer.json`` (the
  ``tokenizers`` library reads it), not put in the graph: onnxruntime-extensions would be one more
  native dependency for the server, and length-sorted dynamic padding needs the token counts
  before the graph runs anyway.

Outputs: ``probabilities`` ``(N, C)`` float32 and ``label`` ``(N,)`` (the class values).

>>> featx.export(featx.load("model.featx"), "exported/")     # doctest: +SKIP
PosixPath('exported')
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError

DEFAULT_OPSET = 17
FORMAT = "featx-onnx-v1"
QUANTIZATIONS = ("int8",)
INSTALL = "pip install 'featx[export]'"


def _require_export_libraries() -> None:
    for module in ("torch", "onnx", "onnxruntime", "skl2onnx"):
        try:
            __import__(module)
        except ImportError:
            raise BadInputError(f"exporting to ONNX needs {module}, which is not installed: {INSTALL}") from None


def export(model: Any, out_dir: str | os.PathLike, *, opset: int | None = None, quantize: str | None = None) -> Path:
    """Write ``model`` as ``out_dir/model.onnx`` + ``out_dir/featx-onnx.json`` (+ tokenizer files).

    Parameters
    ----------
    model : TransferClassifier or FineTunedClassifier
        A fitted featx classifier with a timm or transformers backbone.  A ``TransferClassifier``'s
        head is any built-in one (``logreg``, ``svm``, ``mlp``, ``knn``) or a scikit-learn
        classifier that skl2onnx converts; adapted with ``adapt="coral"`` or ``"sa"``, its adapter's
        linear map comes first in the graph.
    out_dir : str or path
        The folder to write (created; files of an earlier export there are replaced).
    opset : int, optional
        The ONNX opset of the whole graph (default 17), for both the ``''`` and ``ai.onnx.ml`` domains.
    quantize : {"int8"}, optional
        ``"int8"``: dynamic int8 quantisation of the weights (onnxruntime's ``quantize_dynamic``);
        smaller and often faster, but check its accuracy (docs/deploy.md).  Default: float32.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from .. import __version__

    _require_export_libraries()
    import onnx

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise BadInputError(f"quantize={quantize!r}: use 'int8', or None for float32")
    opset = DEFAULT_OPSET if opset is None else opset
    versions = [row for row in onnx.helper.VERSION_TABLE if row[2] == opset]
    if isinstance(opset, bool) or not isinstance(opset, int) or not versions or opset < 14:
        raise BadInputError(f"opset={opset!r}: use an ONNX opset from 14 to {onnx.defs.onnx_opset_version()}")
    ir_version, ml_opset = versions[0][1], versions[0][3]
    kind, backbone = _describe(model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {str(out)!r} is a file; give a folder to write the model into")
    out.mkdir(parents=True, exist_ok=True)

    backbone.to("cpu")
    graph = _torch_graph(model, kind, backbone, opset)
    if kind == "finetuned":
        graph = _add_label(graph, np.asarray(model.classes_))
    else:
        head = _head_graph(model, backbone, opset, ml_opset)
        for part in (graph, head):
            part.ir_version = ir_version
        graph = onnx.compose.merge_models(graph, head, io_map=[("features", "features")], prefix2="head_")
        _dedupe_opsets(graph)
        for name in ("probabilities", "label"):
            _rename(graph.graph, f"head_{name}", name)
        outputs = sorted(graph.graph.output, key=lambda o: o.name != "probabilities")  # probabilities first
        del graph.graph.output[:]
        graph.graph.output.extend(outputs)
    graph.producer_name, graph.producer_version = "featx", __version__
    onnx.checker.check_model(graph)
    _write_graph(graph, out / "model.onnx", quantize)

    meta = {"format": FORMAT, "featx_version": __version__, "estimator": type(model).__name__,
            "backbone": model.backbone_name_, "fingerprint": model.fingerprint_, "modality": backbone.modality,
            "classes": np.asarray(model.classes_).tolist(), "opset": opset, "quantization": quantize,
            "inputs": ["pixels"] if backbone.modality == "image" else ["input_ids", "attention_mask"],
            "outputs": ["probabilities", "label"]}
    meta.update(_image_meta(backbone) if backbone.modality == "image" else _text_meta(backbone, out))
    from .._fs import write_json_atomic

    write_json_atomic(out / "featx-onnx.json", meta, indent=2)
    return out


def _describe(model) -> tuple[str, Any]:
    """``("transfer" | "finetuned", the torch backbone)``, or a ``BadInputError`` saying what exports."""
    from ..backbones.hf import HFBackbone
    from ..backbones.timm import TimmBackbone
    from ..estimators import TransferClassifier
    from ..finetuning.estimator import FineTunedClassifier

    if isinstance(model, FineTunedClassifier):
        if not hasattr(model, "network_"):
            raise BadInputError("cannot export this FineTunedClassifier: it is not fitted; call fit(X, y) first")
        if model.task_ != "classification":  # the exported graph ends in a softmax over classes
            raise BadInputError(f"cannot export a fine-tuned {model.task_} model: featx export takes single-label "
                                f"classifiers; keep the .featx file and featx.load it")
        return "finetuned", model.backbone_.base
    if not isinstance(model, TransferClassifier):
        raise BadInputError(f"cannot export a {type(model).__name__}: featx export takes a fitted TransferClassifier "
                            f"or FineTunedClassifier (a .featx file saved from one)")
    if not hasattr(model, "head_"):
        raise BadInputError("cannot export this TransferClassifier: it is not fitted; call fit(X, y) first")
    if not isinstance(model.backbone_, (TimmBackbone, HFBackbone)):
        raise BadInputError(f"cannot export backbone {model.backbone_name_!r} ({type(model.backbone_).__name__}): only "
                            f"timm/... and hf/... backbones have a torch graph to export")
    return "transfer", model.backbone_


def _torch_graph(model, kind: str, backbone, opset: int):
    """The backbone (+ the fine-tuned head and softmax) as an ONNX model: inputs ``pixels`` or
    ``input_ids``/``attention_mask``; output ``features`` (transfer) or ``probabilities`` (fine-tuned)."""
    import onnx
    import torch

    image = backbone.modality == "image"
    if kind == "finetuned":
        network = model.network_.eval()
        body = lambda *inputs: torch.softmax(network(*inputs), dim=1)  # noqa: E731
    else:
        columns = model._columns(backbone)
        half = model.cache_dtype == "float16"  # the head was fitted on vectors rounded to float16

        def body(*inputs):
            features = backbone.forward(*inputs)[:, columns]
            return features.half().float() if half else features

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # registered, so that its weights become the graph's initialisers
            self.encoder = model.network_ if kind == "finetuned" else backbone.model
            if image:
                config = backbone.data_config
                self.register_buffer("mean", torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1))
                self.register_buffer("std", torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, *inputs):
            if image:  # what TimmBackbone.pixels_to_tensor does, in the same order
                inputs = (inputs[0].permute(0, 3, 1, 2).float().div(255.0).sub(self.mean).div(self.std),)
            return body(*inputs)

    output = "probabilities" if kind == "finetuned" else "features"
    if image:
        size = backbone.data_config["input_size"]
        example = (torch.zeros((2, size[1], size[2], 3), dtype=torch.uint8),)
        names, axes = ["pixels"], {"pixels": {0: "batch"}, output: {0: "batch"}}
    else:
        example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
        names = ["input_ids", "attention_mask"]
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                output: {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _eager_attention(backbone):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        # The TorchScript exporter (dynamo=False): it traces these encoders in seconds with dynamic
        # batch and token axes; the torch.export-based one took minutes on this CPU for the same graph.
        torch.onnx.export(Graph().eval(), example, buffer, input_names=names, output_names=[output],
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    graph = onnx.load_from_string(buffer.getvalue())
    return _constant_pads(graph) if image else graph


@contextlib.contextmanager
def _eager_attention(backbone):
    """Trace a transformers encoder with its eager attention (restored afterwards).

    The graph of torch's ``scaled_dot_product_attention`` zeroes the rows of fully masked queries
    with ``Where(IsNaN(softmax))`` over the whole ``(N, heads, L, L)`` attention matrix in every
    layer: a quarter of MiniLM's run time in onnxruntime.  The eager attention computes the same
    values (``softmax(QK^T / sqrt(d) + mask) V``) without it (docs/deploy.md).
    """
    network = backbone.model
    before = getattr(getattr(network, "config", None), "_attn_implementation", None)
    if backbone.modality != "text" or before in (None, "eager") or not hasattr(network, "set_attn_implementation"):
        yield
        return
    network.set_attn_implementation("eager")
    try:
        yield
    finally:
        network.set_attn_implementation(before)


def _constant_pads(graph):
    """The image graph with each Pad's amounts as a constant, so onnxruntime folds the Pad into its Conv.

    timm's TensorFlow-style "same" padding (``tf_efficientnet_*`` and others) computes the amounts
    from the input's height and width; the trace keeps that arithmetic (Shape, Ceil, ...) in the
    graph, and onnxruntime does not fold a Shape whose batch axis is dynamic.  The size is fixed, so
    the amounts are evaluated once, at batch sizes 1 and 2 (they are kept only if both agree); the
    Pads and their layout reorders were a third of Lite0's run time (docs/deploy.md).
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    constants = {tensor.name for tensor in graph.graph.initializer}
    pads = [node for node in graph.graph.node if node.op_type == "Pad" and node.input[1] not in constants]
    if not pads:
        return graph
    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    names = list(dict.fromkeys(node.input[1] for node in pads))
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = graph.graph.input[0]
    shape = [dim.dim_value for dim in pixels.type.tensor_type.shape.dim[1:]]
    one, two = (session.run(names, {pixels.name: np.zeros([batch, *shape], np.uint8)}) for batch in (1, 2))
    if not all(np.array_equal(a, b) for a, b in zip(one, two)):
        return graph
    for name, value in zip(names, one):
        graph.graph.initializer.append(numpy_helper.from_array(value, f"{name}_constant"))
    for node in pads:
        node.input[1] = f"{node.input[1]}_constant"
    # the arithmetic that computed them is now unused: keep only what the outputs need
    kept = onnx.utils.Extractor(graph).extract_model([pixels.name], [output.name for output in graph.graph.output])
    kept.graph.name = graph.graph.name
    return kept


def _head_graph(model, backbone, opset: int, ml_opset: int):
    """The fitted head as an ONNX model (skl2onnx): input ``features``, outputs ``probabilities`` and ``label``."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from ..heads import HEADS, _Head, head_name

    head, affine = _unadapted(model.head_, model.n_features_in_)
    adapted = head is not model.head_  # fitted on class codes: the label comes from the probabilities
    estimator = head.model_ if isinstance(head, _Head) else head  # built-in heads wrap a Pipeline
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    width = model.n_features_in_ if affine is None else affine[0].shape[1]  # SA maps to fewer columns
    try:
        onx = convert_sklearn(estimator, initial_types=[("features", FloatTensorType([None, width]))],
                              target_opset={"": opset, "ai.onnx.ml": ml_opset},
                              options={id(final): {"zipmap": False}})
    except Exception as exc:  # skl2onnx raises several types for an estimator it has no converter for
        raise BadInputError(
            f"cannot export head {head_name(model.head)!r} ({type(final).__name__}): skl2onnx cannot convert it "
            f"({str(exc).splitlines()[0][:200]}). Exportable heads: the built-in {', '.join(HEADS)}, or a scikit-learn "
            f"classifier skl2onnx supports (LogisticRegression, RandomForestClassifier, "
            f"GradientBoostingClassifier, KNeighborsClassifier, MLPClassifier, ...)"
        ) from None
    if next(o.version for o in onx.opset_import if o.domain in ("", "ai.onnx")) != opset:
        onx = onnx.version_converter.convert_version(onx, opset)  # skl2onnx picks the lowest opset its ops need
    outputs = [o.name for o in onx.graph.output]
    label, probabilities = outputs[0], outputs[1]  # skl2onnx's classifiers: the label, then the scores
    _rename(onx.graph, label, "label")
    _rename(onx.graph, probabilities, "probabilities")
    if onx.graph.output[1].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BadInputError(f"cannot export head {type(final).__name__}: its probabilities are not float32")
    if affine is not None:
        _prepend_affine(onx.graph, *affine)
    if adapted:
        _rename(onx.graph, "label", "class_code")
        onx.graph.output.remove(next(o for o in onx.graph.output if o.name == "class_code"))
        onx = _add_label(onx, np.asarray(model.classes_))
    return onx


def _unadapted(head, width: int):
    """``(head, None)``; for an ``AdaptedHead``, ``(its fitted inner head, (A, b))``: the affine map
    ``x @ A + b`` its adapter applies to target samples, read off the adapter and checked to be it
    (``None`` when ``adapt="auto"`` kept the head as it was).

    skl2onnx has no converter for skada's adapters; the map of a linear one (CORAL, subspace
    alignment) is two ONNX nodes, so featx writes those itself.
    """
    from ..shift.adapt import AdaptedHead, skada_routing

    if not isinstance(head, AdaptedHead):
        return head, None
    adapter, inner = head.pipeline_[:-1], head.pipeline_.steps[-1][1].base_estimator_
    if head.adapt_ == "self-training":
        raise BadInputError("cannot export a head adapted by self-training: export takes the linear adapters "
                            "(adapt='coral', 'sa', or what adapt='auto' chose when it is one of them)")
    if not len(adapter):
        return inner, None
    probe = np.random.default_rng(0).normal(size=(8, width))
    with skada_routing():
        offset = adapter.transform(np.zeros((1, width)))[0]
        matrix = adapter.transform(np.eye(width)) - offset
        mapped = adapter.transform(probe)
    if mapped.shape[1] != matrix.shape[1] or not np.allclose(probe @ matrix + offset, mapped, rtol=1e-5, atol=1e-6):
        raise BadInputError(f"cannot export adapter {head.adapt_!r}: it is not a linear map of the embeddings; "
                            f"export takes adapt='coral' or 'sa'")
    return inner, (matrix, offset)


def _prepend_affine(graph, matrix: np.ndarray, offset: np.ndarray) -> None:
    """Make the graph's input ``features`` pass through ``features @ matrix + offset`` first."""
    from onnx import helper, numpy_helper

    _rename(graph, "features", "adapted_features")
    graph.input[0].name = "features"
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = matrix.shape[0]
    graph.initializer.extend([numpy_helper.from_array(matrix.astype(np.float32), "adapt_matrix"),
                              numpy_helper.from_array(offset.astype(np.float32), "adapt_offset")])
    nodes = [helper.make_node("MatMul", ["features", "adapt_matrix"], ["adapt_product"]),
             helper.make_node("Add", ["adapt_product", "adapt_offset"], ["adapted_features"])]
    for node in reversed(nodes):
        graph.node.insert(0, node)


def _dedupe_opsets(graph) -> None:
    """Keep one ``opset_import`` per domain (the highest version; ``"ai.onnx"`` counts as ``""``).

    ``merge_models`` concatenates both models' imports, so the default domain is listed twice, and
    onnxruntime's ``quantize_dynamic`` refuses a graph that does not list it exactly once.
    """
    versions: dict[str, int] = {}
    for entry in graph.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    del graph.opset_import[:]
    for domain, version in versions.items():
        graph.opset_import.add(domain=domain, version=version)


def _rename(graph, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` everywhere in ``graph`` (nodes, inputs, outputs)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def _add_label(graph, classes: np.ndarray):
    """Append ``label = classes[argmax(probabilities)]`` to a graph that outputs ``probabilities``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    values = classes.astype(object) if classes.dtype.kind in "US" else classes.astype(np.int64)
    if classes.dtype.kind not in "USiu":
        raise BadInputError(f"cannot export classes of dtype {classes.dtype}: use int or str labels")
    g = graph.graph
    g.initializer.append(numpy_helper.from_array(np.asarray(values), "class_values"))
    g.node.extend([helper.make_node("ArgMax", ["probabilities"], ["class_index"], axis=1, keepdims=0),
                   helper.make_node("Gather", ["class_values", "class_index"], ["label"], axis=0)])
    kind = TensorProto.STRING if classes.dtype.kind in "US" else TensorProto.INT64
    g.output.append(helper.make_tensor_value_info("label", kind, ["batch"]))
    return onnx.shape_inference.infer_shapes(graph)


def _write_graph(graph, path: Path, quantize: str | None) -> None:
    from .._fs import atomic_write

    if quantize is None:
        with atomic_write(path) as f:
            f.write(graph.SerializeToString())
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(graph.SerializeToString())
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs its advice and every tensor it leaves in float there
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        with atomic_write(path) as f:
            f.write(int8.read_bytes())


def _image_meta(backbone) -> dict:
    """The input size, normalisation, and the PIL steps (resize, centre crop) from timm's eval transform."""
    from torchvision import transforms

    config = backbone.data_config
    steps = []
    for step in backbone._split_transform().transforms:
        if isinstance(step, transforms.Resize):
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            steps.append({"resize": size, "interpolation": step.interpolation.value, "max_size": step.max_size})
        elif isinstance(step, transforms.CenterCrop):
            steps.append({"center_crop": list(step.size)})
        else:
            raise BadInputError(f"cannot export {backbone.name!r}: its preprocessing step {step!r} has no PIL "
                                f"equivalent in featx.serving (Resize and CenterCrop have)")
    return {"input_size": config["input_size"][1:], "mean": config["mean"], "std": config["std"],
            "interpolation": config["interpolation"], "crop_pct": config.get("crop_pct"), "preprocess": steps}


def _text_meta(backbone, out: Path) -> dict:
    """Copy the tokenizer files and write ``tokenizer.json`` (the fast tokenizer featx runs, exactly)."""
    from ..backbones.hf import TOKENIZER_FILES

    tokenizer = backbone.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError(f"cannot export {backbone.name!r}: its tokenizer has no tokenizer.json form (not a "
                            f"'fast' tokenizer), which featx.serving needs")
    for name in TOKENIZER_FILES:
        if name != "tokenizer.json" and (backbone.model_dir / name).is_file():
            shutil.copyfile(backbone.model_dir / name, out / name)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    return {"max_length": backbone.max_length, "pad_id": tokenizer.pad_token_id or 0, "pooling": backbone.pooling,
            "normalize": backbone.normalize}
