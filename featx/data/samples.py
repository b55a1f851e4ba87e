"""Turn user inputs into samples with content keys.

Images may be file paths, ``PIL.Image`` objects or uint8 arrays (one ``(n, H, W[, C])`` array or a
list of ``(H, W[, C])`` arrays); texts are ``str``.  A sample's key hashes its content only (file
bytes, RGB pixels + shape, or UTF-8 text), so the same picture under two names is one key.

>>> s = as_samples(["a cat", "a dog", "a cat"], "text")
>>> bool(s.keys[0] == s.keys[2]), len(s)
(True, 3)
"""

from __future__ import annotations

import hashlib
import os
from itertools import compress, count, repeat
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import BadInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_SUFFIXES_ANY_CASE = tuple(sorted(IMAGE_SUFFIXES | {s.upper() for s in IMAGE_SUFFIXES}))
INPUTS = ("auto", "text", "image")  # what X holds: read off X, or said by the caller
PATH_CHECKS = 16  # strings with an image suffix looked up on disk at most, per list of texts


_HEX_PAIRS = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), dtype=np.uint16)  # byte -> its 2 hex digits


def _hasher(kind: bytes):
    """The blake2b state every key of this ``kind`` continues from (16-byte digests)."""
    return hashlib.blake2b(kind + b"\0", digest_size=16)


def _hash(kind: bytes, *chunks: bytes) -> bytes:
    h = _hasher(kind)
    for chunk in chunks:
        h.update(chunk)
    return h.digest()


def _hex_keys(digests: list[bytes] | np.ndarray) -> np.ndarray:
    """16-byte digests → their lowercase hex as an ``S32`` array (the cache's key type), vectorised."""
    raw = np.asarray(digests, dtype="S16").view(np.uint8)
    return _HEX_PAIRS[raw].view("S32")


def _pixels(image) -> np.ndarray:
    """RGB uint8 pixels of a PIL image or an array (grey, RGBA and palette are converted)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise BadInputError(f"image array has dtype {arr.dtype}; pass uint8 pixels (0-255)")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadInputError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    return np.ascontiguousarray(arr)


class _Names(Sequence[str]):
    """Each sample's name, made on demand (no string kept per sample): an image file's path, else
    ``<modality>[i]``, ``i`` counted from ``start``.  A block of names is a view of the same kind."""

    def __init__(self, items: Sequence[Any], modality: str, start: int = 0) -> None:
        self.items, self.modality, self.start = items, modality, start

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step == 1:
                return _Names(self.items[lo:hi], self.modality, self.start + lo)
            return [self[j] for j in range(lo, hi, step)]
        x = self.items[i]  # IndexError past the end
        if self.modality == "image" and isinstance(x, (str, os.PathLike)):
            return os.fspath(x)
        return f"{self.modality}[{self.start + i % len(self)}]"


# A list of texts up to this size gets all its keys at once; a larger one is hashed block by block
# as extraction reaches it, its keys never all held.
KEEP_KEYS = 1 << 16


class Samples:
    """Normalised samples: ``items`` (paths, images or texts), their ``names`` and content ``keys``
    (hex digests as an ``S32`` array, 32 bytes per sample).

    ``keys`` are computed, and kept, when first asked for; ``blocks()`` walks the samples a block
    at a time, each block with its own keys, which is how extraction reads an input of any size.
    """

    def __init__(self, modality: str, items: Sequence[Any], keys: np.ndarray | None,
                 names: Sequence[str] | None = None) -> None:
        self.modality, self.items, self._keys = modality, items, keys
        self.names = _Names(items, modality) if names is None else names

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keys(self) -> np.ndarray:
        if self._keys is None:
            self._keys = _text_keys(self.items) if self.modality == "text" else _image_keys(self.items, self.names)
        return self._keys

    def blocks(self, size: int) -> Iterator[tuple[int, "Samples"]]:
        """``(start, the next size samples)`` through all of them; a block's keys are sliced from
        ``keys`` if those were computed, else hashed for that block alone."""
        for lo in range(0, len(self), size):
            hi = min(lo + size, len(self))
            keys = None if self._keys is None else self._keys[lo:hi]
            yield lo, Samples(self.modality, self.items[lo:hi], keys, self.names[lo:hi])

    def subset(self, indices: Sequence[int]) -> "Samples":
        """The samples at ``indices``, with their names and (if computed) their keys."""
        keys = None if self._keys is None else self._keys[np.asarray(indices, dtype=np.intp)]
        return Samples(self.modality, [self.items[i] for i in indices], keys, [self.names[i] for i in indices])

    def load(self, i: int):
        """Sample ``i`` as its backbone receives it: an RGB ``PIL.Image`` or a ``str``."""
        if self.modality == "text":
            return self.items[i]
        from PIL import Image

        item = self.items[i]
        if not isinstance(item, (str, os.PathLike)):
            return Image.fromarray(_pixels(item))
        try:
            with Image.open(item) as im:
                im.load()
                return im if im.mode == "RGB" else _to_rgb(im)
        except Exception as exc:
            raise BadInputError(f"cannot read image {self.names[i]!r}: {exc}") from None


def _to_rgb(im):
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, do not clip
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() or 1.0
        from PIL import Image

        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def _is_image_like(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, (Image.Image, np.ndarray, os.PathLike))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (messages show ``'sports'``, not ``np.str_('sports')``)."""
    return value.item() if isinstance(value, np.generic) else value


def _excerpt(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width - 1] + "…")


def sample_list(X: Any) -> list:
    """``X`` as a list of samples featx can read more than once, or a ``BadInputError`` saying
    what to pass instead (a single string, a DataFrame, a generator).  The caller's list, and a
    numeric array of images, are returned as they are, never copied or changed; a pandas Series
    gives its values."""
    if type(X) is list or (isinstance(X, np.ndarray) and X.dtype.kind not in "OUS"):
        return X
    if isinstance(X, (str, bytes, os.PathLike)):
        raise BadInputError(f"X must be a sequence of samples (a list of texts, or of images or paths), "
                            f"got {type(X).__name__}: wrap a single sample in a list")
    columns = getattr(X, "columns", None)
    if columns is not None and getattr(X, "ndim", None) == 2:  # a pandas DataFrame
        names = [str(c) for c in columns]
        raise BadInputError(f"X is a DataFrame with columns {names}: pass the one column that holds the samples, "
                            f"e.g. df[{names[0] if names else 'column'!r}]")
    if not hasattr(X, "__len__") or not hasattr(X, "__iter__"):
        raise BadInputError(f"X is a {type(X).__name__}, which can be read only once: pass a list, e.g. list(X) "
                            f"(featx reads the samples more than once)")
    if isinstance(X, np.ndarray) and X.ndim != 1 and X.dtype.kind in "OUS":
        raise BadInputError(f"X is an array of shape {X.shape}: pass a 1-D list of samples")
    return list(X)


def take(values: Any, keep: np.ndarray) -> Any:
    """The entries of ``values`` (samples or labels: an array or a sequence) where ``keep`` is True.

    >>> take(["a.jpg", "b.jpg", "c.jpg"], np.array([True, False, True]))
    ['a.jpg', 'c.jpg']
    """
    return values[keep] if isinstance(values, np.ndarray) else list(compress(values, keep))


def _checked(input: str) -> str:
    if input not in INPUTS:
        raise BadInputError(f"input={input!r}: use 'auto', 'text' or 'image'")
    return input


def _first_image_file(X: list) -> int | None:
    """Index of the first item that is an existing image file, or None.  Only strings ending in an
    image suffix are looked up (found by a scan that runs in C: measured 1-2 ms per 10k texts,
    20-70 ms per 100k), and at most ``PATH_CHECKS`` of them: a list of paths has its first one on disk."""
    try:
        for looked, i in enumerate(compress(count(), map(str.endswith, X, repeat(_SUFFIXES_ANY_CASE)))):
            if looked == PATH_CHECKS:
                return None
            if os.path.isfile(X[i]):
                return i
    except TypeError:  # not all str: reported by the text checks
        return None
    return None


def infer_modality(X: Any, input: str = "auto") -> str:
    """What ``X`` holds, ``"image"`` or ``"text"``: ``input`` when it says so, else read off X
    (arrays, PIL images, path objects and strings naming image files are images).

    >>> infer_modality(["a cat", "a dog"]), infer_modality(np.zeros((2, 8, 8, 3), np.uint8))
    ('text', 'image')
    """
    if _checked(input) != "auto":
        return input
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OUS":
        return "image"
    X = sample_list(X)
    if not X:
        raise BadInputError("X is empty: there is nothing to embed")
    first = X[0]
    if _is_image_like(first) or (isinstance(first, str) and first.endswith(_SUFFIXES_ANY_CASE)):
        return "image"
    return "image" if _first_image_file(X) is not None else "text"


def as_samples(X: Any, modality: str, *, input: str = "auto",
               backbone: str | None = None) -> Samples:
    """Validate ``X`` for a backbone of ``modality``; its samples' content keys come with it.

    ``input`` says what X holds: ``"auto"`` refuses strings that name image files when the
    backbone embeds text (their characters, folder names included, would be embedded instead of
    the pictures) and strings that are text when it embeds images; ``"text"`` / ``"image"`` skip
    that check and must match the modality.  ``backbone`` (a name) is used in messages.

    A list of up to ``KEEP_KEYS`` texts is hashed now; a longer list, and images, are hashed when
    their keys are first needed (``Samples.keys``, or a block at a time through ``Samples.blocks``).
    """
    owner = f"backbone {backbone!r}" if backbone else "this backbone"
    if modality not in ("image", "text"):
        raise BadInputError(f"unknown modality {modality!r}: a backbone's modality is 'image' or 'text'")
    if _checked(input) not in ("auto", modality):
        raise BadInputError(f"input={input!r} but {owner} embeds {modality}s: choose "
                            f"{'an image' if input == 'image' else 'a text'} backbone (see `featx backbones`)")
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OUS":
        if modality != "image":
            raise BadInputError(f"got a numeric array but {owner} embeds text; pass a list of str")
        if X.ndim not in (3, 4):
            raise BadInputError(f"image array has shape {X.shape}; expected (n, H, W) or (n, H, W, C)")
        X = list(X)
    X = sample_list(X)
    if modality == "image":
        return _image_samples(X, owner, check_text=input == "auto")
    if input == "auto":
        found = _first_image_file(X)
        if found is not None:
            raise BadInputError(
                f"sample {found} ({X[found]!r}) is an image file, but {owner} embeds text: its path would be "
                f"embedded, not its picture (and folder names would leak the labels). Choose an image backbone "
                f"such as 'timm/tf_efficientnet_lite0', or pass input='text' if these strings are the texts to embed"
            )
    return _text_samples(X)


def _text_samples(X: list) -> Samples:
    _check_texts(X)
    return Samples("text", X, _text_keys(X) if len(X) <= KEEP_KEYS else None)


def _check_texts(X: list) -> None:
    if not (all(map(isinstance, X, repeat(str))) and all(X)) or any(map(str.isspace, X)):  # loops in C
        for i, x in enumerate(X):
            if not isinstance(x, str):
                kind = "an image" if _is_image_like(x) else type(x).__name__
                raise BadInputError(f"sample {i} is {kind}, but this backbone embeds text: pass str only")
            if not x.strip():
                raise BadInputError(f"sample {i} is an empty text; drop it or give it content")


def _text_keys(X: list[str]) -> np.ndarray:
    text = _hasher(b"text")  # each text's hash continues from a copy of this state
    digests = np.empty(len(X), dtype="S16")
    for lo in range(0, len(X), 4096):  # a block of digests at a time: no Python object kept per sample
        block = []
        for x in X[lo:lo + 4096]:
            h = text.copy()
            h.update(x.encode("utf-8", errors="surrogatepass"))
            block.append(h.digest())
        digests[lo:lo + len(block)] = block
    return _hex_keys(digests)


def _image_samples(X: list, owner: str, check_text: bool) -> Samples:
    """Images are checked for their type now (and, with ``check_text``, strings that are neither
    image file names nor paths on disk are refused as text) and read (hashed) when their keys are
    first needed: by extraction, a block at a time, so files are never all read before the first
    is embedded."""
    from PIL import Image

    for i, x in enumerate(X):
        if not isinstance(x, (str, os.PathLike, Image.Image, np.ndarray)):
            raise BadInputError(
                f"sample {i} is {type(x).__name__}, but {owner} embeds images: pass file paths, "
                f"PIL images or uint8 arrays"
            )
        if check_text and isinstance(x, str) and not x.endswith(_SUFFIXES_ANY_CASE) and not os.path.exists(x):
            raise BadInputError(
                f"sample {i} is text ({_excerpt(x)}), not an image file, but {owner} embeds images: pass image "
                f"file paths, PIL images or uint8 arrays, or choose a text backbone such as 'hf/all-MiniLM-L6-v2'"
            )
    return Samples("image", X, None)


def _image_keys(X: Sequence[Any], names: Sequence[str]) -> np.ndarray:
    """Content keys of image files (their bytes) and in-memory images (RGB pixels and shape)."""
    digests = np.empty(len(X), dtype="S16")
    for i, x in enumerate(X):
        if isinstance(x, (str, os.PathLike)):
            try:
                with open(x, "rb") as f:
                    digests[i] = _hash(b"file", f.read())
            except OSError as exc:
                raise BadInputError(f"cannot read image file {os.fspath(x)!r}: {exc.strerror or exc}") from None
            continue
        try:
            pixels = _pixels(x)
        except BadInputError as exc:
            raise BadInputError(f"{names[i]}: {exc}") from None
        digests[i] = _hash(b"pixels", str(pixels.shape).encode(), pixels.tobytes())
    return _hex_keys(digests)
