"""`spamgpt serve`: the classifier behind LitServe, which batches across requests: the
requests that arrive within --batch-timeout seconds of each other (up to --max-batch-size of
them) are scored as one call of the one prediction path (classifier.classify_texts), and each
gets its own messages' answers back. Why LitServe and not MLServer: docs/serving.md.

    spamgpt serve --model runs:/<run_id>/model --max-batch-size 16 --batch-timeout 0.01 -p 5001
    curl -d '{"inputs": ["WIN a prize now", "see you at 7"]}' localhost:5001/invocations
    {"predictions": [{"label": "spam", "probability": 0.98, "probabilities": {...}, ...}]}

The request and the answer are those of `mlflow models serve` for the same model: POST
/invocations with {"inputs": [...]}, {"instances": [...]}, {"dataframe_records": [...]} or
{"dataframe_split": {"columns": [...], "data": [...]}}, answered {"predictions": [...]}, each
answer as `spamgpt classify --json` gives it (classifier.answers: same fields and template,
threshold and probabilities); GET /ping answers once the model is loaded. A bad request is
refused before it is queued (a 4xx, {"error_code": ..., "message": one line}), so it never
fails the requests batched with it. The worker logs what it computes with (`worker: ...`),
and each batch as `batch: R requests, M messages, S s, C CPU s` (S: the engine's seconds, C:
the worker's CPU seconds in them, all its threads).

The model runs in LitServe's worker process, built there by an engine: the PyTorch model of
loader.load_model (TorchEngine), or with --onnx an ONNX export of that model (`spamgpt export
--to onnx [--quantize int8]`) run by onnxruntime (OnnxEngine), which answers as the logged
model with mlflow.serve onnx or onnx-int8 does. Another engine is a class with the same
constructor, answers() and a `described` line. Its thread pools sleep when out of work
(WORKER_ENV, ORT_NO_SPINNING) instead of spinning on the cores the HTTP process needs.
"""

import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import litserve
import torch

from spamgpt import labels, runtime
from spamgpt.data import tokenized
from spamgpt.data.batching import ModelInputs
from spamgpt.errors import SpamGPTError
from spamgpt.model import classifier
from spamgpt.serve import export, loader, serving
from spamgpt.tasks.registry import task_for
from spamgpt.texts import TextFields, Truncation

INVOCATIONS = "/invocations"  # the paths of MLflow's scoring server
PING = "/ping"
MAX_CHARS = 100_000  # per message: the model reads its first max_length tokens anyway
MAX_BODY = 16 * 2**20  # bytes per request, refused (413) before it is read whole
FORMS = "inputs, instances, dataframe_records or dataframe_split"
# The worker's thread pools wait for work asleep, not spinning. By default OpenMP's threads
# (PyTorch's, MKL's, oneDNN's) and onnxruntime's spin on a core after each parallel step,
# waiting for the next: in a server that core is wanted by the HTTP process, which reads
# the next requests while a batch is scored (and on a shared machine by everyone else), so
# spinning slowed each batch 2 to 3 times and took as much CPU again (docs/serving.md).
# Read by OpenMP when the worker process starts: set before LitServe spawns it.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
ORT_NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


class Refused(Exception):
    """A request the server does not take: its HTTP status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    """What the worker process builds its engine from (LitServe pickles the API into it)."""

    model: str
    pretrained: str
    device: str = "auto"
    precision: str = "auto"
    threshold: float | None = None  # None: the model's own (classify's default)
    max_tokens: int | None = None
    onnx: str | None = None  # an ONNX export of the model: onnxruntime scores it
    workers: int = 1  # worker processes side by side, each computing on its share of the cores


class TorchEngine:
    """The PyTorch model of loader.load_model, scoring as `spamgpt classify` does."""

    def __init__(self, settings: Settings) -> None:
        self.compute = runtime.setup(
            settings.device,
            settings.precision,
            processes=settings.workers,
            max_tokens=settings.max_tokens,
            settings=runtime.FLAGS,
        )
        loaded = loader.load_model(settings.model, settings.pretrained)
        self.enc, self.meta = loaded.enc, loaded.meta
        self.model = loaded.model.to(self.compute.device)
        self.classes = classifier.classes_of(self.meta)
        self.truncation = Truncation.from_dict(self.meta)
        self.threshold = loaded.threshold if settings.threshold is None else settings.threshold
        self.described = (
            f"PyTorch {self.compute.precision} on {self.compute.device}, "
            f"{torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}"
        )

    def answers(self, texts: list[str]) -> list[dict]:
        """Each text's answer (classifier.answers); texts already joined by the template."""
        probs, _ = classifier.classify_texts(
            self.model, self.enc, texts, self.meta["max_length"], self.compute, self.truncation
        )
        return classifier.answers(probs, self.classes, self.threshold)


class OnnxEngine:
    """onnxruntime on an ONNX export of the model (settings.onnx), the model's tokenizer, cut,
    classes and threshold: the served ONNX model's path (serving.onnx_probabilities). The
    graph computes in what it was exported in (fp32, or int8 weights and activations)."""

    def __init__(self, settings: Settings) -> None:
        import onnxruntime

        with loader.opened(settings.model, settings.pretrained) as loaded:
            self.enc, self.meta = loaded.enc, loaded.meta
            threshold = loaded.threshold
        self.classes = classifier.classes_of(self.meta)
        self.truncation = Truncation.from_dict(self.meta)
        self.threshold = threshold if settings.threshold is None else settings.threshold
        options = onnxruntime.SessionOptions()
        for key, value in ORT_NO_SPINNING.items():
            options.add_session_config_entry(key, value)
        if settings.workers > 1:  # one worker: onnxruntime's own default, the physical cores
            options.intra_op_num_threads = runtime.use_all_cores(settings.workers)
        self.session = onnxruntime.InferenceSession(settings.onnx, options)
        spinning = self.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )
        self.described = f"onnxruntime, intra-op spinning {spinning}"

    def answers(self, texts: list[str]) -> list[dict]:
        """Each text's answer (classifier.answers); texts already joined by the template."""
        ids = tokenized.encode(self.enc, texts)
        inputs = ModelInputs(
            tokenized.pack_ids(ids, self.meta["max_length"], self.truncation), frozen_blocks=None
        )
        probs = torch.from_numpy(serving.onnx_probabilities(self.session, inputs))
        return classifier.answers(probs, self.classes, self.threshold)


def check_onnx(file: str, meta: dict) -> None:
    """Refuse, in one line, an --onnx file onnxruntime does not load or that is not an export
    of --model: its recorded labels, fields, template, max_length or cut differ."""
    import onnxruntime

    if not os.path.isfile(file):
        raise SpamGPTError(f"--onnx {file}: no such file")
    try:
        graph = onnxruntime.InferenceSession(file).get_modelmeta().custom_metadata_map
    except Exception as e:  # onnxruntime raises its own classes for a file it cannot read
        raise SpamGPTError(f"--onnx {file}: not a graph onnxruntime loads: "
                           f"{str(e).splitlines()[0]}") from None  # fmt: skip
    if export.RECORDED not in graph:
        raise SpamGPTError(f"--onnx {file} is not a spamgpt export (spamgpt export --to onnx)")
    theirs, ours = json.loads(graph[export.RECORDED]), export.recorded(meta)
    differ = [key for key in ours if theirs.get(key) != ours[key]]
    if differ:
        key = differ[0]
        raise SpamGPTError(
            f"--onnx {file} is not an export of --model: its {key} is {theirs.get(key)!r}, "
            f"the model's {ours[key]!r}"
        )


def texts_of(body: bytes, fields: TextFields) -> list[str]:
    """The texts the model reads of a request body, each joined by the model's template;
    Refused (400 or 413) naming what is wrong and what is allowed."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "the request body is not JSON") from None
    forms = [k for k in ("inputs", "instances", "dataframe_records", "dataframe_split")
             if isinstance(request, dict) and k in request]  # fmt: skip
    if len(forms) != 1:
        raise Refused(400, f"the request must be a JSON object with one of {FORMS}")
    records = request[forms[0]]
    if forms[0] == "dataframe_split":
        split = records if isinstance(records, dict) else {}
        columns, rows = split.get("columns"), split.get("data")
        if not isinstance(columns, list) or not isinstance(rows, list):
            raise Refused(400, "dataframe_split must hold a columns list and a data list")
        if not all(isinstance(c, str) for c in columns):
            raise Refused(400, "dataframe_split: the columns must be names (strings)")
        if not all(isinstance(row, list) and len(row) == len(columns) for row in rows):
            raise Refused(400, f"dataframe_split: each data row must hold {len(columns)} values")
        records = [dict(zip(columns, row, strict=True)) for row in rows]
    elif isinstance(records, dict) and forms[0] == "inputs":  # columns of values
        records = records_of_columns(records)
    if not isinstance(records, list):
        raise Refused(400, f"{forms[0]} must be a list of messages")
    if not records:
        raise Refused(400, f"{forms[0]} is empty: give at least one message")
    return [_text(record, number, fields) for number, record in enumerate(records, start=1)]


def records_of_columns(columns: dict) -> list | None:
    """{"inputs": {column: [values]}} as records; None when the columns are not lists of one
    length."""
    values = list(columns.values())
    if not values or not all(isinstance(v, list) and len(v) == len(values[0]) for v in values):
        return None
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _text(record: object, number: int, fields: TextFields) -> str:
    if isinstance(record, str) and len(fields.columns) == 1:
        values = {fields.columns[0]: record}
    elif isinstance(record, dict):
        values = record
    else:
        want = "a string" if len(fields.columns) == 1 else "an object of"
        raise Refused(
            400,
            f"message {number} is {type(record).__name__}: each message must be {want} "
            f"{'or an object of ' if len(fields.columns) == 1 else ''}"
            f"the field(s) {', '.join(fields.columns)} (strings)",
        )
    for column in fields.columns:
        value = values.get(column)
        if not isinstance(value, str):
            what = "missing" if value is None else f"{type(value).__name__}, not a string"
            raise Refused(400, f"message {number}: field {column!r} is {what}")
        if len(value) > MAX_CHARS:
            raise Refused(
                413, f"message {number}: {len(value)} characters; at most {MAX_CHARS} a message"
            )
    return fields.join({c: values[c] for c in fields.columns})


class RefuseBadRequests:
    """ASGI middleware: reads a POST /invocations body (at most MAX_BODY bytes), answers a
    bad one itself with its 4xx, and hands a good one on; LitServe would fail every request
    batched with one that its worker refuses."""

    def __init__(self, app: Callable[..., Awaitable[None]], fields: TextFields) -> None:
        self.app, self.fields = app, fields

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != INVOCATIONS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                await _refuse(send, Refused(413, f"request over {MAX_BODY} bytes"))
                return
        body = b"".join(chunks)
        try:
            texts_of(body, self.fields)
        except Refused as e:
            await _refuse(send, e)
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Callable, refused: Refused) -> None:
    code = "BAD_REQUEST" if refused.status == 400 else "REQUEST_TOO_LARGE"
    body = json.dumps({"error_code": code, "message": str(refused)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BatchedClassifier(litserve.LitAPI):
    """Each request's texts in; a batch of requests scored in one engine call; each request's
    answers out, in its order."""

    def __init__(self, settings: Settings, fields: TextFields, **batching) -> None:
        super().__init__(api_path=INVOCATIONS, **batching)
        self.settings, self.fields = settings, fields

    def setup(self, device: str) -> None:
        engine = TorchEngine if self.settings.onnx is None else OnnxEngine
        self.engine = engine(self.settings)
        print(f"worker: {self.engine.described}", file=sys.stderr, flush=True)

    def decode_request(self, request: dict) -> list[str]:
        # RefuseBadRequests took only good bodies: this parse succeeds.
        return texts_of(json.dumps(request).encode(), self.fields)

    def batch(self, requests: list[list[str]]) -> list[list[str]]:
        return requests

    def predict(self, x: list) -> list:
        """A batch's answers, a list per request; with max_batch_size 1 LitServe hands over
        one request's texts, unbatched, and takes its answers."""
        requests = x if self.max_batch_size > 1 else [x]
        texts = [text for request in requests for text in request]
        began, cpu = time.perf_counter(), time.process_time()
        answers = iter(self.engine.answers(texts))
        print(
            f"batch: {len(requests)} requests, {len(texts)} messages, "
            f"{time.perf_counter() - began:.3f} s, {time.process_time() - cpu:.3f} CPU s",
            file=sys.stderr,
            flush=True,
        )
        out = [[next(answers) for _ in request] for request in requests]
        return out if self.max_batch_size > 1 else out[0]

    def unbatch(self, output: list[list[dict]]) -> list[list[dict]]:
        return output

    def encode_response(self, answers: list[dict]) -> dict:
        return {"predictions": answers}


def model_meta(source: str, pretrained: str | os.PathLike) -> dict:
    """The model's classifier.json: its fields and template, classes, max_length, cut."""
    with loader.opened(source, pretrained) as loaded:
        return loaded.meta


def serve(
    settings: Settings,
    port: int,
    host: str = "127.0.0.1",
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
) -> None:
    """Run the batching server until it is stopped (SIGINT/SIGTERM)."""
    if max_batch_size < 1:
        raise SpamGPTError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    if batch_timeout < 0:
        raise SpamGPTError(f"--batch-timeout must be >= 0 seconds, got {batch_timeout}")
    if settings.workers < 1:
        raise SpamGPTError(f"--workers must be at least 1, got {settings.workers}")
    if settings.onnx is None:  # refused here in one line, not in the worker LitServe starts
        device = runtime.resolve_device(settings.device, runtime.FLAGS[0])
        runtime.resolve_precision(settings.precision, device, runtime.FLAGS[1])
    meta = model_meta(settings.model, settings.pretrained)
    task_for(classifier.classes_of(meta)).check_threshold_flag(settings.threshold, "--threshold")
    if settings.onnx is not None:
        check_onnx(settings.onnx, meta)
    fields = TextFields.from_dict(meta)
    for name, value in WORKER_ENV.items():  # the caller's own setting wins
        os.environ.setdefault(name, value)
    api = BatchedClassifier(
        settings, fields, max_batch_size=max_batch_size, batch_timeout=batch_timeout
    )
    server = litserve.LitServer(
        api,
        accelerator="cpu",  # the engine puts the model on settings.device
        devices=1,
        # On cores of their own, two single-threaded workers gave 1.1 to 1.4x the int8
        # messages/s of one on two threads, whose threads wait for each other at every
        # operator; on a machine loaded by other jobs, one was faster (docs/serving.md).
        workers_per_device=settings.workers,
        healthcheck_path=PING,
        middlewares=[(RefuseBadRequests, {"fields": fields})],
    )
    # LitServe stops its worker and HTTP processes on Ctrl-C only; on a plain SIGTERM to this
    # process they were left running, orphans polling their queues on the cores.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
    except KeyboardInterrupt:  # a stop while it started, before run's own shutdown: no trace
        pass
    finally:
        # A signal while LitServe waits for its worker to be ready comes before run's own
        # shutdown: the worker, a process Python's exit joins, kept the server up for ever.
        for worker in getattr(server, "inference_workers", []):
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def command(args: Any) -> None:
    """`spamgpt serve` (cli.py's parser)."""
    labels.check_threshold_values(args.threshold, "--threshold")
    settings = Settings(
        str(args.model), str(args.pretrained), args.device, args.precision, args.threshold,
        args.max_tokens, None if args.onnx is None else str(args.onnx), args.workers,
    )  # fmt: skip
    serve(settings, args.port, args.host, args.max_batch_size, args.batch_timeout)
