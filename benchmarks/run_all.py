"""`make bench`: every benchmark in one run, then the table of ratios (results/*.json keep the numbers).

    .venv/bin/python benchmarks/run_all.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_cache  # noqa: E402
import bench_images  # noqa: E402
import bench_text  # noqa: E402
from common import machine  # noqa: E402


def main() -> None:
    start = time.perf_counter()
    text, images, cache = bench_text.main(), bench_images.main(), bench_cache.main()
    rows = [
        ("text, 2000 short: featx / sentence-transformers", text["short"]["ratio"], ">= 1.2"),
        ("text, long (256 tokens): featx / sentence-transformers", text["long"]["ratio"], ">= 0.97"),
        ("text: min cosine vs sentence-transformers", min(text["short"]["min_cosine"], text["long"]["min_cosine"]), ">= 0.99999"),
        ("images: featx defaults / best hand loop", images["vs_best_hand_loop"], ">= 1.0"),
        ("images: featx defaults / DataLoader b32 w2", images["vs_dataloader_b32_w2"], ">= 2.0"),
        ("images: featx end to end / bare forward (best batch)", images["vs_bare_forward_best"], ">= 0.9"),
        ("images: ... / bare channels-last forward (stricter)", images["vs_bare_forward_channels_last"], "(info)"),
        ("images: featx end to end / its own folded forward", images["vs_featx_forward_best"], "(decode cost)"),
        ("images: featx defaults / embetter TimmEncoder", images["vs_embetter"], "(peer)"),
        ("images: embetter min cosine to featx (train-mode bug)", images["embetter"]["min_cosine"], "(wrong vectors)"),
        ("cache: read 100k x 768 float32, GB/s (index warm)", cache["read"]["gb_per_s_index_warm"], ">= 1.0"),
        ("cache: warm fit on 10k, share outside the head", cache["fit"]["outside_head"], "< 0.05"),
        ("cache: ... the first such fit of a process", cache["fit"]["outside_head_first_fit"], "< 0.05"),
        ("memory: extra MB beyond output, 50k texts", cache["memory"]["50000"]["beyond_output_mb"], "flat"),
        ("memory: extra MB beyond output, 200k texts", cache["memory"]["200000"]["beyond_output_mb"], "flat"),
        ("memory: extra MB beyond output, 12.5k images", cache["memory"]["images"]["12500"]["beyond_output_mb"], "flat"),
        ("memory: extra MB beyond output, 50k images", cache["memory"]["images"]["50000"]["beyond_output_mb"], "flat"),
    ]
    print(f"\nmachine: {machine()}")
    print(f"{'measure':58s} {'value':>8s}  target")
    for name, value, target in rows:
        print(f"{name:58s} {value:8.3f}  {target}")
    print(f"(all benchmarks: {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
