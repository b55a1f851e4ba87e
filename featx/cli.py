"""The ``featx`` command line.  Heavy libraries are imported inside each command.

    featx backbones 'timm/*resnet*'
    featx extract data/images --backbone timm/tf_efficientnet_lite0
    featx fit reviews.csv --backbone hf/all-MiniLM-L6-v2 --head logreg --head-param C=10 --out model.featx
    featx predict model.featx new_reviews.csv --proba --out predictions.csv
    featx evaluate model.featx test_reviews.csv
    featx cache ls
    featx sweep data/images -b timm/tf_efficientnet_lite0 -b timm/resnet18 --run-dir runs/images
    featx finetune runs/images --strategy lp-ft --epochs 3

Every error a user can cause is printed as ``featx: error: ...`` (exit code 2), in the words of the
command line (``--errors skip``, not ``errors='skip'``), and nothing is written.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from pathlib import Path

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
DEVICES = "auto, cpu, cuda, cuda:N or mps"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# the API's parameters named in its messages -> the flags that do the same on the command line
FLAGS = {"errors": "--errors", "device": "--device", "text_column": "--text-column", "label_column": "--label-column",
         "backbone_options": "-o", "head_params": "--head-param", "opset": "--opset", "quantize": "--quantize",
         "cv": "--cv"}


# -- argument types: argparse turns their errors into usage errors (exit 2) -----------------------
def _value(text: str) -> object:
    """A command-line value: a boolean (true/false/yes/no, any case), a Python literal, else the text."""
    booleans = {"true": True, "yes": True, "false": False, "no": False}
    if text.lower() in booleans:
        return booleans[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _option(text: str) -> tuple[str, object]:
    """``key=value`` (``layers=-1`` means the list ``[-1]``).

    >>> _option("pretrained=False"), _option("layers=-1"), _option("pooling=cls")
    (('pretrained', False), ('layers', [-1]), ('pooling', 'cls'))
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} must look like key=value")
    parsed = _value(value)
    if key.rpartition(":")[2] == "layers" and isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = [parsed]
    return key, parsed


def _number(kind: type, valid, rule: str):
    """An argparse type: a ``kind`` (int or float) for which ``valid(value)`` holds, else ``rule``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return parse


POSITIVE_INT = _number(int, lambda v: v >= 1, "must be an integer >= 1")
FOLDS = _number(int, lambda v: v >= 2, "must be an integer >= 2")
FIT_FOLDS = _number(int, lambda v: v == 0 or v >= 2, "must be an integer >= 2, or 0 for no estimate")
POSITIVE = _number(float, lambda v: v > 0, "must be a positive number")
FRACTION = _number(float, lambda v: 0 <= v < 1, "must be a fraction from 0 (no held-out split) up to, not including, 1")
PORT = _number(int, lambda v: 1 <= v <= 65535, "must be a port number from 1 to 65535")
NON_NEGATIVE = _number(float, lambda v: v >= 0, "must be a number >= 0")
ALPHA = _number(float, lambda v: 0 < v < 1, "must be a number strictly between 0 and 1, e.g. 0.05")
TOP_K = _number(int, lambda v: v >= 1, "must be a whole number of setups, at least 1")
RANKINGS = ("cv", "logme", "h_score", "nleep", "nce", "sfda", "static")  # featx.selection.sweep's rank_by


def _device(text: str) -> str:
    name, _, index = text.partition(":")
    if name in ("auto", "cpu", "mps") and not index or name == "cuda" and (not index or index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use {DEVICES}")


def _duration(text: str) -> float:
    """``90s``, ``30m``, ``12h`` or ``30d`` in seconds.

    >>> _duration("30d"), _duration("1.5h")
    (2592000.0, 5400.0)
    """
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in DURATION_UNITS or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number and a unit (s, m, h or d), e.g. 30d or 12h")
    return value * DURATION_UNITS[unit]


class _Parser(argparse.ArgumentParser):
    """Usage errors read ``featx: error: ...`` like every other error (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"featx: error: {message} (see `{self.prog} --help`)\n")


# -- inputs and outputs -------------------------------------------------------------------------------
def _input_kind(data: str) -> str:
    """``"image"`` for a folder or an image file, ``"text"`` for a CSV/TSV/JSONL table."""
    from .data.samples import IMAGE_SUFFIXES
    from .errors import BadInputError

    path = Path(data)
    if not path.exists():
        raise BadInputError(f"input {data!r} does not exist")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if path.suffix.lower() in TABLE_SUFFIXES:
        return "text"
    raise BadInputError(f"input {data!r} is not an image folder, an image file or a table "
                        f"({', '.join(TABLE_SUFFIXES)})")


def _check_modality(data: str, backbone_name: str, modality: str) -> None:
    """``data`` must hold what the backbone embeds (checked before anything is read)."""
    from .errors import BadInputError

    kind = _input_kind(data)
    if kind != modality:
        held = "images" if kind == "image" else "texts (a table)"
        raise BadInputError(f"input {data!r} holds {held} but backbone {backbone_name!r} embeds {modality}s: "
                            f"give it {modality} input, or choose a{'n' if kind == 'image' else ''} {kind} backbone "
                            f"(see `featx backbones`)")


def _column(table: str, column: str, flag: str) -> list[str]:
    """One column of a CSV/TSV/JSONL file; a missing one is an error naming ``flag`` and the columns present."""
    from .data.loaders import load_text_table
    from .errors import BadInputError

    try:
        return load_text_table(table, column, None)[0]
    except BadInputError as exc:
        raise BadInputError(str(exc).replace("pass text_column=", f"pass {flag} NAME")) from None


def _unlabelled(data: str, modality: str, text_column: str = "text",
                id_column: str | None = None) -> tuple[list[str], list[str], str]:
    """Samples to embed, their names and what the names are: every image under a folder (its
    path), one image file, or a table's texts (named by ``id_column``, else by row number from 1)."""
    from .data.loaders import list_images
    from .data.samples import IMAGE_SUFFIXES
    from .errors import BadInputError

    if Path(data).is_dir():
        paths = list_images(data)
        if not paths:
            raise BadInputError(f"no images under folder {data!r} (searched recursively for "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        return paths, paths, "sample"
    if modality == "image":
        return [data], [data], "sample"
    texts = _column(data, text_column, "--text-column")
    if id_column is None:
        return texts, [str(i) for i in range(1, len(texts) + 1)], "row"
    return texts, _column(data, id_column, "--id-column"), id_column


def _labelled(data: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Samples and labels: an image folder ``root/<class>/*`` or a table's text and label columns."""
    from .data.loaders import load_image_folder
    from .errors import BadInputError

    if Path(data).is_dir():
        return load_image_folder(data)
    if _input_kind(data) == "image":
        raise BadInputError(f"input {data!r} is a single image: labelled images are a folder root/<class>/*.jpg")
    return _column(data, text_column, "--text-column"), _column(data, label_column, "--label-column")


def _output(path: str | None, flag: str = "--out") -> Path | None:
    """Check that ``path`` can be written (before any work is done)."""
    from .errors import BadInputError

    if path is None:
        return None
    out = Path(path)
    folder = out.parent
    if out.is_dir():
        raise BadInputError(f"{flag} {path!r} is a folder; give a file name")
    if not folder.is_dir():
        raise BadInputError(f"{flag} {path!r}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise BadInputError(f"{flag} {path!r}: folder {str(folder)!r} is not writable")
    return out


def _write(text: str, out: Path | None) -> None:
    """``text`` to stdout, or to ``out`` atomically: the whole file or, on any failure, none."""
    from ._fs import atomic_write

    if out is None:
        sys.stdout.write(text)
        return
    with atomic_write(out) as f:
        f.write(text.encode("utf-8"))


def _csv(rows: list[list]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _table(rows: list[list], right: tuple[int, ...] = ()) -> str:
    """Rows of cells as aligned text; the columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in cells)


def _counts(y) -> str:
    import numpy as np

    classes, counts = np.unique(np.asarray(y).astype(str), return_counts=True)
    return ", ".join(f"{c} {n}" for c, n in zip(classes, counts))


# -- arguments shared by commands ----------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser, what: str, labels: bool = True) -> None:
    p.add_argument("data", help=what)
    p.add_argument("--text-column", default="text", help="text column of a CSV/TSV/JSONL table (default: text)")
    if labels:
        p.add_argument("--label-column", default="label", help="label column of a table (default: label)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """How samples are embedded: cache, batch size, device, unreadable samples, progress."""
    p.add_argument("--cache-dir", help="embedding cache (default: $FEATX_CACHE_DIR or ./cache)")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="samples per forward pass (default: tuned)")
    p.add_argument("--device", type=_device, default="auto", help=f"{DEVICES} (default: auto)")
    p.add_argument("--errors", choices=["raise", "skip"], default="raise",
                   help="unreadable samples: stop with a list of them (raise) or leave them out (skip)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", "-b", required=True, help="a registered name, see `featx backbones`")
    p.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. -o image_size=128 -o pretrained=false -o layers=[-1,-2])")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where cache misses are embedded")
    _add_run_args(p)


def _check_device(device: str) -> None:
    """A device that is not there (``--device cuda`` without a GPU) fails before any work."""
    from .backbones.base import resolve_device

    if device != "auto":
        resolve_device(device)


def _backbone(name: str, options: dict | None, device: str = "auto"):
    """The backbone ``name`` with ``options``; bad options and an unusable device fail here, before any work."""
    from .plugins.registry import resolve_backbone

    _check_device(device)
    return resolve_backbone(name, options or None)


# -- backbones and extraction -------------------------------------------------------------------------
def cmd_backbones(args) -> int:
    from .backbones.base import TorchBackbone
    from .errors import FeatxError
    from .plugins.registry import create_backbone, describe_backbones, list_backbones

    names = list_backbones(args.pattern)
    if not names:
        print(f"featx: no backbone matches {args.pattern!r}", file=sys.stderr)
        return 1
    registered = {name: (plugin, description) for name, plugin, description in describe_backbones()}
    rows = [["name", "modality", "dim", "weights", "plugin", "description"]]
    for name in names:
        if name.endswith("/*"):
            rows.append([name, "-", "-", "per model", *registered[name]])
            continue
        plugin, description = registered.get(name) or (
            next(p for n, (p, _) in registered.items() if n.endswith("/*") and name.startswith(n[:-1])), "")
        try:
            backbone = create_backbone(name)
            # a namespace member's dim builds its model: shown when it is the only name listed
            dim = backbone.dim if name in registered or len(names) == 1 else "-"
            weights = "random init" if backbone.random_init else (
                "pretrained" if isinstance(backbone, TorchBackbone) else "none (not learned)")
            rows.append([name, backbone.modality, dim, weights, plugin, description])
        except FeatxError as exc:
            rows.append([name, "-", "-", f"unavailable: {exc}", plugin, description])
    print(_table(rows, right=(2,)))
    if any(row[2] == "-" and not row[0].endswith("/*") for row in rows[1:]):
        print("(dim of a model in a namespace: `featx backbones NAME`)")
    return 0


def cmd_extract(args) -> int:
    from .extraction.pipeline import extract

    backbone = _backbone(args.backbone, dict(args.option), args.device)
    _check_modality(args.data, backbone.name, backbone.modality)
    X, _, _ = _unlabelled(args.data, backbone.modality, args.text_column)
    result = extract(backbone, X, cache_dir=args.cache_dir, batch_size=args.batch_size, device=args.device,
                     errors=args.errors, progress=not args.quiet, engine=args.engine, address=args.address,
                     num_actors=args.num_actors, num_gpus=args.num_gpus)
    s = result.stats
    print(f"{s.backbone}: {s.samples} samples ({s.unique} unique), {s.hits} cached, {s.embedded} embedded "
          f"in {s.seconds:.1f}s -> store {s.store_key}")
    _report_skipped(s.failed)
    return 0


def _report_skipped(failed: list[str]) -> None:
    for line in failed:
        print(f"featx: skipped (unreadable): {line}", file=sys.stderr)


# -- fit / predict / evaluate ------------------------------------------------------------------------
def _head_params(head: str, pairs: list[tuple[str, object]]) -> dict:
    """``--head-param`` pairs, checked against the head's parameters."""
    from .errors import BadInputError, did_you_mean
    from .heads import make_head

    valid = sorted(make_head(head).get_params(deep=False))
    for key, _ in pairs:
        if key not in valid:
            same = [p for p in valid if p.lower() == key.lower()]
            hint = f" Did you mean: {same[0]!r}?" if same else did_you_mean(key, valid)
            raise BadInputError(f"--head-param {key}: head {head!r} has no parameter {key!r}.{hint} "
                                f"Its parameters: {', '.join(valid)}")
    return dict(pairs)


def _estimate(model, X, y, folds: int, args) -> str:
    """What the fitted model's accuracy is likely to be on new data: ``folds``-fold cross-validation
    of its head on the cached embeddings, or a held-out split when a class has a single sample."""
    import numpy as np
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

    from .extraction.pipeline import extract

    vectors = extract(model.backbone_, X, cache_dir=args.cache_dir, errors=args.errors).vectors  # all cached now
    ok = ~np.isnan(vectors).any(axis=1)
    Z, y = vectors[ok], np.asarray(y)[ok]
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() >= 2:
        k = min(folds, int(counts.min()))
        scores = cross_validate(clone(model.head_), Z, y, scoring=("accuracy", "f1_macro"),
                                cv=StratifiedKFold(k, shuffle=True, random_state=0))
        accuracy = scores["test_accuracy"]
        return (f"{k}-fold cross-validated accuracy {accuracy.mean():.3f} ± {accuracy.std():.3f}, "
                f"macro-F1 {scores['test_f1_macro'].mean():.3f}")
    rare = str(classes[counts.argmin()])
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0)
    if len(np.unique(y[train])) < 2:
        return f"no estimate: too few samples (class {rare!r} has 1)"
    held_out = clone(model.head_).fit(Z[train], y[train]).score(Z[test], y[test])
    return (f"held-out accuracy {held_out:.3f} on {len(test)} of {len(y)} samples (class {rare!r} has a single "
            f"sample, too few for cross-validation)")


def cmd_fit(args) -> int:
    from .data.labels import labels_or_raise
    from .estimators import TransferClassifier
    from .persist import save

    out = _output(args.out)
    options = dict(args.option) or None
    backbone = _backbone(args.backbone, options, args.device)
    head_params = _head_params(args.head, args.head_param)
    _check_modality(args.data, backbone.name, backbone.modality)
    X, y = _labelled(args.data, args.text_column, args.label_column)
    y = labels_or_raise(y, len(X))
    print(f"{len(X)} samples from {args.data}: {_counts(y)}")
    model = TransferClassifier(args.backbone, head=args.head, head_params=head_params or None,
                               backbone_options=options, cache_dir=args.cache_dir, batch_size=args.batch_size,
                               device=args.device, engine=args.engine, errors=args.errors, progress=not args.quiet)
    model.fit(X, y)
    estimate = _estimate(model, X, y, args.cv, args) if args.cv else "no estimate (--cv 0)"
    save(model, out)
    weights = " (random init)" if model.backbone_.random_init else ""
    print(f"{args.head} on {backbone.name}{weights}: {estimate}")
    print(f"saved {out}")
    return 0


def _load_model(args):
    from .persist import load

    _check_device(args.device)
    model = load(args.model, cache_dir=args.cache_dir)
    model.set_params(progress=not args.quiet, device=args.device,
                     **({"batch_size": args.batch_size} if args.batch_size else {}))
    _check_modality(args.data, model.backbone_name_, model.backbone_.modality)
    return model


def _predict(model, X: list, args):
    """Class probabilities of the readable samples of ``X`` and which those are (with ``--errors
    skip`` the others are listed on stderr; without it, any unreadable sample is an error)."""
    import numpy as np

    from .errors import BadInputError
    from .extraction.pipeline import extract

    ok = np.ones(len(X), bool)
    if args.errors == "skip":
        result = extract(model.backbone_, X, cache_dir=args.cache_dir, batch_size=args.batch_size,
                         device=args.device, errors="skip", progress=not args.quiet)
        ok = result.ok
        _report_skipped(result.stats.failed)
        if not ok.any():
            raise BadInputError(f"none of the {len(X)} samples in {args.data!r} could be read")
        X = [X[i] for i in np.flatnonzero(ok)]
    return model.predict_proba(X), ok


def cmd_predict(args) -> int:
    import numpy as np

    out = _output(args.out)
    model = _load_model(args)
    X, names, name_column = _unlabelled(args.data, model.backbone_.modality, args.text_column, args.id_column)
    proba, ok = _predict(model, X, args)
    classes = [str(c) for c in model.classes_]
    header = [name_column, "prediction", "confidence"] + ([f"proba_{c}" for c in classes] if args.proba else [])
    rows = [header]
    for name, p in zip((names[i] for i in np.flatnonzero(ok)), proba):
        rows.append([name, classes[p.argmax()], f"{p.max():.4f}"] + ([f"{v:.4f}" for v in p] if args.proba else []))
    _write(_csv(rows), out)
    if out is not None:
        print(f"{len(rows) - 1} predictions -> {out}")
    return 0


def cmd_evaluate(args) -> int:
    import json

    import numpy as np
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    from .errors import BadInputError

    out = _output(args.out)
    model = _load_model(args)
    X, y = _labelled(args.data, args.text_column, args.label_column)
    missing = [i + 1 for i, label in enumerate(y) if label == ""]
    if missing:
        raise BadInputError(f"{args.data!r}: no label in column {args.label_column!r} at rows {missing[:10]}; "
                            f"label them or drop them")
    proba, ok = _predict(model, X, args)
    classes = [str(c) for c in model.classes_]
    truth = np.asarray(y).astype(str)[ok]
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    unknown = sorted(set(truth) - set(classes))
    labels = classes + unknown
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=labels)
    metrics = {
        "model": str(args.model), "data": str(args.data), "samples": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "classes": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                    for c, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
    }
    print(f"{metrics['samples']} labelled samples from {args.data}: accuracy {metrics['accuracy']:.3f}, "
          f"macro-F1 {metrics['macro_f1']:.3f}")
    if unknown:
        print(f"classes the model does not know (every one of their samples counts as an error): {', '.join(unknown)}")
    per_class = [["class", "precision", "recall", "f1", "support"]]
    per_class += [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                  for c, v in metrics["classes"].items()]
    print(_table(per_class, right=(1, 2, 3, 4)))
    print("\nconfusion matrix (rows: true class, columns: predicted)")
    print(_table([["", *labels]] + [[c, *row] for c, row in zip(labels, matrix.tolist())],
                 right=tuple(range(1, len(labels) + 1))))
    if out is not None:
        _write(json.dumps(metrics, indent=2) + "\n", out)
        print(f"metrics -> {out}")
    return 0


# -- cache -------------------------------------------------------------------------------------------
def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def _options_text(options: dict | None) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items()) if options else "-"


def cmd_cache(args) -> int:
    from .cache import EmbeddingCache
    from .errors import CacheError

    cache = EmbeddingCache(args.cache_dir)
    if not cache.root.is_dir():
        raise CacheError(f"no embedding cache at {str(cache.root)!r}: pass --cache-dir, or set FEATX_CACHE_DIR "
                         f"(default: ./cache)")
    now = time.time()
    if args.action == "ls":
        infos = [store.info() for store in cache.stores()]
        if not infos:
            print(f"no embeddings in {str(cache.root)!r}")
            return 0
        rows = [["store", "backbone", "options", "count", "dim", "dtype", "size", "last used"]]
        rows += [[i.key[:16], i.name, _options_text(i.options), i.count, i.dim, i.dtype, f"{i.bytes / 1e6:.2f} MB",
                  _ago(now - i.last_used)] for i in infos]
        print(_table(rows, right=(3, 4, 6)))
        return 0
    if args.action == "info":
        i = cache.find(args.store).info()
        for field, value in (("key", i.key), ("backbone", i.name), ("fingerprint", i.fingerprint),
                             ("options", _options_text(i.options)), ("dim", i.dim), ("dtype", i.dtype),
                             ("count", i.count), ("shards", i.shards), ("bytes", i.bytes), ("created", i.created),
                             ("last used", _ago(now - i.last_used)), ("path", i.path)):
            print(f"{field:12s} {value}")
        return 0
    if args.action == "rm":
        i = cache.remove(args.store)
        print(f"removed store {i.key[:16]} ({i.name}, {i.count} vectors, {i.bytes / 1e6:.2f} MB)")
        return 0
    if args.action == "prune":
        removed = cache.prune(older_than=args.older_than)
        for i in removed:
            print(f"removed store {i.key[:16]} ({i.name}, {i.count} vectors, last used {_ago(now - i.last_used)})")
        print(f"{len(removed)} stores removed, {sum(i.bytes for i in removed) / 1e6:.2f} MB freed")
        return 0
    stores = [cache.find(args.store)] if args.store else cache.stores()
    if not stores:
        print(f"no embeddings in {str(cache.root)!r}: nothing to {args.action}")
        return 0
    damaged = 0
    for store in stores:
        report = store.repair() if args.action == "repair" else store.verify()
        damaged += len(report.damaged)
        state = "ok" if report.ok else f"{len(report.damaged)} damaged"
        print(f"{store.path.name[:16]} {store.meta.get('name', '')}: {report.healthy} healthy shards, {state}, "
              f"{len(report.temporary)} orphaned temporary files")
        for shard, problem in report.damaged.items():
            moved = " -> quarantine/" if shard in report.quarantined else ""
            print(f"  {shard}: {problem}{moved}")
    if damaged and args.action == "verify":
        print("run `featx cache repair` to quarantine damaged shards; their samples are re-embedded on the next run")
        return 1
    return 0


# -- sweep / report / finetune -----------------------------------------------------------------------
def _options_by_backbone(args) -> dict[str, dict]:
    """``-o NAME:key=value`` targets one backbone; ``-o key=value`` applies to all of them."""
    from .errors import BadInputError

    per: dict[str, dict] = {name: {} for name in args.backbone}
    for key, value in args.option:
        target, _, key = key.rpartition(":")
        for name in ([target] if target else args.backbone):
            if name not in per:
                raise BadInputError(f"-o {target}:{key}=...: {target!r} is not one of the -b/--backbone names "
                                    f"({', '.join(args.backbone)})")
            per[name][key] = value
    return per


def _split(data: str, X, y, test_size: float, seed: int):
    """The sweep's stratified train/test split (reproducible from the run folder's source.json);
    too few samples per class for it, or for cross-validation, is an error naming the smallest class."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from .data.labels import labels_or_raise
    from .errors import BadInputError

    y = labels_or_raise(y, len(X))
    classes, counts = np.unique(y, return_counts=True)
    rare, fewest = classes[counts.argmin()], int(counts.min())
    advice = (f"{data!r} is too small for this sweep: its smallest class {str(rare)!r} has {fewest} sample"
              f"{'s' if fewest > 1 else ''}; ")
    if not test_size:
        train, test = np.arange(len(y)), None
    else:
        n_test = int(np.ceil(test_size * len(y)))
        if fewest < 2 or n_test < len(classes) or len(y) - n_test < len(classes):
            raise BadInputError(advice + f"a --test-size {test_size} split needs at least 2 per class and a test "
                                f"part of at least one per class ({len(classes)}). Add samples, or pass --test-size 0")
        train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
    if np.unique(y[train], return_counts=True)[1].min() < 2:
        raise BadInputError(advice + "cross-validation needs at least 2 per class in the training part. Add samples"
                            + (", or lower --test-size" if test_size else ""))
    if test is None:
        return X, y, None, None
    return [X[i] for i in train], y[train], [X[i] for i in test], y[test]


def cmd_sweep(args) -> int:
    from .selection.sweep import sweep

    from .errors import BadInputError

    if args.cv_top_k is not None and args.rank_by == "cv":
        raise BadInputError(f"--cv-top-k {args.cv_top_k} needs a cheap score to choose the setups to cross-validate: "
                            f"add --rank-by logme (or another score), or drop --cv-top-k")
    options = _options_by_backbone(args)
    for name in args.backbone:
        backbone = _backbone(name, options[name])
        _check_modality(args.data, backbone.name, backbone.modality)
    X, y = _labelled(args.data, args.text_column, args.label_column)
    X_train, y_train, X_test, y_test = _split(args.data, X, y, args.test_size, args.seed)
    source = {"data": str(Path(args.data).resolve()), "text_column": args.text_column,
              "label_column": args.label_column, "test_size": args.test_size, "seed": args.seed, "options": options,
              "errors": args.errors}
    result = sweep(X_train, y_train, backbones=[(b, options[b] or None) for b in args.backbone],
                   heads=args.head or ["logreg", "svm", "mlp", "knn"], X_test=X_test, y_test=y_test, cv=args.cv,
                   cache_dir=args.cache_dir, run_dir=args.run_dir, seed=args.seed, progress=not args.quiet,
                   engine=args.engine, source=source, rank_by=args.rank_by, cv_top_k=args.cv_top_k,
                   errors=args.errors)
    _report_skipped(result.manifest["skipped"])
    print(result.table())
    if result.agreement:
        print(result.agreement_table())
    if result.selection.get("same_pick") is not None and args.rank_by != "cv":
        print(f"{args.rank_by}'s pick is {'the same as' if result.selection['same_pick'] else 'not'} the exhaustive CV pick")
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from .selection.report import render_report

    print(render_report(args.run_dir))
    return 0


def cmd_finetune(args) -> int:
    import json

    from .errors import BadInputError
    from .estimators import TransferClassifier
    from .finetuning.run import finetune
    from .persist import load

    run = Path(args.run_dir)
    try:
        source = json.loads((run / "source.json").read_text())
        rows = json.loads((run / "leaderboard.json").read_text())["leaderboard"]
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{str(run)!r} is not a folder written by `featx sweep` ({exc})") from None
    if args.row is None:
        setup = load(run / "best.featx", cache_dir=args.cache_dir)
    else:
        if not 1 <= args.row <= len(rows):
            raise BadInputError(f"--row {args.row}: the leaderboard has rows 1..{len(rows)}")
        row = rows[args.row - 1]
        setup = TransferClassifier(row["backbone"], head=row["head"], head_params=row["params"],
                                   backbone_options=source["options"].get(row["backbone"]) or None,
                                   view=None if row["view"] == "all" else row["view"], cache_dir=args.cache_dir)
    if setup.view is not None:
        raise BadInputError(f"the chosen setup uses view {setup.view!r} of a multi-layer backbone; fine-tuning needs "
                            f"a single-output backbone: sweep it without layers= or pick another --row")
    if (args.target is None) != (args.adapt is None):
        raise BadInputError("--target DATA (unlabelled samples of the new domain) and --adapt adabn|dann go together: "
                            "give both or neither")
    backbone = _backbone(setup.backbone, setup.backbone_options)
    _check_modality(source["data"], backbone.name, backbone.modality)
    X_target = None
    if args.target is not None:
        _check_modality(args.target, backbone.name, backbone.modality)
        X_target = _unlabelled(args.target, backbone.modality, source["text_column"])[0]
    X, y = _labelled(source["data"], source["text_column"], source["label_column"])
    X_train, y_train, X_test, y_test = _split(source["data"], X, y, source["test_size"], source["seed"])
    out = Path(args.out_dir) if args.out_dir else run / f"finetune-{args.strategy}"
    result = finetune(setup, X_train, y_train, strategy=args.strategy, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, batchnorm=args.batchnorm, augment=args.augment, adapt=args.adapt,
                      X_target=X_target, X_test=X_test, y_test=y_test, cache_dir=args.cache_dir, run_dir=out,
                      progress=not args.quiet, errors=args.errors or source.get("errors", "raise"))
    _report_skipped(result.skipped)
    print(f"{result.summary()}; run folder {out}")
    print(f"fine-tuned model: {out / 'finetuned.featx'}; frozen setup: {out / 'frozen.featx'}")
    return 0


def cmd_shift(args) -> int:
    from .errors import BadInputError
    from .shift.detect import compare_vectors, embed_pair
    from .shift.report import write_report

    backbone = _backbone(args.backbone, dict(args.option))
    for data in (args.ref, args.new):
        _check_modality(data, backbone.name, backbone.modality)
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise BadInputError(f"--report {args.report!r} is a file; give a folder (created if missing)")
    ref_samples = _unlabelled(args.ref, backbone.modality, args.text_column)[0]
    new_samples = _unlabelled(args.new, backbone.modality, args.text_column)[0]
    names = (f"REF {args.ref!r}", f"NEW {args.new!r}")
    if args.errors == "skip":  # the readable samples and their vectors (embed_pair checks the vectors)
        from .data.samples import take
        from .extraction.pipeline import extract

        kept = [extract(backbone, samples, cache_dir=args.cache_dir, errors="skip") for samples in (ref_samples, new_samples)]
        ref_samples, new_samples = (take(samples, result.ok) for samples, result in zip((ref_samples, new_samples), kept))
        _report_skipped([line for result in kept for line in result.stats.failed])
        ref, new = embed_pair(*(result.vectors[result.ok] for result in kept), None, names=names)
    else:
        ref, new = embed_pair(ref_samples, new_samples, backbone, cache_dir=args.cache_dir, names=names)
    report = compare_vectors(ref, new, method=args.method, alpha=args.alpha, n_permutations=args.permutations,
                             random_state=args.seed)
    print(report.verdict())
    if args.report:
        print(f"report: {write_report(report, ref, new, args.report, new_samples=new_samples, names=(args.ref, args.new))}")
    return 0


def cmd_serve(args) -> int:
    from .serving.server import parse_limits, serve

    limits = parse_limits(args.max_request)
    serve(args.model, host=args.host, port=args.port, workers=args.workers, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, limits=limits, cache_dir=args.cache_dir)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(cache_dir=args.cache_dir, quick=args.quick, out_dir=args.out_dir)


# -- the parser --------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from .deploy.export import export
    from .persist import load

    model = load(args.model, cache_dir=args.cache_dir)
    out = export(model, args.out, opset=args.opset, quantize=args.quantize)
    size = (out / "model.onnx").stat().st_size / 2**20
    print(f"{args.model} -> {out / 'model.onnx'} ({size:.1f} MB{', int8' if args.quantize else ''}) + {out / 'featx-onnx.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="featx", description="Transfer learning on cached embeddings.")
    parser.add_argument("--version", action="version", version=f"featx {__import__('featx').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    images_or_table = "an image folder root/<class>/*.jpg, or a .csv/.tsv/.jsonl table with text and label columns"

    p = sub.add_parser("backbones", help="list registered backbones: modality, dim, pretrained or random weights")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'timm/*resnet*'")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("extract", help="embed samples into the cache (no labels needed)")
    _add_data_args(p, "an image folder (searched recursively), an image file or a .csv/.tsv/.jsonl table",
                   labels=False)
    _add_backbone_args(p)
    p.add_argument("--address", help="Ray cluster address (engine ray; default: start a local one)")
    p.add_argument("--num-actors", type=POSITIVE_INT, help="Ray actors, one backbone each (default: one per CPU/GPU)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray actor (default 0: CPU)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("fit", help="train a head on labelled data, estimate its accuracy, save the model")
    _add_data_args(p, images_or_table)
    _add_backbone_args(p)
    p.add_argument("--head", default="logreg", help="logreg, svm, mlp or knn (default: logreg)")
    p.add_argument("--head-param", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="head parameter, repeatable (e.g. --head-param C=0.1)")
    p.add_argument("--cv", type=FIT_FOLDS, default=5,
                   help="cross-validation folds of the accuracy estimate (default 5; 0: none)")
    p.add_argument("--out", required=True, help="model file to write (e.g. model.featx)")
    p.set_defaults(func=cmd_fit)

    for name, help_text in (("predict", "predict with a saved model; writes CSV"),
                            ("evaluate", "score a saved model on labelled data: accuracy, macro-F1, per class, "
                                         "confusion matrix")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="a file written by `featx fit`, `featx finetune` or featx.save")
        if name == "predict":
            p.add_argument("data", help="an image folder (searched recursively), an image file or a "
                                        ".csv/.tsv/.jsonl table")
            p.add_argument("--text-column", default="text", help="text column of a table (default: text)")
            p.add_argument("--id-column", help="a table column copied to the output to name each row "
                                               "(default: the row number, from 1)")
            p.add_argument("--proba", action="store_true", help="add one probability column per class")
            p.add_argument("--out", help="CSV file (default: stdout)")
            p.set_defaults(func=cmd_predict)
        else:
            _add_data_args(p, images_or_table)
            p.add_argument("--out", help="also write the metrics as JSON")
            p.set_defaults(func=cmd_evaluate)
        _add_run_args(p)

    p = sub.add_parser("cache", help="inspect and clean the embedding cache")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text, store in (
            ("ls", "every store: backbone, options, size, last use", None),
            ("info", "one store in detail", "a store key, fingerprint prefix or backbone name"),
            ("verify", "check every shard", "a store (default: all)"),
            ("repair", "quarantine damaged shards, drop orphaned temporaries", "a store (default: all)"),
            ("rm", "delete one store", "a store key, fingerprint prefix or backbone name"),
            ("prune", "delete the stores not used for a while", None)):
        a = actions.add_parser(action, help=help_text)
        if store:
            a.add_argument("store", nargs="?" if "default" in store else None, help=store)
        if action == "prune":
            a.add_argument("--older-than", type=_duration, required=True, metavar="DURATION",
                           help="e.g. 30d, 12h, 45m or 90s")
        a.add_argument("--cache-dir", help="default: $FEATX_CACHE_DIR or ./cache")
        a.set_defaults(func=cmd_cache)

    p = sub.add_parser("sweep", help="rank backbones x layers x heads by cross-validation")
    _add_data_args(p, images_or_table)
    p.add_argument("--backbone", "-b", action="append", required=True, help="repeatable")
    p.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="[NAME:]KEY=VALUE",
                   help="backbone option for all backbones, or for NAME only")
    p.add_argument("--head", action="append", help="repeatable; default: logreg, svm, mlp, knn")
    p.add_argument("--cv", type=FOLDS, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--test-size", type=FRACTION, default=0.3, help="held-out fraction (default 0.3; 0 for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where cache misses are embedded")
    p.add_argument("--run-dir", required=True, help="folder for the leaderboard, manifest, best model, report")
    p.add_argument("--cache-dir")
    p.add_argument("--errors", choices=["raise", "skip"], default="raise",
                   help="unreadable samples: stop with a list of them (raise) or leave them out of every split (skip)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--rank-by", choices=RANKINGS, default="cv", help="order setups by CV (default) or a transferability score")
    p.add_argument("--cv-top-k", type=TOP_K, metavar="K", help="with --rank-by SCORE: cross-validate only its top K setups")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="re-render a sweep's HTML report")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("finetune", help="promote a sweep's best setup (or --row N) to end-to-end training")
    p.add_argument("run_dir", help="a folder written by `featx sweep`")
    p.add_argument("--row", type=int, help="leaderboard row to promote (1 = best; default: best.featx)")
    p.add_argument("--strategy", default="lp-ft", choices=["full", "freeze", "llrd", "gradual", "lp-ft"])
    p.add_argument("--epochs", type=POSITIVE_INT, default=5)
    p.add_argument("--lr", type=POSITIVE, default=1e-4)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32)
    p.add_argument("--batchnorm", default="frozen", choices=["frozen", "update"],
                   help="BatchNorm statistics: frozen (default) or updated while training")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="image augmentation while training (default: on for images, off for text)")
    p.add_argument("--target", help="unlabelled samples of the new domain (folder or table), with --adapt")
    p.add_argument("--adapt", choices=["adabn", "dann"], help="adapt to --target: adabn (re-estimate BatchNorm "
                   "statistics on it) or dann (domain-adversarial training)")
    p.add_argument("--out-dir", help="default: RUN_DIR/finetune-STRATEGY")
    p.add_argument("--cache-dir")
    p.add_argument("--errors", choices=["raise", "skip"],
                   help="unreadable samples: stop with a list of them (raise) or leave them out (skip); "
                        "default: what the sweep used")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("shift", help="test whether NEW data has shifted away from REF (on their embeddings)")
    for name, what in (("ref", "reference data"), ("new", "new data")):
        p.add_argument(name, help=f"{what}: an image folder (searched recursively), an image file or a .csv/.tsv/.jsonl table")
    p.add_argument("--backbone", "-b", required=True, help="a registered name, see `featx backbones`")
    p.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. -o image_size=64)")
    p.add_argument("--text-column", default="text", help="text column of both tables (default: text)")
    p.add_argument("--method", choices=["mmd", "classifier", "ks"], default="mmd", help="the two-sample test (default: mmd)")
    p.add_argument("--alpha", type=ALPHA, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--permutations", type=POSITIVE_INT, default=500, help="permutations of the mmd test (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="DIR", help="write DIR/report.html: both sets projected, the most shifted samples")
    p.add_argument("--cache-dir", help="embedding cache (default: $FEATX_CACHE_DIR or ./cache)")
    p.add_argument("--errors", choices=["raise", "skip"], default="raise",
                   help="unreadable samples: stop with a list of them (raise) or leave them out of both sets (skip)")
    p.set_defaults(func=cmd_shift)

    p = sub.add_parser("serve", help="serve a model over HTTP: POST /predict, GET /health, GET /metadata")
    p.add_argument("model", help="a .featx file (run with torch) or a folder written by `featx export` (onnxruntime)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=PORT, default=8000, help="default 8000")
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="server processes, one model each (default 1)")
    p.add_argument("--max-batch", type=POSITIVE_INT, default=32,
                   help="samples per model call: requests arriving together are batched up to this (default 32)")
    p.add_argument("--max-wait-ms", type=NON_NEGATIVE, default=5.0,
                   help="how long a batch waits for more requests after its first one (default 5)")
    p.add_argument("--max-request", action="append", default=[], metavar="N|SIZE",
                   help="largest request: N samples (default 256) or a body SIZE such as 16MB (the default); "
                        "repeatable, e.g. --max-request 64 --max-request 4MB")
    p.add_argument("--cache-dir", help="embedding cache of a .featx model (default: $FEATX_CACHE_DIR or ./cache)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="real transfer learning on shipped data and models")
    p.add_argument("--cache-dir", help="default: ./cache")
    p.add_argument("--quick", action="store_true", help="smaller subsets and 3 draws per point")
    p.add_argument("--out-dir", default="runs/demo", help="where curves.png, results.md, index.html go (default: runs/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="write a saved model as one ONNX graph (backbone + head) for featx.serving")
    p.add_argument("model", help="a file written by `featx fit`, `featx finetune` or featx.save")
    p.add_argument("--out", required=True, help="folder to write model.onnx and featx-onnx.json into")
    p.add_argument("--opset", type=POSITIVE_INT, help="ONNX opset (default 17)")
    p.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantisation (check its accuracy first)")
    p.add_argument("--cache-dir", help="embedding cache (default: $FEATX_CACHE_DIR or ./cache)")
    p.set_defaults(func=cmd_export)
    return parser


def _flag_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def cli_words(message: str) -> str:
    """An API message in command-line words: ``name=value`` of a parameter in ``FLAGS`` becomes its flag.

    >>> cli_words("Fix or remove them, or pass errors='skip' to leave them out.")
    'Fix or remove them, or pass --errors skip to leave them out.'
    >>> cli_words("pass backbone_options={'pretrained': False} if random weights are intended")
    'pass -o pretrained=false if random weights are intended'
    >>> cli_words("cv=5 lowered to 3 folds")
    '--cv 5 lowered to 3 folds'
    """

    def flag(match: re.Match) -> str:
        name, text = FLAGS[match[1]], match[2]
        try:
            value = ast.literal_eval(text) if text else None
        except (ValueError, SyntaxError):
            value = text
        if isinstance(value, dict):
            return " ".join(f"{name} {k}={_flag_value(v)}" for k, v in value.items())
        return name if value is None else f"{name} {_flag_value(value)}"

    return re.sub(rf"\b({'|'.join(FLAGS)})=(\{{[^}}]*\}}|'[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?\b|)", flag, message)


EXTRAS = {**dict.fromkeys(["torch", "torchvision", "timm", "transformers", "sklearn", "h5py", "pluggy", "skops",
                            "safetensors", "matplotlib", "tqdm", "skada"], "train"),
          **dict.fromkeys(["onnxruntime", "tokenizers", "fastapi", "uvicorn", "multipart"], "serve"),
          **dict.fromkeys(["onnx", "onnxscript", "skl2onnx"], "export")}  # import name -> the extra installing it


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    from .errors import FeatxError

    with warnings.catch_warnings():
        python_style = warnings.showwarning

        def show(message, category, *where, **kwargs):
            if category.__module__.startswith("featx"):
                print(f"featx: warning: {cli_words(str(message))}", file=sys.stderr)
            else:
                python_style(message, category, *where, **kwargs)

        warnings.showwarning = show
        try:
            return args.func(args)
        except FeatxError as exc:
            print(f"featx: error: {cli_words(str(exc))}", file=sys.stderr)
            return 2
        except ModuleNotFoundError as exc:
            package = (exc.name or "").split(".")[0]
            if package not in EXTRAS:
                raise
            print(f"featx: error: `featx {args.command}` needs {package}, which is not installed: "
                  f"pip install 'featx[{EXTRAS[package]}]'", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("featx: interrupted; finished shards are kept in the cache", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
