"""``featx serve``: a fitted model behind HTTP, with requests that arrive together answered by one model call.

The app is FastAPI on uvicorn.  ``POST /predict`` takes JSON ``{"texts": [...]}`` or
``{"images": ["<base64 JPEG/PNG>", ...]}``, or a multipart upload of image files in the field
``images``, and answers ``{"predictions", "probabilities", "classes"}``; ``GET /health`` says the
server is up and how its requests were batched; ``GET /metadata`` describes the model.  A bad request
gets a 4xx answer ``{"error": "..."}`` naming the problem, and the server goes on serving.

Dynamic batching: each request's samples wait in an asyncio queue; a batch closes when it holds
``max_batch`` samples or ``max_wait_ms`` after its first request arrived, and runs in one model thread
while the event loop keeps taking requests (which form the next batch).  A request is never split:
one larger than ``max_batch`` is a batch of its own.

>>> limits = parse_limits(["64", "2MB"])
>>> limits.items, limits.bytes
(64, 2000000)
>>> app = create_app(ServedModel(lambda X: [[1.0]] * len(X), ["yes"], "text", {}))  # doctest: +SKIP
"""

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BadInputError, FeatxError

FIELDS = {"text": "texts", "image": "images"}  # a model's modality -> the request field holding its samples
SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
CONFIG_VARIABLE = "FEATX_SERVE_CONFIG"  # how the options reach the worker processes of `--workers N`
log = logging.getLogger("featx.serve")


# -- the model and the limits ----------------------------------------------------------------------
@dataclass
class ServedModel:
    """What the server needs from a model: class probabilities of a list of samples, and what it is.

    Parameters
    ----------
    predict_proba : callable
        Samples (texts, or RGB PIL images) -> an ``(n, n_classes)`` array.
    classes : sequence
        The class of each column.
    modality : {"image", "text"}
        What the model classifies.
    metadata : dict
        What ``GET /metadata`` answers.
    """

    predict_proba: Callable[[list], Any]
    classes: Sequence
    modality: str
    metadata: dict


def load_model(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ServedModel:
    """A ``.featx`` file (run by featx, with torch, through the embedding cache) or a folder written by
    ``featx export`` (run by ``featx.serving.OnnxModel``, with onnxruntime).

    Parameters
    ----------
    path : str or path
        The model.
    cache_dir : str or path, optional
        The embedding cache of a ``.featx`` model (default ``$FEATX_CACHE_DIR`` or ``./cache``).

    Returns
    -------
    ServedModel
    """
    path = _existing(path)
    if path.is_dir():
        from . import OnnxModel

        onnx = OnnxModel(path)
        return ServedModel(onnx.predict_proba, _plain(onnx.classes_), onnx.modality, dict(onnx.metadata))
    from .. import __version__
    from ..persist import load

    model = load(path, cache_dir=cache_dir)
    backbone = getattr(model, "backbone_", None)
    if backbone is None or not hasattr(model, "predict_proba"):
        raise BadInputError(f"MODEL {str(path)!r} holds a {type(model).__name__}; `featx serve` serves a classifier "
                            f"with a backbone (written by `featx fit` or `featx finetune`)")
    if "progress" in model.get_params():
        model.set_params(progress=False)
    classes = _plain(model.classes_)
    metadata = {"format": "featx", "model": path.name, "estimator": type(model).__name__, "modality": backbone.modality,
                "classes": classes, "backbone": model.backbone_name_, "fingerprint": model.fingerprint_,
                "featx_version": __version__}
    return ServedModel(model.predict_proba, classes, backbone.modality, metadata)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"MODEL {str(path)!r} does not exist: give a .featx file (written by `featx fit`) or a "
                            f"folder written by `featx export`")
    return path


def _plain(classes) -> list:
    """Class labels as JSON values (numpy scalars become Python ones)."""
    return np.asarray(classes).tolist()


@dataclass(frozen=True)
class Limits:
    """The largest request served: ``items`` samples and ``bytes`` of body."""

    items: int = 256
    bytes: int = 16 * 10**6


def parse_limits(values: Sequence[str]) -> Limits:
    """``--max-request`` values: a plain integer is a number of samples, one with a unit (``16MB``,
    ``512KiB``, ``1000000B``) a number of bytes; what is not given keeps its default.

    Parameters
    ----------
    values : sequence of str
        The values given.

    Returns
    -------
    Limits

    >>> parse_limits(["8"]), parse_limits(["1MiB"]).bytes
    (Limits(items=8, bytes=16000000), 1048576)
    """
    given: dict[str, int] = {}
    for value in values:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        unit = match[2].lower() if match else ""
        if not match or unit and unit not in SIZE_UNITS or int(match[1]) < 1:
            raise BadInputError(f"--max-request {value!r}: give a number of samples (e.g. 64) or a size with a unit "
                                f"(e.g. 16MB, 512KB, 1MiB)")
        kind, amount = ("bytes", int(match[1]) * SIZE_UNITS[unit]) if unit else ("items", int(match[1]))
        if kind in given:
            raise BadInputError(f"--max-request is given two {'sizes' if kind == 'bytes' else 'sample counts'}; "
                                f"give at most one of each (e.g. --max-request 64 --max-request 16MB)")
        given[kind] = amount
    return Limits(**given)


# -- dynamic batching ------------------------------------------------------------------------------
@dataclass
class BatchStats:
    """How the requests were batched: model calls, the samples they took, the largest batch."""

    requests: int = 0
    model_calls: int = 0
    samples: int = 0
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # samples in a model call -> how many calls


class Batcher:
    """Requests queued and joined into model calls of up to ``max_batch`` samples.

    The queue and the batching loop are asyncio; the model runs in one worker thread (a model call
    at a time: the model's own threads use the cores), so the event loop stays free meanwhile.

    Parameters
    ----------
    predict_proba : callable
        The model: samples -> probabilities.
    max_batch : int
        Samples at which a batch closes.
    max_wait : float
        Seconds a batch waits for more requests after its first one.
    """

    def __init__(self, predict_proba: Callable[[list], Any], max_batch: int, max_wait: float) -> None:
        self.predict_proba, self.max_batch, self.max_wait = predict_proba, max_batch, max_wait
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featx-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._thread.shutdown(wait=True)

    async def predict(self, samples: list) -> np.ndarray:
        """The probabilities of ``samples``, computed in a batch with the requests queued beside them."""
        future = asyncio.get_running_loop().create_future()
        self.stats.requests += 1
        await self._queue.put((samples, future))
        return await future

    async def _run(self) -> None:
        held = None  # a request that did not fit in the previous batch: it opens the next one
        loop = asyncio.get_running_loop()
        while True:
            first = held or await self._queue.get()
            held, batch, size = None, [first], len(first[0])
            closes = loop.time() + self.max_wait
            while size < self.max_batch:
                left = closes - loop.time()
                try:
                    entry = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(entry[0]) > self.max_batch:
                    held = entry
                    break
                batch.append(entry)
                size += len(entry[0])
            await self._call(batch)

    async def _call(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        samples = [sample for entry, _ in batch for sample in entry]
        self._count(len(samples))
        try:
            proba = np.asarray(await loop.run_in_executor(self._thread, self.predict_proba, samples))
        except Exception as exc:  # noqa: BLE001 - the error goes to the requests; the server goes on
            if len(batch) == 1:
                _settle(batch[0][1], exception=exc)
                return
            for entry in batch:  # one request's bad sample must not fail the others: each on its own
                await self._call([entry])
            return
        start = 0
        for entry, future in batch:
            _settle(future, result=proba[start:start + len(entry)])
            start += len(entry)

    def _count(self, size: int) -> None:
        s = self.stats
        s.model_calls += 1
        s.samples += size
        s.largest_batch = max(s.largest_batch, size)
        s.batch_sizes[size] = s.batch_sizes.get(size, 0) + 1


def _settle(future: asyncio.Future, result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():  # the client went away
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


# -- reading requests ------------------------------------------------------------------------------
class RequestError(Exception):
    """A request the server refuses: its HTTP status and what is wrong with it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _usage(modality: str) -> str:
    if modality == "text":
        return 'send JSON {"texts": ["...", ...]}'
    return ('send JSON {"images": ["<base64 JPEG or PNG>", ...]} or a multipart upload of files in the field '
            '"images" (curl -F images=@photo.jpg)')


async def read_body(request, limits: Limits) -> bytes:
    """The request body, refused (413) as soon as it passes ``limits.bytes``."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(413, f"the request body is over the limit of {limits.bytes} bytes (--max-request): "
                                f"send fewer or smaller samples per request")
    if declared.isdigit() and int(declared) > limits.bytes:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def samples_from_json(body: bytes, modality: str, limits: Limits) -> list:
    """The samples of a JSON request, checked: one known field, a non-empty list, within ``limits``
    (images still encoded: :func:`decode_images` decodes them)."""
    from ..errors import did_you_mean

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc}); {_usage(modality)}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"the JSON body is a {type(payload).__name__}, not an object; {_usage(modality)}")
    unknown = sorted(set(payload) - set(FIELDS.values()))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}.{did_you_mean(unknown[0], list(FIELDS.values()))} "
                                f"To classify, {_usage(modality)}")
    if len(payload) != 1:
        raise RequestError(400, f"{'both' if payload else 'neither'} \"texts\" {'and' if payload else 'nor'} "
                                f"\"images\" given: give exactly one; {_usage(modality)}")
    name, samples = next(iter(payload.items()))
    expected = FIELDS[modality]
    if name != expected:
        raise RequestError(400, f"this model classifies {modality}s, not {name}; {_usage(modality)}")
    if not isinstance(samples, list):
        raise RequestError(400, f"{name!r} must be a list, got a JSON {type(samples).__name__}; {_usage(modality)}")
    _check_count(len(samples), name, limits)
    wrong = [i for i, s in enumerate(samples) if not isinstance(s, str)]
    if wrong:
        what = "a text" if modality == "text" else "a base64 string"
        raise RequestError(400, f"{name}[{wrong[0]}] is a JSON {type(samples[wrong[0]]).__name__}, not {what}"
                                f"{f' ({len(wrong)} such items)' if len(wrong) > 1 else ''}")
    if modality == "image":
        return [_base64(s, i) for i, s in enumerate(samples)]
    return samples


def _check_count(count: int, name: str, limits: Limits) -> None:
    if count == 0:
        raise RequestError(400, f"{name!r} is empty: send at least one sample")
    if count > limits.items:
        raise RequestError(413, f"{count} {name} in one request is over the limit of {limits.items} (--max-request): "
                                f"split them over several requests")


def _base64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"images[{index}] is not valid base64") from None


async def samples_from_form(request, body: bytes, limits: Limits) -> list[bytes]:
    """The image files of a multipart upload (field ``images``), read from ``body``."""
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def replay() -> dict:  # the body again, for the form parser (it was read under the size limit)
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=limits.items + 1, max_fields=limits.items + 1,
                                                          max_part_size=limits.bytes)
    except MultiPartException as exc:
        raise RequestError(400, f"the multipart body cannot be read: {exc}") from None
    try:
        unknown = sorted({key for key in form.keys() if key != "images"})
        if unknown:
            raise RequestError(400, f"unknown multipart field {unknown[0]!r}: upload the files in the field "
                                    f"\"images\" (curl -F images=@photo.jpg)")
        files = form.getlist("images")
        _check_count(len(files), "images", limits)
        texts = [i for i, f in enumerate(files) if isinstance(f, str)]
        if texts:
            raise RequestError(400, f"images[{texts[0]}] is a form value, not a file: upload files "
                                    f"(curl -F images=@photo.jpg)")
        return [await f.read() for f in files]
    finally:
        await form.close()


def decode_images(encoded: list[bytes]) -> list:
    """RGB PIL images, or a 400 naming the first sample that is not an image."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for i, data in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(data)) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise RequestError(400, f"images[{i}] cannot be decoded ({len(data)} bytes: {reason}); send JPEG or "
                                    f"PNG files") from None
    return images


# -- the app ---------------------------------------------------------------------------------------
def create_app(model: ServedModel, *, max_batch: int = 32, max_wait_ms: float = 5.0, limits: Limits = Limits()):
    """The FastAPI app serving ``model``.

    Parameters
    ----------
    model : ServedModel
        From :func:`load_model`.
    max_batch : int, default 32
        Samples at which a batch closes.
    max_wait_ms : float, default 5.0
        Milliseconds a batch waits for more requests after its first one.
    limits : Limits
        The largest request served.

    Returns
    -------
    fastapi.FastAPI
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request  # the routes' annotations name Request: this module has no postponed annotations
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    batcher = Batcher(model.predict_proba, max_batch, max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="featx", summary=f"a featx {model.modality} classifier", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405: the same {"error": ...} shape
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; the endpoints are "
                                      f"POST /predict, GET /health and GET /metadata")

    @app.get("/health")
    async def health() -> dict:
        """Up, and how requests were batched (counts since start, in this worker process)."""
        s = batcher.stats
        return {"status": "ok", "modality": model.modality, "pid": os.getpid(),
                "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "requests": s.requests,
                             "model_calls": s.model_calls, "samples": s.samples, "largest_batch": s.largest_batch,
                             "batch_sizes": {str(k): v for k, v in sorted(s.batch_sizes.items())}}}

    @app.get("/metadata")
    async def metadata() -> dict:
        """What the model is: its classes, modality, backbone and fingerprint."""
        return model.metadata

    @app.post("/predict")
    async def predict(request: Request):
        """Classify ``{"texts": [...]}``, ``{"images": [base64, ...]}`` or multipart files in ``images``."""
        try:
            samples = await _samples(request)
            proba = await batcher.predict(samples)
        except RequestError as exc:
            return error(exc.status, exc.message)
        except FeatxError as exc:  # a sample the model refuses
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - one failed call is answered; the server goes on
            log.exception("model call failed")
            return error(500, f"the model failed on this request: {type(exc).__name__}: {exc}")
        classes = model.classes
        return {"predictions": [classes[i] for i in proba.argmax(axis=1)], "probabilities": proba.tolist(),
                "classes": classes}

    async def _samples(request: Request) -> list:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/json", "multipart/form-data"):
            raise RequestError(415, f"content type {kind or 'none'!r} is not served; {_usage(model.modality)}")
        body = await read_body(request, limits)
        if kind == "application/json":
            samples = samples_from_json(body, model.modality, limits)
        elif model.modality != "image":
            raise RequestError(400, f"a multipart upload sends image files, but this model classifies texts; "
                                    f"{_usage(model.modality)}")
        else:
            samples = await samples_from_form(request, body, limits)
        return await run_in_threadpool(decode_images, samples) if model.modality == "image" else samples

    return app


def app_from_environment():
    """The app of one worker process of ``featx serve --workers N`` (uvicorn's factory; the options
    come in ``$FEATX_SERVE_CONFIG``)."""
    config = json.loads(os.environ[CONFIG_VARIABLE])
    return create_app(load_model(config["model"], config["cache_dir"]), max_batch=config["max_batch"],
                      max_wait_ms=config["max_wait_ms"], limits=Limits(**config["limits"]))


def check_port_free(host: str, port: int) -> None:
    """A clear error now, rather than uvicorn's log line later, when ``host:port`` cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadInputError(f"--host {host!r} cannot be resolved ({exc.strerror}); e.g. --host 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise BadInputError(f"--port {port}: {host}:{port} cannot be used ({exc.strerror}); is another server "
                                f"running there? Pick another --port") from None


def serve(model_path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_batch: int = 32, max_wait_ms: float = 5.0, limits: Limits = Limits(), cache_dir=None) -> None:
    """Serve a model until SIGINT or SIGTERM (uvicorn finishes the requests in flight, then stops).

    Parameters
    ----------
    model_path : str or path
        A ``.featx`` file or a folder written by ``featx export``.
    host, port : str, int
        Where to listen.
    workers : int, default 1
        Server processes, each with its own copy of the model and its own batching.
    max_batch, max_wait_ms, limits
        See :func:`create_app`.
    cache_dir : str or path, optional
        The embedding cache of a ``.featx`` model.
    """
    import uvicorn

    _existing(model_path)
    check_port_free(host, port)
    model = load_model(model_path, cache_dir)  # in this process too: a bad model fails here, with its message
    where = f"http://{host}:{port}"
    engine = "onnxruntime" if Path(model_path).is_dir() else "torch"
    print(f"featx: serving {model_path} ({model.modality}s, {len(model.classes)} classes, {engine}) on {where} "
          f"with {workers} worker{'s' if workers > 1 else ''}: POST /predict, GET /health, GET /metadata", flush=True)
    if cache_dir is not None:
        cache_dir = Path(cache_dir).resolve()
    options = {"host": host, "port": port, "access_log": False, "log_level": "info", "timeout_graceful_shutdown": 30}
    if workers == 1:
        uvicorn.run(create_app(model, max_batch=max_batch, max_wait_ms=max_wait_ms, limits=limits), **options)
        return
    del model
    os.environ[CONFIG_VARIABLE] = json.dumps({
        "model": str(Path(model_path).resolve()), "cache_dir": None if cache_dir is None else str(cache_dir),
        "max_batch": max_batch, "max_wait_ms": max_wait_ms, "limits": {"items": limits.items, "bytes": limits.bytes}})
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)
