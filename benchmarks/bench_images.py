"""featx timm/tf_efficientnet_lite0 (default settings) vs careful hand loops, a typical DataLoader loop and
embetter's TimmEncoder.

    .venv/bin/python benchmarks/bench_images.py

Everything decodes and resizes the same textile JPEGs at the model's default 224 px data config.
The users' contenders (hand loops, DataLoader loops, embetter, the bare forward of the model as timm
gives it) run first in a child process with the stock allocator (``FEATX_MALLOC_TUNING=0``), as in a
user's own script.  featx then runs in this process on a fresh cache twice: cold (its batch-size
autotune inside the timing) and with the batch size it remembered; the ratios use the second.
Targets: >= 1.0x the best hand loop, >= 2x the batch-32 DataLoader loop, and end-to-end / bare forward
at its best batch size >= 0.9.  Stricter references, timed in featx's process: the bare forward in
channels-last memory, and featx's own inference copy (BatchNorm folded) — end to end / that forward is
what decoding and the cache cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch
from PIL import Image

import featx
from common import image_paths, save, timed

N = int(os.environ.get("FEATX_BENCH_IMAGES", 300))


class Folder(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


EMBETTER_N = 64  # embetter embeds image by image: a short run gives its rate


def embetter_timm(state: dict, paths: list[str], reference) -> dict:
    """embetter's ImageLoader + TimmEncoder on the same model and weights (timm's create_model made
    offline; the weights copied in): its speed, and how far its vectors are from featx's."""
    import numpy as np
    import timm
    from embetter.vision import ImageLoader, TimmEncoder

    create = timm.create_model
    timm.create_model = lambda name, pretrained=False, **kw: create(name, pretrained=False, **kw)
    try:
        encoder = TimmEncoder(name="tf_efficientnet_lite0")
    finally:
        timm.create_model = create
    encoder.model.load_state_dict(state)

    def cosine(Z):
        return float(np.min((Z * reference).sum(1) / np.linalg.norm(Z, axis=1) / np.linalg.norm(reference, axis=1)))

    seconds, Z = timed(lambda: encoder.transform(ImageLoader(convert="RGB").transform(paths)))
    encoder.model.load_state_dict(state)  # training-mode passes also rewrote BatchNorm's running statistics
    encoder.model.eval()
    with torch.inference_mode():
        Z_eval = encoder.transform(ImageLoader(convert="RGB").transform(paths))
    return {"per_s": len(paths) / seconds, "min_cosine": cosine(Z), "min_cosine_eval": cosine(Z_eval)}


def forward(model, x):
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def best_of_two(fn, *args) -> float:  # this VM's speed drifts: every contender gets its better of 2 runs
    return max(N / timed(fn, *args)[0] for _ in range(2))


def bare_rates(model, tensors, batches) -> dict[int, float]:
    return {b: max(64 / timed(lambda: [forward(model, tensors[i:i + b]) for i in range(0, 64, b)])[0] for _ in range(2))
            for b in batches}


def users_contenders() -> dict:
    """What a user's own script gets (run in a child process with the stock allocator)."""
    paths = image_paths(N)
    backbone = featx.create_backbone("timm/tf_efficientnet_lite0")
    transform = backbone.transform()
    model = backbone.build_model().eval().to(memory_format=torch.contiguous_format)  # as timm gives it

    def hand_loop(batch):
        for lo in range(0, len(paths), batch):
            forward(model, torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[lo:lo + batch]]))

    def dataloader_loop(batch, workers):
        for x in torch.utils.data.DataLoader(Folder(paths, transform), batch_size=batch, num_workers=workers):
            forward(model, x)

    hand_loop(8)  # warm-up
    rates = {f"hand loop, batch {b}": best_of_two(hand_loop, b) for b in (1, 2, 4, 8, 32)}
    rates["DataLoader, batch 32, 2 workers"] = best_of_two(dataloader_loop, 32, 2)
    rates["DataLoader, batch 32, 0 workers"] = best_of_two(dataloader_loop, 32, 0)
    tensors = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:64]])
    with tempfile.TemporaryDirectory() as cache:  # the reference vectors for embetter's cosine
        reference = featx.Embedder(backbone, cache_dir=cache).transform(paths[:EMBETTER_N])
    return {"loops_per_s": rates, "bare_forward_per_s": bare_rates(model, tensors, (1, 2, 4, 8, 16)),
            "embetter": embetter_timm(model.state_dict(), paths[:EMBETTER_N], reference)}


def main() -> dict:
    child = subprocess.run([sys.executable, __file__, "--users"], capture_output=True, text=True, check=True,
                           env={**os.environ, "FEATX_MALLOC_TUNING": "0"})
    users = json.loads(child.stdout.strip().splitlines()[-1])
    rates, bare, peer = users["loops_per_s"], users["bare_forward_per_s"], users["embetter"]

    paths = image_paths(N)
    backbone = featx.create_backbone("timm/tf_efficientnet_lite0")
    transform = backbone.transform()
    tensors = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:64]])
    channels_last = tensors.contiguous(memory_format=torch.channels_last)
    strict = bare_rates(backbone.model, channels_last, (2, 4, 8, 16, 32))  # channels-last, featx's allocator
    own = bare_rates(backbone._inference_model(), channels_last, (2, 4, 8, 16, 32))  # + BatchNorm folded

    from featx.extraction.pipeline import _memo_path

    _memo_path().unlink(missing_ok=True)  # cold: featx tunes its batch size inside the timing
    with tempfile.TemporaryDirectory() as cache:
        cold_s, _ = timed(featx.Embedder(backbone, cache_dir=cache).transform, paths)

    def featx_run():  # the remembered batch size, a fresh cache each time
        with tempfile.TemporaryDirectory() as cache:
            featx.Embedder(backbone, cache_dir=cache).transform(paths)

    featx_rate = best_of_two(featx_run)
    best_hand = max(v for k, v in rates.items() if k.startswith("hand"))
    result = {"images": N, "featx_per_s": featx_rate, "featx_cold_per_s": N / cold_s, "loops_per_s": rates,
              "bare_forward_per_s": bare, "bare_channels_last_per_s": strict, "featx_forward_per_s": own,
              "vs_best_hand_loop": featx_rate / best_hand,
              "vs_dataloader_b32_w2": featx_rate / rates["DataLoader, batch 32, 2 workers"],
              "vs_bare_forward_best": featx_rate / max(bare.values()),
              "vs_bare_forward_channels_last": featx_rate / max(strict.values()),
              "vs_featx_forward_best": featx_rate / max(own.values()),
              "embetter": peer, "vs_embetter": featx_rate / peer["per_s"]}
    for name, rate in rates.items():
        print(f"images  {name:34s} {rate:6.1f} img/s")
    print(f"images  embetter TimmEncoder (ImageLoader + transform) {peer['per_s']:6.1f} img/s, min cosine to featx "
          f"{peer['min_cosine']:.3f} (model left in training mode); weights reloaded + .eval() {peer['min_cosine_eval']:.7f}")
    for name, table in [("bare forward (pre-decoded)", bare), ("bare forward, channels-last, featx allocator", strict),
                        ("featx's folded forward (pre-decoded)", own)]:
        print(f"images  {name}: " + ", ".join(f"b{b} {rate:.1f}" for b, rate in table.items()) + " img/s")
    print(f"images  featx defaults, first run (autotuning)    {N / cold_s:6.1f} img/s")
    print(f"images  featx defaults (tuned batch remembered)   {featx_rate:6.1f} img/s  -> "
          f"{result['vs_best_hand_loop']:.2f}x best hand loop, {result['vs_dataloader_b32_w2']:.2f}x DataLoader b32/w2, "
          f"{result['vs_bare_forward_best']:.2f} of the model's bare forward "
          f"({result['vs_bare_forward_channels_last']:.2f} counting its channels-last forward)")
    save("images", result)
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--users"]:
        print(json.dumps(users_contenders()))
    else:
        main()
