"""The ``featx`` command line.  Heavy libraries are imported inside each command.

    featx backbones 'timm/*resnet*'
    featx extract data/images --backbone timm/tf_efficientnet_lite0
    featx extract data/images --backbone timm/tf_efficientnet_lite0 --engine ray --address auto --num-gpus 1
    featx fit reviews.csv --backbone hf/all-MiniLM-L6-v2 --head logreg --out model.featx
    featx predict model.featx new_reviews.csv
    featx cache ls
    featx sweep data/images -b timm/tf_efficientnet_lite0 -b timm/resnet18 --run-dir runs/images
    featx finetune runs/images --strategy lp-ft --epochs 3
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def _option(text: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as a Python literal when it is one (``layers=[-1,-2]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"option {text!r} must look like key=value")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="an image folder root/<class>/*.jpg, or a .csv/.tsv/.jsonl text file")
    p.add_argument("--text-column", default="text", help="text column of a CSV/JSONL file (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a CSV/JSONL file (default: label)")


def _add_backbone_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--backbone", "-b", required=required, help="a registered name, see `featx backbones`")
    p.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. -o pooling=cls -o layers=[-1,-2])")
    p.add_argument("--cache-dir", help="embedding cache (default: $FEATX_CACHE_DIR or ./cache)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--errors", choices=["raise", "skip"], default="raise", help="unreadable samples")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where misses are embedded")
    p.add_argument("--address", help="Ray cluster address (engine ray; default: start a local one)")
    p.add_argument("--num-actors", type=int, help="Ray actors, one backbone each (default: one per CPU/GPU)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray actor (default 0: CPU)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def _estimator_kwargs(args) -> dict:
    if args.address or args.num_actors or args.num_gpus:
        raise SystemExit("featx: error: --address/--num-actors/--num-gpus apply to `featx extract`; extract first, "
                         "then fit from the cache")
    return dict(backbone=args.backbone, backbone_options=dict(args.option) or None, cache_dir=args.cache_dir,
                batch_size=args.batch_size, device=args.device, engine=args.engine, errors=args.errors,
                progress=not args.quiet)


def _dataset_for(args, backbone):
    """Load ``args.data`` and check it holds what ``backbone`` embeds."""
    from .datasets import load_dataset
    from .errors import BadInputError

    kind = "image" if Path(args.data).is_dir() else "text"
    if kind != backbone.modality:
        raise BadInputError(
            f"{args.data!r} holds {kind}s but backbone {backbone.name!r} embeds {backbone.modality}s; "
            f"choose a {kind} backbone (see `featx backbones`)"
        )
    return load_dataset(args.data, args.text_column, args.label_column)


def cmd_backbones(args) -> int:
    from .registry import describe_backbones, list_backbones

    names = list_backbones(args.pattern)
    described = {name: (plugin, desc) for name, plugin, desc in describe_backbones()}
    for name in names:
        plugin, desc = described.get(name, ("", ""))
        print(f"{name:40s} {plugin:22s} {desc}".rstrip())
    if not names:
        print(f"no backbone matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


def cmd_extract(args) -> int:
    from .estimators import resolve_backbone
    from .extraction import extract

    backbone = resolve_backbone(args.backbone, dict(args.option) or None)
    X, _ = _dataset_for(args, backbone)
    result = extract(backbone, X, cache_dir=args.cache_dir, batch_size=args.batch_size, device=args.device,
                     errors=args.errors, progress=not args.quiet, engine=args.engine, address=args.address,
                     num_actors=args.num_actors, num_gpus=args.num_gpus)
    s = result.stats
    print(f"{s.backbone}: {s.samples} samples ({s.unique} unique), {s.hits} cached, {s.embedded} embedded "
          f"in {s.seconds:.1f}s → store {s.store_key}")
    for line in s.failed:
        print(f"skipped: {line}")
    return 0


def cmd_fit(args) -> int:
    from .estimators import TransferClassifier
    from .persist import save

    model = TransferClassifier(head=args.head, **_estimator_kwargs(args))
    X, y = _dataset_for(args, model._backbone())
    model.fit(X, y)
    save(model, args.out)
    print(f"fitted {args.head} on {len(model.classes_)} classes with {args.backbone}; saved {args.out}")
    return 0


def cmd_predict(args) -> int:
    import csv

    from .datasets import list_images, load_text_table
    from .persist import load

    model = load(args.model, cache_dir=args.cache_dir)
    model.set_params(progress=not args.quiet)
    if Path(args.data).is_dir():
        X = list_images(args.data)
        names = X
    else:
        X, _ = load_text_table(args.data, args.text_column, None)
    if (Path(args.data).is_dir()) != (model._backbone().modality == "image"):
        from .errors import BadInputError

        raise BadInputError(f"{args.data!r} does not hold what {model.backbone_name_!r} embeds ({model._backbone().modality})")
        names = [str(i) for i in range(len(X))]
    proba = model.predict_proba(X)
    labels = model.classes_[proba.argmax(axis=1)]
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["sample", "prediction", "confidence"])
    for name, label, p in zip(names, labels, proba.max(axis=1)):
        writer.writerow([name, label, f"{p:.4f}"])
    if args.out:
        out.close()
    return 0


def cmd_cache(args) -> int:
    from .cache import EmbeddingCache

    cache = EmbeddingCache(args.cache_dir)
    if args.action == "ls":
        stores = cache.stores()
        if not stores:
            print(f"no embeddings in {str(cache.root)!r}")
            return 0
        print(f"{'store':16s} {'backbone':36s} {'fingerprint':16s} {'count':>8s} {'dim':>6s} {'dtype':8s} {'size':>10s}")
        for store in stores:
            i = store.info()
            print(f"{i.key[:16]:16s} {i.name[:36]:36s} {i.fingerprint[:16]:16s} {i.count:8d} {i.dim:6d} "
                  f"{i.dtype:8s} {i.bytes / 1e6:9.2f}M")
        return 0
    if args.action in ("verify", "repair"):
        stores = [cache.find(args.store)] if args.store else cache.stores()
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
    i = cache.find(args.store).info()
    for field in ("key", "name", "fingerprint", "dim", "dtype", "count", "shards", "bytes", "path"):
        print(f"{field:12s} {getattr(i, field)}")
    return 0


def _options_by_backbone(args) -> dict[str, dict]:
    """``-o NAME:key=value`` targets one backbone; ``-o key=value`` applies to all of them."""
    per: dict[str, dict] = {name: {} for name in args.backbone}
    for key, value in args.option:
        target, _, key = key.rpartition(":")
        for name in ([target] if target else args.backbone):
            if name not in per:
                raise SystemExit(f"featx: error: option for {name!r}, which is not one of the --backbone names")
            per[name][key] = value
    return per


def _split(args, X, y):
    """The sweep's train/test split, reproducible from the run folder's source.json."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from .datasets import labels_or_raise

    y = labels_or_raise(y, len(X))
    if not args.test_size:
        return X, y, None, None
    train, test = train_test_split(np.arange(len(y)), test_size=args.test_size, stratify=y, random_state=args.seed)
    return [X[i] for i in train], y[train], [X[i] for i in test], y[test]


def cmd_sweep(args) -> int:
    import json

    from .estimators import resolve_backbone
    from .selection import sweep

    options = _options_by_backbone(args)
    X, y = _dataset_for(args, resolve_backbone(args.backbone[0], options[args.backbone[0]] or None))
    X_train, y_train, X_test, y_test = _split(args, X, y)
    result = sweep(X_train, y_train, backbones=[(b, options[b] or None) for b in args.backbone],
                   heads=args.head or ["logreg", "svm", "mlp", "knn"], X_test=X_test, y_test=y_test, cv=args.cv,
                   cache_dir=args.cache_dir, run_dir=args.run_dir, seed=args.seed, progress=not args.quiet,
                   engine=args.engine)
    source = {"data": str(Path(args.data).resolve()), "text_column": args.text_column, "label_column": args.label_column,
              "test_size": args.test_size, "seed": args.seed, "options": options}
    (Path(args.run_dir) / "source.json").write_text(json.dumps(source, indent=2))
    print(result.table())
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from .report import render_report

    print(render_report(args.run_dir))
    return 0


def cmd_finetune(args) -> int:
    import json

    from .errors import BadInputError
    from .estimators import TransferClassifier
    from .finetuning import finetune
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
    args.data, args.text_column, args.label_column = source["data"], source["text_column"], source["label_column"]
    args.test_size, args.seed = source["test_size"], source["seed"]
    X, y = _dataset_for(args, setup._backbone())
    X_train, y_train, X_test, y_test = _split(args, X, y)
    out = Path(args.out_dir) if args.out_dir else run / f"finetune-{args.strategy}"
    result = finetune(setup, X_train, y_train, strategy=args.strategy, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, X_test=X_test, y_test=y_test, cache_dir=args.cache_dir, run_dir=out,
                      progress=not args.quiet)
    print(f"{result.summary()}; run folder {out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(cache_dir=args.cache_dir, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featx", description="Transfer learning on cached embeddings.")
    parser.add_argument("--version", action="version", version=f"featx {__import__('featx').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list registered backbones")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'timm/*resnet*'")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("extract", help="embed a dataset into the cache")
    _add_data_args(p)
    _add_backbone_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("fit", help="train a head on a labelled dataset and save the model")
    _add_data_args(p)
    _add_backbone_args(p)
    p.add_argument("--head", default="logreg", help="logreg, svm, mlp or knn (default: logreg)")
    p.add_argument("--out", required=True, help="model file to write (e.g. model.featx)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict with a saved model; writes CSV")
    p.add_argument("model", help="a file written by `featx fit` or featx.save")
    p.add_argument("data", help="an image folder (searched recursively) or a .csv/.jsonl text file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--cache-dir")
    p.add_argument("--out", help="CSV file (default: stdout)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cache", help="inspect the embedding cache")
    p.add_argument("action", choices=["ls", "info", "verify", "repair"],
                   help="verify: check every shard; repair: quarantine damaged shards, drop orphaned temporaries")
    p.add_argument("store", nargs="?", help="a store key, fingerprint prefix or backbone name (verify/repair: default all)")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("sweep", help="rank backbones x layers x heads by cross-validation")
    _add_data_args(p)
    p.add_argument("--backbone", "-b", action="append", required=True, help="repeatable")
    p.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="[NAME:]KEY=VALUE",
                   help="backbone option for all backbones, or for NAME only")
    p.add_argument("--head", action="append", help="repeatable; default: logreg, svm, mlp, knn")
    p.add_argument("--cv", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--test-size", type=float, default=0.3, help="held-out fraction (default 0.3; 0 for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where misses are embedded")
    p.add_argument("--run-dir", required=True, help="folder for the leaderboard, manifest, best model, report")
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="re-render a sweep's HTML report")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("finetune", help="promote a sweep's best setup (or --row N) to end-to-end training")
    p.add_argument("run_dir", help="a folder written by `featx sweep`")
    p.add_argument("--row", type=int, help="leaderboard row to promote (1 = best; default: best.featx)")
    p.add_argument("--strategy", default="lp-ft", choices=["full", "freeze", "llrd", "gradual", "lp-ft"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out-dir", help="default: RUN_DIR/finetune-STRATEGY")
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("demo", help="real transfer learning on shipped data and models")
    p.add_argument("--cache-dir", help="default: ./cache")
    p.add_argument("--quick", action="store_true", help="smaller subsets (about a minute)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cache" and args.action == "info" and not args.store:
        build_parser().error("cache info needs a STORE (see `featx cache ls`)")
    from .errors import FeatxError

    try:
        return args.func(args)
    except FeatxError as exc:
        print(f"featx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featx: interrupted; finished shards are kept in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
