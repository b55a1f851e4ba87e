"""Text shift: what each detect_shift method sees on BBC News embedded with MiniLM.

900 random articles (of 2,225) are split in two halves; the reference is a sample of one half, in their natural topic proportions
(business 23 %, sport 23 %, politics 19 %, tech 18 %, entertainment 17 %). The new streams:

- control: articles from the other half, natural proportions (no shift: must not be flagged);
- label shift: articles from the other half, 80 % sport, 5 % each other topic;
- out of domain: docstrings of Python's standard library (English prose that is not news);
- 10 % out of domain: the control with a tenth of its articles replaced by docstrings.

Every method runs on every stream, for ``--repeats`` seeded draws of the streams; the table gives
the p-value of the first draw and how many draws were flagged at alpha 0.05. Embeddings go through
the cache (MiniLM, first 128 tokens), so a second run embeds nothing:

    .venv/bin/python examples/bbc_text_shift.py [--n-ref 300] [--n-new 100] [--repeats 10] [--cache-dir cache]
"""

import argparse
import time

import numpy as np

import featx
from featx.shift.detect import compare_vectors
from featx.shift.news import TOPICS, bbc_news, docstring_texts

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n-articles", type=int, default=900, help="articles embedded (of 2,225)")
parser.add_argument("--n-ref", type=int, default=300)
parser.add_argument("--n-new", type=int, default=100)
parser.add_argument("--repeats", type=int, default=10, help="seeded draws of every stream")
parser.add_argument("--alpha", type=float, default=0.05)
parser.add_argument("--cache-dir", default="cache")
args = parser.parse_args()

texts, topics = bbc_news()
picked = np.random.default_rng(0).choice(len(texts), args.n_articles, replace=False)
texts, topics = [texts[i] for i in picked], topics[picked]
docstrings = docstring_texts(395, np.random.default_rng(0))
start = time.perf_counter()
backbone = featx.create_backbone("hf/all-MiniLM-L6-v2", max_length=128)
news = featx.extract(backbone, texts, cache_dir=args.cache_dir, progress=True).vectors
ood = featx.extract(backbone, docstrings, cache_dir=args.cache_dir, progress=True).vectors
print(f"embedded {len(texts)} articles + {len(docstrings)} docstrings in {time.perf_counter() - start:.0f} s")

halves = np.random.default_rng(1).permutation(len(texts))
reference_pool, stream_pool = halves[: len(texts) // 2], halves[len(texts) // 2:]


def label_shift(rng, n):
    """``n`` rows of the stream half: 80 % sport, the rest spread evenly over the other topics."""
    counts = {t: int(0.8 * n) if t == "sport" else (n - int(0.8 * n)) // (len(TOPICS) - 1) for t in TOPICS}
    counts["sport"] += n - sum(counts.values())
    return np.concatenate([rng.choice(stream_pool[topics[stream_pool] == t], k, replace=False)
                           for t, k in counts.items()])


def streams(rng):
    control = news[rng.choice(stream_pool, args.n_new, replace=False)]
    mixed = control.copy()
    n_ood = args.n_new // 10
    mixed[rng.choice(args.n_new, n_ood, replace=False)] = ood[rng.choice(len(ood), n_ood, replace=False)]
    return {"control (same distribution)": control, "label shift (80 % sport)": news[label_shift(rng, args.n_new)],
            "out of domain (docstrings)": ood[rng.choice(len(ood), args.n_new, replace=False)],
            "10 % out of domain": mixed}


flagged: dict[tuple[str, str], int] = {}
first: dict[tuple[str, str], float] = {}
for repeat in range(args.repeats):
    rng = np.random.default_rng(1000 + repeat)
    reference = news[rng.choice(reference_pool, args.n_ref, replace=False)]
    for stream, vectors in streams(rng).items():
        for method in ("mmd", "classifier", "ks"):
            report = compare_vectors(reference, vectors, method=method, alpha=args.alpha, random_state=repeat)
            flagged[stream, method] = flagged.get((stream, method), 0) + report.shifted
            first.setdefault((stream, method), report.p_value)

print(f"\n{args.n_ref} reference articles vs {args.n_new} new samples; p-value of draw 1, then draws flagged "
      f"at alpha {args.alpha} out of {args.repeats}\n")
print("| stream | mmd | classifier | ks |\n|---|---|---|---|")
for stream in streams(np.random.default_rng(0)):
    cells = [f"p={first[stream, m]:.2g}, {flagged[stream, m]}/{args.repeats}" for m in ("mmd", "classifier", "ks")]
    print(f"| {stream} | {' | '.join(cells)} |")
