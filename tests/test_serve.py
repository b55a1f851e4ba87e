"""`featx serve`, run as a user runs it: the `featx` executable in a subprocess on a free loopback port,
real HTTP requests (JSON and multipart), every refused request, batching, and a clean shutdown.

Two servers per module: an image model (a tiny random timm network, one worker process, batches of up
to 8 samples waiting up to 300 ms so that concurrent requests surely meet) and a text model (a tiny
random BERT, two worker processes).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import featx
from conftest import WORDS, without_training_stack

FEATX = Path(sys.executable).parent / "featx"
MAX_BATCH, MAX_ITEMS, MAX_BYTES = 8, 10, 200_000
TEXTS = [" ".join(WORDS[i:i + 4]) for i in range(8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pictures(n: int, seed: int = 0) -> list[np.ndarray]:
    """Reddish and bluish pictures, alternating, of varied sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 60, size=(16 + 2 * i, 20, 3), dtype=np.uint8)
        pixels[..., 0 if i % 2 == 0 else 2] = 220
        out.append(pixels)
    return out


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


class Server:
    """`featx serve MODEL` in a subprocess, answering on ``self.url``."""

    def __init__(self, model: Path, cache: Path, *options: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FEATX_CACHE_DIR": str(cache), **(env or {})}
        self.proc = subprocess.Popen([str(FEATX), "serve", str(model), "--port", str(self.port), *options],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_until_up(self) -> "Server":
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"featx serve exited {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                self.health()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    raise AssertionError("featx serve did not answer /health within 180 s") from None
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        """(status, decoded JSON answer)."""
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as answer:
            return answer.code, json.loads(answer.read())

    def post_json(self, payload) -> tuple[int, dict]:
        return self.request("POST", "/predict", json.dumps(payload).encode(), "application/json")

    def post_files(self, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
        """A multipart upload: (field, content) pairs, each a file part."""
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="p{i}.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for i, (name, data) in enumerate(files)]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", "/predict", body, f"multipart/form-data; boundary={boundary}")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, cache):
    model = featx.TransferClassifier("timm/test_efficientnet", backbone_options={"pretrained": False, "image_size": 32},
                                     cache_dir=cache, batch_size=8)  # a batch size: no tuning run
    model.fit(pictures(12, seed=1), ["red", "blue"] * 6)
    path = tmp_path_factory.mktemp("image-model") / "colours.featx"
    featx.save(model, path)
    return featx.load(path, cache_dir=cache), path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_bert_dir, cache):
    model = featx.TransferClassifier(f"hf/{tiny_bert_dir}", head="logreg", cache_dir=cache, batch_size=8)
    model.fit(TEXTS, ["animals", "markets"] * 4)
    path = tmp_path_factory.mktemp("text-model") / "topics.featx"
    featx.save(model, path)
    return featx.load(path, cache_dir=cache), path


@pytest.fixture(scope="module")
def servers(image_model, text_model, cache):
    """Both servers, started together (each takes seconds to import torch and load its model)."""
    image = Server(image_model[1], cache, "--max-batch", str(MAX_BATCH), "--max-wait-ms", "300",
                   "--max-request", str(MAX_ITEMS), "--max-request", "200KB")
    text = Server(text_model[1], cache, "--workers", "2")
    yield image.wait_until_up(), text.wait_until_up()
    for server in (image, text):
        if server.proc.poll() is None:
            workers = descendants(server.proc.pid)
            server.stop(signal.SIGKILL)
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def image_server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def text_server(servers):
    return servers[1]


def test_an_exported_folder_is_served_without_the_training_stack(image_model, cache, tmp_path):
    """`featx serve DIR` where torch, timm, transformers, scikit-learn, h5py and skada cannot be imported:
    what a machine with only `featx[serve]`'s packages runs."""
    from PIL import Image

    model, _ = image_model
    exported = featx.export(model, tmp_path / "exported")
    server = Server(exported, cache, env=without_training_stack(tmp_path)).wait_until_up()
    try:
        images = pictures(4, seed=9)
        status, answer = server.post_json({"images": [base64.b64encode(png(p)).decode() for p in images]})
        assert status == 200, answer
        expected = model.predict_proba([Image.fromarray(p) for p in images])
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-4)
        assert answer["predictions"] == model.predict([Image.fromarray(p) for p in images]).tolist()
        assert server.request("GET", "/metadata")[1]["classes"] == ["blue", "red"]
    finally:
        assert server.stop(signal.SIGINT) == 0


def test_the_serve_extra_and_the_base_install_bring_no_training_stack():
    import tomllib

    project = tomllib.loads((Path(featx.__file__).parent.parent / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {re.split(r"[\[<>=!~ ;]", r)[0].lower() for r in requirements}  # noqa: E731
    serving = names(project["dependencies"]) | names(project["optional-dependencies"]["serve"])
    assert serving >= {"onnxruntime", "tokenizers", "pillow", "numpy", "fastapi", "uvicorn"}
    training = {"torch", "torchvision", "timm", "transformers", "scikit-learn", "h5py", "skada"}
    assert not serving & training and names(project["optional-dependencies"]["train"]) >= training


def test_a_command_without_the_training_stack_names_the_extra(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
    env = {**os.environ, **without_training_stack(tmp_path)}
    run = subprocess.run([str(FEATX), "fit", str(tmp_path / "photos"), "-b", "timm/tf_efficientnet_lite0",
                          "--out", str(tmp_path / "m.featx")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert re.fullmatch(r"featx: error: `featx fit` needs \w+, which is not installed: pip install 'featx\[train\]'\n",
                        run.stderr), run.stderr


# -- answers -----------------------------------------------------------------------------------------
def test_json_images_get_the_models_probabilities(image_server, image_model):
    from PIL import Image

    model, _ = image_model
    images = pictures(5, seed=7)
    status, answer = image_server.post_json({"images": [base64.b64encode(png(p)).decode() for p in images]})
    assert status == 200, answer
    expected = model.predict_proba([Image.fromarray(p) for p in images])
    assert answer["classes"] == model.classes_.tolist() == ["blue", "red"]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
    assert answer["predictions"] == model.classes_[expected.argmax(axis=1)].tolist()


def test_multipart_upload_and_data_url(image_server, image_model):
    from PIL import Image

    model, _ = image_model
    images = pictures(3, seed=8)
    status, answer = image_server.post_files([("images", png(p)) for p in images])
    assert status == 200, answer
    expected = model.predict_proba([Image.fromarray(p) for p in images])
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
    url = "data:image/png;base64," + base64.b64encode(png(images[0])).decode()
    status, answer = image_server.post_json({"images": [url]})
    assert status == 200 and np.allclose(answer["probabilities"], expected[:1], atol=1e-6)


def test_texts_get_the_models_probabilities_from_every_worker(text_server, text_model):
    model, _ = text_model
    texts = ["the cat sat on the mat", "stock market fell sharply today", "a big house"]
    expected = model.predict_proba(texts)
    pids = set()
    for _ in range(6):
        status, answer = text_server.post_json({"texts": texts})
        assert status == 200, answer
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
        assert answer["predictions"] == model.classes_[expected.argmax(axis=1)].tolist()
        pids.add(text_server.health()["pid"])
    assert text_server.proc.pid not in pids and len(descendants(text_server.proc.pid) & pids) == len(pids)


def test_health_and_metadata(image_server, image_model):
    model, path = image_model
    health = image_server.health()
    assert health["status"] == "ok" and health["modality"] == "image"
    assert health["batching"]["max_batch"] == MAX_BATCH and health["batching"]["max_wait_ms"] == 300
    status, metadata = image_server.request("GET", "/metadata")
    assert status == 200
    assert metadata == {"format": "featx", "model": path.name, "estimator": "TransferClassifier", "modality": "image",
                        "classes": ["blue", "red"], "backbone": "timm/test_efficientnet",
                        "fingerprint": model.fingerprint_, "featx_version": featx.__version__}


def test_concurrent_requests_are_batched_up_to_max_batch(image_server):
    encoded = [base64.b64encode(png(p)).decode() for p in pictures(12, seed=9)]
    before = image_server.health()["batching"]
    with ThreadPoolExecutor(len(encoded)) as pool:
        answers = list(pool.map(lambda e: image_server.post_json({"images": [e]}), encoded))
    assert [status for status, _ in answers] == [200] * len(encoded)
    after = image_server.health()["batching"]
    calls = after["model_calls"] - before["model_calls"]
    assert after["requests"] - before["requests"] == 12 and after["samples"] - before["samples"] == 12
    assert 2 <= calls < 12  # batched, and no call took more than 8
    assert after["largest_batch"] == MAX_BATCH
    assert max(int(size) for size in after["batch_sizes"]) == MAX_BATCH


# -- refused requests --------------------------------------------------------------------------------
GOOD = base64.b64encode(png(pictures(1)[0])).decode()
REFUSED = {  # what the client sent: (server, method, body, content type, status, words of the error)
    "a misspelt field": ("image", {"image": [GOOD]}, 400, ["unknown field 'image'", "'images'"]),
    "both fields": ("image", {"images": [GOOD], "texts": ["a"]}, 400, ["both", "exactly one"]),
    "neither field": ("image", {}, 400, ["neither", "exactly one"]),
    "a JSON list": ("image", [GOOD], 400, ["not an object"]),
    "images not a list": ("image", {"images": GOOD}, 400, ["'images' must be a list"]),
    "an empty list": ("image", {"images": []}, 400, ["'images' is empty"]),
    "a number for an image": ("image", {"images": [GOOD, 3]}, 400, ["images[1]", "not a base64 string"]),
    "bad base64": ("image", {"images": [GOOD, "@@@"]}, 400, ["images[1]", "not valid base64"]),
    "not an image": ("image", {"images": [base64.b64encode(b"hello").decode()]}, 400,
                     ["images[0]", "cannot be decoded", "JPEG"]),
    "texts to the image model": ("image", {"texts": ["a cat"]}, 400, ["classifies images", '"images"']),
    "images to the text model": ("text", {"images": [GOOD]}, 400, ["classifies texts", '"texts"']),
    "a text that is a number": ("text", {"texts": ["a cat", None]}, 400, ["texts[1]", "not a text"]),
    "too many samples": ("image", {"images": [GOOD] * (MAX_ITEMS + 1)}, 413,
                         [f"{MAX_ITEMS + 1} images", f"limit of {MAX_ITEMS}", "--max-request"]),
    "too many bytes": ("image", {"images": [base64.b64encode(b"x" * MAX_BYTES).decode()]}, 413,
                       [f"limit of {MAX_BYTES} bytes", "--max-request"]),
    "not JSON": ("image", b"{images: nope", 400, ["not valid JSON"]),
    "plain text": ("image", ("text/plain", b"a cat"), 415, ["'text/plain'"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_bad_request_is_a_4xx_naming_the_problem(case, image_server, text_server):
    which, payload, status, words = REFUSED[case]
    server = image_server if which == "image" else text_server
    if isinstance(payload, tuple):
        got, answer = server.request("POST", "/predict", payload[1], payload[0])
    elif isinstance(payload, bytes):
        got, answer = server.request("POST", "/predict", payload, "application/json")
    else:
        got, answer = server.post_json(payload)
    assert got == status and set(answer) == {"error"}, answer
    assert all(w in answer["error"] for w in words), answer["error"]


def test_bad_uploads_and_routes(image_server, text_server):
    status, answer = image_server.post_files([("photo", png(pictures(1)[0]))])
    assert status == 400 and "unknown multipart field 'photo'" in answer["error"]
    status, answer = image_server.post_files([("images", b"not a png")])
    assert status == 400 and "images[0] cannot be decoded" in answer["error"]
    status, answer = image_server.post_files([("images", png(p)) for p in pictures(MAX_ITEMS + 1)])
    assert status == 413 and "--max-request" in answer["error"]
    status, answer = text_server.post_files([("images", png(pictures(1)[0]))])
    assert status == 400 and "classifies texts" in answer["error"]
    assert image_server.request("GET", "/nowhere")[0] == 404
    status, answer = image_server.request("GET", "/predict")
    assert status == 405 and "POST /predict" in answer["error"]


def test_the_server_keeps_serving_after_bad_requests(image_server):
    for payload in ({"images": ["@@@"]}, {"images": []}, {"texts": ["a"]}):
        assert image_server.post_json(payload)[0] == 400
    status, answer = image_server.post_json({"images": [GOOD]})
    assert status == 200 and len(answer["predictions"]) == 1
    assert image_server.health()["status"] == "ok"


# -- the command line --------------------------------------------------------------------------------
def featx_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FEATX), "serve", *args], capture_output=True, text=True, timeout=120)


def test_command_line_mistakes(image_model, tmp_path):
    _, path = image_model
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        mistakes = {  # arguments: words of the one error line
            (str(tmp_path / "missing.featx"),): ["MODEL", "missing.featx", "does not exist"],
            (str(path), "--port", port): [f"--port {port}", "Pick another --port"],
            (str(path), "--port", "70000"): ["--port", "65535"],
            (str(path), "--max-request", "12 apples"): ["--max-request '12 apples'", "16MB"],
            (str(path), "--max-request", "1", "--max-request", "2"): ["--max-request", "at most one of each"],
            (str(path), "--workers", "0"): ["--workers", ">= 1"],
            (str(path), "--max-wait-ms", "-1"): ["--max-wait-ms", ">= 0"],
            (str(tmp_path),): ["not an exported model folder", "featx export"],
        }
        for args, words in mistakes.items():
            proc = featx_serve(*args) if "--port" in args else featx_serve(*args, "--port", str(free_port()))
            assert proc.returncode == 2, (args, proc.stderr)
            assert proc.stderr.startswith("featx: error: ") and proc.stderr.count("\n") == 1, proc.stderr
            assert all(w in proc.stderr for w in words), proc.stderr


# -- shutdown (last: they stop the module's servers) --------------------------------------------------
def test_sigint_stops_the_server(image_server):
    assert image_server.stop(signal.SIGINT) == 0
    assert not alive(image_server.proc.pid)


def test_sigterm_stops_every_worker(text_server):
    workers = descendants(text_server.proc.pid)
    assert len(workers) >= 2
    assert text_server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    time.sleep(0.5)
    assert not [pid for pid in workers if alive(pid)]
