"""Labelled datasets from disk: image folders (``root/<class>/<image>``) and text tables (CSV, TSV, JSONL)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..errors import BadInputError
from .samples import IMAGE_SUFFIXES


def load_image_folder(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``root/<class>/<image>`` → (paths, labels), sorted for reproducibility.

    Non-image files (by suffix) are ignored; a folder without images in class sub-folders is an
    error (``list_images`` reads a folder of unlabelled images).
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"image folder {str(root)!r} does not exist or is not a directory")
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                labels.append(class_dir.name)
    if not paths:
        flat = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if flat:
            raise BadInputError(
                f"{str(root)!r} holds {flat} image{'s' if flat > 1 else ''} directly inside but no class sub-folders: "
                f"labelled images go in one sub-folder per class, root/<class>/<image>.jpg "
                f"(unlabelled images, to embed or predict, are read with list_images)"
            )
        raise BadInputError(
            f"no images found in {str(root)!r}: expected root/<class>/<image>.jpg "
            f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return paths, labels


def list_images(root: str | os.PathLike) -> list[str]:
    """Every image file under ``root`` (recursively), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"image folder {str(root)!r} does not exist or is not a directory")
    return sorted(str(f) for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def load_text_table(
    path: str | os.PathLike, text_column: str = "text", label_column: str | None = "label"
) -> tuple[list[str], list[str] | None]:
    """Texts and labels from a CSV, TSV or JSONL file; ``label_column=None`` reads texts only
    (labels ``None``).  A column that is not there is an error listing the columns present."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"text file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix.lower() in (".jsonl", ".ndjson"):
                rows = [json.loads(line) for line in f if line.strip()]
            elif path.suffix.lower() in (".csv", ".tsv"):
                rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
            else:
                raise BadInputError(f"{str(path)!r}: use a .csv, .tsv or .jsonl file")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{str(path)!r} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not rows:
        raise BadInputError(f"{str(path)!r} has no rows")
    columns = list(rows[0])
    if text_column not in columns:
        raise BadInputError(f"{str(path)!r} has no column {text_column!r} (columns: {columns}); pass text_column=")
    if label_column is not None and label_column not in columns:
        raise BadInputError(f"{str(path)!r} has no label column {label_column!r} (columns: {columns}); "
                            f"pass label_column=")
    texts = [str(r[text_column]) if r.get(text_column) is not None else "" for r in rows]
    return texts, None if label_column is None else [r.get(label_column) for r in rows]


def load_dataset(source: str | os.PathLike, text_column: str = "text", label_column: str | None = "label"):
    """A folder of class sub-folders or a CSV/JSONL file → ``(X, y)``; ``label_column=None``
    reads a table's texts only (``y`` is then ``None``)."""
    if Path(source).is_dir():
        return load_image_folder(source)
    return load_text_table(source, text_column, label_column)
