"""engine="ray" on this machine: 1 vs 2 actors (and the local engine) on the same texts, fresh caches.

    .venv/bin/python benchmarks/bench_ray.py

Ray gives each actor one CPU (one torch thread), so on 2 cores "2 actors" is the fair comparison
with the local engine's 2 threads.  Timings include actor start-up and model loading.
"""

from __future__ import annotations

import tempfile
import time

import featx
from common import save, short_texts

N = 1200


def main() -> dict:
    import ray

    texts = short_texts(N)
    featx.create_backbone("hf/all-MiniLM-L6-v2").embed_many(texts[:32], 32)  # page the weights in
    rates = {}
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        featx.extract(featx.create_backbone("hf/all-MiniLM-L6-v2"), texts, cache_dir=cache)
        rates["local engine (2 threads)"] = N / (time.perf_counter() - t0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for actors in (1, 2):
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            featx.extract(featx.create_backbone("hf/all-MiniLM-L6-v2"), texts, cache_dir=cache, engine="ray",
                          num_actors=actors, chunk_size=100)
            rates[f"ray, {actors} actor{'s' if actors > 1 else ''} (1 CPU each)"] = N / (time.perf_counter() - t0)
    ray.shutdown()
    per_actor = rates["ray, 1 actor (1 CPU each)"]
    result = {"texts": N, "rates": rates, "two_vs_one_actor": rates["ray, 2 actors (1 CPU each)"] / per_actor,
              "per_actor_per_s": per_actor}
    for name, rate in rates.items():
        print(f"ray     {name:32s} {rate:7.1f} texts/s")
    print(f"ray     2 actors / 1 actor: {result['two_vs_one_actor']:.2f}x")
    save("ray", result)
    return result


if __name__ == "__main__":
    main()
