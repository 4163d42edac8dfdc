"""`spamgpt serve`, the batching server (LitServe), run for real on 127.0.0.1 with a tiny model
(and with --onnx, on its ONNX export): concurrent requests answered as `spamgpt classify`
answers, scored in batches of several requests, and bad requests refused with a 4xx without
harming the server."""

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import free_port, http_service, post, spamgpt, subprocess_env

from spamgpt import params, runtime
from spamgpt.data import tokenizer
from spamgpt.errors import SpamGPTError
from spamgpt.labels import SMS, Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.serve import export
from spamgpt.serve.serve_batched import (
    FORMS,
    INVOCATIONS,
    MAX_BODY,
    MAX_CHARS,
    BatchedClassifier,
    OnnxEngine,
    RefuseBadRequests,
    Refused,
    Settings,
    TorchEngine,
    check_onnx,
    model_meta,
    records_of_columns,
    serve,
    texts_of,
)
from spamgpt.texts import ONE_TEXT, TextFields, Truncation

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.6
UNAVAILABLE = "mps" if torch.cuda.is_available() else "cuda"  # a device this machine lacks
WORDS = ["free", "prize", "call", "now", "see", "you", "at", "the", "station", "win", "txt"]


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """torch's thread count back as it was after each test: the engine and classify set it to
    every core (runtime.setup). Under tools/mutate.py (OMP_NUM_THREADS=1) the test also runs
    on one core, so that they set one thread: a process forked (mutmut's run of a mutant)
    after OpenMP ran on several threads waits forever for them in its next parallel step."""
    threads = torch.get_num_threads()
    one_core = os.environ.get("OMP_NUM_THREADS") == "1" and hasattr(os, "sched_setaffinity")
    if one_core:
        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cores)})
    yield
    if one_core:
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(threads)


def tiny_model(root: Path, classes: Classes = SMS) -> Path:
    """A self-contained fine-tuned folder of random tiny weights, the head drawn so that
    probabilities spread over (0, 1)."""
    hub = make_hub(root / "hub", layers=2, dim=32, heads=4, n_ctx=64, revision="serve")
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(classes.names))
    torch.nn.init.normal_(model.head.weight, std=0.3)
    m = params.load(REPO / "params.yaml").model
    meta = classifier.classifier_meta(m, classes, [], 48, tokenizer.load(hub).eot_token)
    meta["pretrained"] = False
    folder = root / "finetuned"
    folder.mkdir()
    classifier.save(model, folder, meta, hub, full=True)
    shutil.rmtree(hub)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(base URL, model folder, log file) of `spamgpt serve` batching up to 8 requests."""
    root = tmp_path_factory.mktemp("serve")
    folder = tiny_model(root)
    log = root / "serve.log"
    cmd = [sys.executable, "-c", "from spamgpt.serve.cli import main; main()", "serve"]
    cmd += ["--model", str(folder), "--threshold", str(THRESHOLD), "--device", "cpu"]
    cmd += ["--max-batch-size", "8", "--batch-timeout", "0.2"]
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}
    env.pop("OMP_WAIT_POLICY", None)  # the server's own choice
    with http_service(lambda port: [*cmd, "--port", str(port)], "/ping", env, log, root) as url:
        yield url, folder, log


def classify(folder: Path, messages: list[str], precision: str = "auto") -> list[dict]:
    out = spamgpt(
        ["classify", "--json", "--device", "cpu", "--threshold", str(THRESHOLD),
         "--precision", precision, "--model", str(folder), *messages],
        folder.parent,
    )  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def refused(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    return error.value.code, json.load(error.value)


def assert_same(answer: dict, expected: dict) -> None:
    assert set(answer) == {"label", "probability", "probabilities", "spam_probability"}
    assert answer["label"] == expected["label"]
    assert answer["spam_probability"] == pytest.approx(expected["spam_probability"], abs=1e-5)
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def batches(log: Path) -> list[tuple[int, int]]:
    """(requests, messages) of each engine call the server logged."""
    lines = [line.split() for line in log.read_text().splitlines() if line.startswith("batch: ")]
    return [(int(words[1]), int(words[3])) for words in lines]


def test_concurrent_requests_are_batched_and_answered_as_classify_does(served) -> None:
    url, folder, log = served
    before = len(batches(log))
    messages = [" ".join(WORDS[i % 11 : i % 11 + 1 + i % 7]) for i in range(32)]
    messages[5] = ""  # an empty message is a message
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda m: post(f"{url}/invocations", {"inputs": [m]}), messages))
    expected = classify(folder, messages)
    for answer, e in zip(answers, expected, strict=True):
        (prediction,) = answer["predictions"]
        assert_same(prediction, e)
    assert {e["label"] for e in expected} == {"spam", "ham"}  # the threshold matters
    calls = batches(log)[before:]
    assert sum(r for r, _ in calls) == 32 == sum(m for _, m in calls)
    assert len(calls) < 32 and max(r for r, _ in calls) > 1  # several requests a call


def test_the_workers_threads_sleep_when_out_of_work(served) -> None:
    """The worker's OpenMP threads wait asleep (OMP_WAIT_POLICY=PASSIVE), all of the cores
    this process may use computing: spinning, they took the cores the HTTP process needs."""
    _, _, log = served
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    (line,) = [line for line in log.read_text().splitlines() if line.startswith("worker: ")]
    precision = "bf16" if runtime.bf16_supported(torch.device("cpu")) else "fp32"
    assert line == f"worker: PyTorch {precision} on cpu, {cores} threads, OMP_WAIT_POLICY PASSIVE"


def test_every_request_form_mlflow_takes(served) -> None:
    url, folder, _ = served
    messages = ["WIN a free prize", "see you at 7", "call now"]
    expected = classify(folder, messages)
    bodies = [
        {"inputs": messages},
        {"instances": messages},
        {"inputs": {"text": messages}},
        {"dataframe_records": [{"text": m} for m in messages]},
        {"dataframe_split": {"columns": ["text"], "data": [[m] for m in messages]}},
    ]
    for body in bodies:
        answer = post(f"{url}/invocations", body)
        for a, e in zip(answer["predictions"], expected, strict=True):
            assert_same(a, e)


def test_bad_requests_are_refused_and_the_server_still_answers(served) -> None:
    url, folder, _ = served
    cases = [
        (b'{"inputs": ["a", 3]}', 400, "message 2 is int"),
        (b'{"dataframe_records": [{"body": "a"}]}', 400, "field 'text' is missing"),
        (b'{"inputs": []}', 400, "inputs is empty"),
        (b'{"messages": ["a"]}', 400, "one of inputs, instances"),
        (b"not json", 400, "not JSON"),
        (json.dumps({"inputs": ["x" * 10_000_000]}).encode(), 413, f"at most {MAX_CHARS}"),
    ]
    for body, status, words in cases:
        code, error = refused(url, body)
        assert code == status and words in error["message"], (body[:40], error)
        assert "\n" not in error["message"]
    (answer,) = post(f"{url}/invocations", {"inputs": ["still here"]})["predictions"]
    assert_same(answer, classify(folder, ["still here"])[0])


def test_fields_of_a_model_of_several_are_joined_by_its_template() -> None:
    fields = TextFields(("subject", "body"), "{subject}: {body}")
    body = json.dumps({"dataframe_records": [{"subject": "WIN", "body": "a prize", "x": 1}]})
    assert texts_of(body.encode(), fields) == ["WIN: a prize"]
    with pytest.raises(Refused, match="message 1 is str: each message must be an object of"):
        texts_of(b'{"inputs": ["WIN"]}', fields)
    assert texts_of(b'{"inputs": ["WIN"]}', ONE_TEXT) == ["WIN"]
    for body, words in [
        (b'{"inputs": {}}', "inputs must be a list of messages"),
        (b'{"dataframe_split": {"columns": [[1]], "data": [[1]]}}', "must be names"),
    ]:
        with pytest.raises(Refused, match=words):
            texts_of(body, ONE_TEXT)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--batch-timeout", "-1"], "--batch-timeout must be >= 0 seconds, got -1.0"),
        (["--threshold", "2"], "--threshold must be between 0 and 1, got 2.0"),
        (["--model", "nowhere"], "--model nowhere: no such folder"),
        (["--device", UNAVAILABLE], f"--device: {UNAVAILABLE} is not available on this machine"),
    ],
)
def test_bad_flags_are_refused_in_one_line(
    flags: list[str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        spamgpt(["serve", "--model", str(tmp_path), *flags], tmp_path)
    assert exit_.value.code != 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"spamgpt: error: {error}")


@pytest.fixture(scope="module")
def served_onnx(tmp_path_factory: pytest.TempPathFactory):
    """(base URL, model folder) of `spamgpt serve --onnx` on the model's fp32 ONNX export."""
    root = tmp_path_factory.mktemp("serve-onnx")
    folder = tiny_model(root)
    model, meta = classifier.load(folder)
    export.to_onnx(model.eval(), meta, root / "model.onnx")
    cmd = [sys.executable, "-c", "from spamgpt.serve.cli import main; main()", "serve"]
    cmd += ["--model", str(folder), "--onnx", str(root / "model.onnx"), "--threshold"]
    cmd += [str(THRESHOLD), "--max-batch-size", "8", "--batch-timeout", "0.2"]
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}
    log = root / "serve.log"
    with http_service(lambda port: [*cmd, "--port", str(port)], "/ping", env, log, root) as url:
        yield url, folder, log


def test_the_onnx_export_served_answers_concurrent_requests_as_classify_does(
    served_onnx,
) -> None:
    url, folder, log = served_onnx
    messages = [" ".join(WORDS[i % 11 : i % 11 + 1 + i % 5]) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda m: post(f"{url}/invocations", {"inputs": [m]}), messages))
    expected = classify(folder, messages, "fp32")  # what the graph computes in
    for answer, e in zip(answers, expected, strict=True):
        (prediction,) = answer["predictions"]
        assert_same(prediction, e)
    assert {e["label"] for e in expected} == {"spam", "ham"}
    assert max(r for r, _ in batches(log)) > 1
    assert "worker: onnxruntime, intra-op spinning 0" in log.read_text().splitlines()


def test_an_onnx_file_that_is_not_the_models_export_is_refused(
    folder: Path, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime

    graph = str(folder.parent / "model.onnx")
    meta = model_meta(str(folder), "none")
    check_onnx(graph, meta)  # its own export: taken
    for key, theirs, ours in [
        ("max_length", 48, 49),
        ("truncation", "head", "tail"),
        ("labels", ["ham", "spam"], ["spam", "ham"]),
    ]:
        with pytest.raises(SpamGPTError) as refused_:
            check_onnx(graph, {**meta, key: ours})
        assert str(refused_.value) == (
            f"--onnx {graph} is not an export of --model: its {key} is {theirs!r}, "
            f"the model's {ours!r}"
        )
    nothing = str(tmp_path / "nothing.onnx")
    with pytest.raises(SpamGPTError) as refused_:
        check_onnx(nothing, meta)
    assert str(refused_.value) == f"--onnx {nothing}: no such file"
    text = tmp_path / "text.onnx"
    text.write_text("not a graph")
    with pytest.raises(Exception) as loading:  # onnxruntime's own words, their first line
        onnxruntime.InferenceSession(str(text))
    with pytest.raises(SpamGPTError) as refused_:
        check_onnx(str(text), meta)
    first = str(loading.value).splitlines()[0]
    assert str(refused_.value) == f"--onnx {text}: not a graph onnxruntime loads: {first}"
    # a graph onnxruntime loads, without the metadata spamgpt export records
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y]
    )
    other = tmp_path / "other.onnx"
    opset = onnx.helper.make_opsetid("", 13)
    onnx.save(onnx.helper.make_model(identity, opset_imports=[opset], ir_version=8), other)
    with pytest.raises(SpamGPTError) as refused_:
        check_onnx(str(other), meta)
    assert str(refused_.value) == (
        f"--onnx {other} is not a spamgpt export (spamgpt export --to onnx)"
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder for the in-process tests, with its fp32 ONNX export beside it."""
    root = tmp_path_factory.mktemp("engine")
    folder = tiny_model(root)
    model, meta = classifier.load(folder)
    export.to_onnx(model.eval(), meta, root / "model.onnx")
    return folder


def settings_of(folder: Path, onnx: bool = False) -> Settings:
    graph = str(folder.parent / "model.onnx") if onnx else None
    return Settings(str(folder), str(folder.parent / "none"), "cpu", "fp32", THRESHOLD, None, graph)


REQUESTS = [["WIN a free prize now, txt"], ["see you", "at the station at 7", ""], ["call"]]


def test_a_batch_of_requests_gets_each_its_own_answers_whatever_its_batch_mates(
    model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = model_folder
    api = BatchedClassifier(settings_of(folder), ONE_TEXT, max_batch_size=8, batch_timeout=0.1)
    api.setup("cpu")
    began, cpu_began = time.perf_counter(), time.process_time()
    together = api.predict(REQUESTS)
    alone = [api.predict([request])[0] for request in REQUESTS]
    took, cpu_used = time.perf_counter() - began, time.process_time() - cpu_began
    texts = [text for request in REQUESTS for text in request]
    expected = iter(classify(folder, texts, "fp32"))
    for request, answers, answers_alone in zip(REQUESTS, together, alone, strict=True):
        assert len(answers) == len(request) == len(answers_alone)
        for answer, answer_alone in zip(answers, answers_alone, strict=True):
            e = next(expected)
            assert_same(answer, e)  # padded to its batch-mates' width or not: the same
            assert_same(answer_alone, e)
    worker, *err = capsys.readouterr().err.splitlines()
    assert worker == f"worker: {api.engine.described}"
    assert [line.split(", ")[:2] for line in err] == [
        ["batch: 3 requests", "5 messages"],
        ["batch: 1 requests", "1 messages"],
        ["batch: 1 requests", "3 messages"],
        ["batch: 1 requests", "1 messages"],
    ]
    for line in err:  # the call's seconds (its own time, to 3 places), then the worker's CPU
        wall, cpu = (float(f.split()[0]) for f in line.split(", ")[2:])
        assert 0 <= wall <= took + 0.0005  # a short call may print 0.000
        assert 0 <= cpu <= cpu_used + 0.0005  # in the call: not the process's whole time
    pair = BatchedClassifier(settings_of(folder), ONE_TEXT, max_batch_size=2, batch_timeout=0.1)
    pair.engine = api.engine  # batches of two requests: still a list of answers per request
    paired = pair.predict(REQUESTS[:2])
    assert [len(answers) for answers in paired] == [1, 3]
    for answers, expected in zip(paired, together, strict=False):
        for answer, e in zip(answers, expected, strict=True):
            assert_same(answer, e)
    assert api.unbatch(together) is together and api.batch(REQUESTS) is REQUESTS
    assert api.encode_response(together[1]) == {"predictions": together[1]}
    assert api.decode_request({"inputs": ["a", "b"]}) == ["a", "b"]


def test_without_batching_a_request_is_scored_alone(model_folder: Path) -> None:
    folder = model_folder
    api = BatchedClassifier(settings_of(folder), ONE_TEXT, max_batch_size=1)
    api.setup("cpu")
    answers = api.predict(REQUESTS[1])  # LitServe hands over one request, unbatched
    for answer, e in zip(answers, classify(folder, REQUESTS[1], "fp32"), strict=True):
        assert_same(answer, e)
    assert api.engine.described.startswith("PyTorch fp32 on cpu, ")
    assert isinstance(api.engine, TorchEngine)


def test_the_worker_builds_the_onnx_engine_for_onnx_which_answers_as_classify_without_spinning(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    api = BatchedClassifier(settings_of(folder, onnx=True), ONE_TEXT, max_batch_size=8)
    api.setup("cpu")  # --onnx: the worker builds the ONNX engine
    engine = api.engine
    assert isinstance(engine, OnnxEngine)
    assert capsys.readouterr().err == "worker: onnxruntime, intra-op spinning 0\n"
    assert engine.described == "onnxruntime, intra-op spinning 0"
    options = engine.session.get_session_options()
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    texts = [text for request in REQUESTS for text in request]
    for answer, e in zip(engine.answers(texts), classify(folder, texts, "fp32"), strict=True):
        assert_same(answer, e)
    tighter = OnnxEngine(dataclasses.replace(settings_of(folder, onnx=True), threshold=0.999))
    assert {a["label"] for a in tighter.answers(texts)} == {"ham"}


async def _through(body_chunks: list[bytes], path: str = INVOCATIONS, method: str = "POST"):
    """(status, body) of RefuseBadRequests around an app that answers 200 with the body it
    read, the request's body sent in `body_chunks`."""

    async def app(scope: dict, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(body_chunks) - 1}
        for i, chunk in enumerate(body_chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method}
    await RefuseBadRequests(app, ONE_TEXT)(scope, receive, send)
    if not sent:
        return None, None
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = dict(sent[0].get("headers", []))
    body = sent[1]["body"]
    if sent[0]["status"] != 200:
        assert headers[b"content-type"] == b"application/json"
        assert headers[b"content-length"] == str(len(body)).encode()
    return sent[0]["status"], body


def test_the_middleware_hands_on_good_bodies_whole_and_answers_bad_ones() -> None:
    good = json.dumps({"inputs": ["WIN", "see you"]}).encode()
    assert asyncio.run(_through([good[:7], good[7:]])) == (200, good)  # read whole, replayed
    status, body = asyncio.run(_through([b'{"inputs": [1]}']))
    assert status == 400
    assert json.loads(body) == {
        "error_code": "BAD_REQUEST",
        "message": "message 1 is int: each message must be a string or an object of the "
        "field(s) text (strings)",
    }
    big = [b'{"inputs": ["', b"x" * MAX_BODY, b'"]}']
    status, body = asyncio.run(_through(big))
    assert (status, json.loads(body)["error_code"]) == (413, "REQUEST_TOO_LARGE")
    assert json.loads(body)["message"] == f"request over {MAX_BODY} bytes"
    at_most = json.dumps({"inputs": ["x" * (MAX_BODY - 16)]}).encode()
    assert len(at_most) == MAX_BODY  # read whole; refused for its message's length
    status, body = asyncio.run(_through([at_most]))
    assert (status, json.loads(body)["message"]) == (
        413, f"message 1: {MAX_BODY - 16} characters; at most {MAX_CHARS} a message"
    )  # fmt: skip
    # other paths and methods are LitServe's: handed on unread
    assert asyncio.run(_through([b"not json"], path="/ping")) == (200, b"not json")
    assert asyncio.run(_through([b"not json"], method="GET")) == (200, b"not json")
    assert asyncio.run(_through([])) == (None, None)  # the client went away: nothing sent


def test_sigterm_to_the_server_stops_its_worker_and_http_processes(tmp_path: Path) -> None:
    """kill PID (not its process group) of a server that answers stops every process of it,
    which LitServe leaves running otherwise."""
    folder, port = tiny_model(tmp_path), free_port()
    cmd = [sys.executable, "-c", "from spamgpt.serve.cli import main; main()", "serve"]
    cmd += ["--model", str(folder), "--device", "cpu", "--port", str(port)]
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        while True:  # up: its worker loaded and its HTTP process answering
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            url = f"http://127.0.0.1:{port}/ping"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as got:
                if got.status == 200:
                    break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) is not None
        for _ in range(600):  # its children end as it waits for them; then the group is empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("processes of the server outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_every_request_form_gives_the_texts_and_each_bad_one_its_line() -> None:
    texts = ["WIN a prize", "see you"]
    fields = TextFields(("subject", "body"), "{subject}: {body}")
    for body in [
        {"inputs": texts},
        {"instances": texts},
        {"inputs": {"text": texts}},
        {"dataframe_records": [{"text": t, "id": i} for i, t in enumerate(texts)]},
        {"dataframe_split": {"columns": ["id", "text"], "data": [[0, texts[0]], [1, texts[1]]]}},
    ]:
        assert texts_of(json.dumps(body).encode(), ONE_TEXT) == texts, body
    two = {"inputs": {"subject": ["WIN", "hi"], "body": ["a prize", "there"]}}
    assert texts_of(json.dumps(two).encode(), fields) == ["WIN: a prize", "hi: there"]
    assert records_of_columns({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    for columns in [{}, {"a": [1], "b": [1, 2]}, {"a": [1], "b": 2}, {"a": 1}]:
        assert records_of_columns(columns) is None, columns
    one_of = f"the request must be a JSON object with one of {FORMS}"
    split = "dataframe_split must hold a columns list and a data list"
    row = "dataframe_split: each data row must hold 1 values"
    each = "each message must be a string or an object of the field(s) text (strings)"
    for body, status, line in [
        (b"[1]", 400, one_of),
        (b'{"inputs": [], "instances": []}', 400, one_of),
        (b"\xff", 400, "the request body is not JSON"),
        (b'{"instances": []}', 400, "instances is empty: give at least one message"),
        (b'{"instances": "a"}', 400, "instances must be a list of messages"),
        (b'{"inputs": {"text": ["a"], "x": []}}', 400, "inputs must be a list of messages"),
        (b'{"dataframe_split": []}', 400, split),
        (b'{"dataframe_split": {"columns": ["text"]}}', 400, split),
        (b'{"dataframe_split": {"columns": [1], "data": [[1]]}}', 400,
         "dataframe_split: the columns must be names (strings)"),
        (b'{"dataframe_split": {"data": []}}', 400, split),
        (b'{"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}', 400, row),
        (b'{"dataframe_split": {"columns": ["text"], "data": ["a"]}}', 400, row),
        (b'{"inputs": [null]}', 400, f"message 1 is NoneType: {each}"),
        (b'{"inputs": [{"text": 3}]}', 400, "message 1: field 'text' is int, not a string"),
        (b'{"inputs": ["a", {"x": "b"}]}', 400, "message 2: field 'text' is missing"),
    ]:  # fmt: skip
        with pytest.raises(Refused) as refused_:
            texts_of(body, ONE_TEXT)
        assert (refused_.value.status, str(refused_.value)) == (status, line), body
    with pytest.raises(Refused) as refused_:
        texts_of(b'{"inputs": [1]}', fields)
    assert str(refused_.value) == (
        "message 1 is int: each message must be an object of the field(s) subject, body (strings)"
    )
    long = json.dumps({"inputs": ["x" * MAX_CHARS, "y" * (MAX_CHARS + 1)]}).encode()
    with pytest.raises(Refused) as refused_:
        texts_of(long, ONE_TEXT)
    assert (refused_.value.status, str(refused_.value)) == (
        413, f"message 2: {MAX_CHARS + 1} characters; at most {MAX_CHARS} a message"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("size", "timeout", "error"),
    [(0, 0.01, "--max-batch-size must be at least 1, got 0"),
     (1, -0.5, "--batch-timeout must be >= 0 seconds, got -0.5")],
)  # fmt: skip
def test_bad_batching_settings_are_refused(size: int, timeout: float, error: str) -> None:
    with pytest.raises(SpamGPTError) as refused_:
        serve(Settings("nowhere", "nowhere"), 0, max_batch_size=size, batch_timeout=timeout)
    assert str(refused_.value) == error


def test_no_workers_is_refused() -> None:
    with pytest.raises(SpamGPTError) as refused_:
        serve(Settings("nowhere", "nowhere", workers=0), 0)
    assert str(refused_.value) == "--workers must be at least 1, got 0"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder, without an ONNX export."""
    return tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, dict]]:
    """(server, run's arguments) of each LitServer that serve() builds and runs: its run,
    which would block serving, only recorded (the tests above run it for real), and this
    process's SIGTERM handler and OMP_WAIT_POLICY as they were, after the test."""
    import litserve

    recorded: list[tuple[object, dict]] = []
    monkeypatch.setattr(litserve.LitServer, "run", lambda self, **how: recorded.append((self, how)))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield recorded
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_serve_builds_one_cpu_worker_batching_behind_the_middleware(
    model_folder: Path, runs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spamgpt.serve.serve_batched import _interrupted

    settings = settings_of(model_folder)
    serve(settings, 5123, "127.0.0.2", max_batch_size=3, batch_timeout=0.25)
    ((server, how),) = runs
    assert how == {
        "host": "127.0.0.2", "port": 5123, "generate_client_file": False, "log_level": "warning"
    }  # fmt: skip
    api = server.lit_api
    assert isinstance(api, BatchedClassifier)
    assert (api.settings, api.fields) == (settings, ONE_TEXT)
    assert (api.max_batch_size, api.batch_timeout, api.api_path) == (3, 0.25, INVOCATIONS)
    assert server.healthcheck_path == "/ping"
    assert (RefuseBadRequests, {"fields": ONE_TEXT}) in server.middlewares
    assert (server._connector.accelerator, server.devices) == ("cpu", ["cpu"])
    assert server.workers_per_device == 1
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # read by the worker LitServe starts
    assert signal.getsignal(signal.SIGTERM) is _interrupted
    with pytest.raises(KeyboardInterrupt):
        _interrupted(signal.SIGTERM, None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's own setting wins
    serve(settings, 5124)
    (server, how) = runs[1]
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert (how["host"], how["port"]) == ("127.0.0.1", 5124)
    assert (server.lit_api.max_batch_size, server.lit_api.batch_timeout) == (16, 0.01)
    serve(settings, 5125, max_batch_size=1, batch_timeout=0)  # the least of each: taken
    assert (runs[2][0].lit_api.max_batch_size, runs[2][0].lit_api.batch_timeout) == (1, 0)


def test_serve_takes_the_flags_as_given(
    model_folder: Path, runs: list, capsys: pytest.CaptureFixture
) -> None:
    spamgpt(["serve", "--model", str(model_folder), "--pretrained", "nowhere", "--threshold",
             "0.7", "--device", "cpu", "--precision", "fp32", "--max-tokens", "512", "-p", "5125",
             "--host", "127.0.0.3", "--max-batch-size", "4", "--batch-timeout", "0.5",
             "--workers", "3"], model_folder)  # fmt: skip
    ((server, how),) = runs
    assert server.lit_api.settings == Settings(
        str(model_folder), "nowhere", "cpu", "fp32", 0.7, 512, None, 3
    )
    assert server.workers_per_device == 3
    assert (how["host"], how["port"]) == ("127.0.0.3", 5125)
    assert (server.lit_api.max_batch_size, server.lit_api.batch_timeout) == (4, 0.5)
    with pytest.raises(SystemExit):
        spamgpt(["serve", "--model", str(model_folder), "--threshold", "-0.1"], model_folder)
    assert capsys.readouterr().err.startswith(
        "spamgpt: error: --threshold must be between 0 and 1, got -0.1"
    )
    assert len(runs) == 1
    if not runtime.fp16_allowed(torch.device("cpu")):  # refused before a worker starts
        with pytest.raises(SpamGPTError, match=r"^--precision: fp16 on this CPU would be emu"):
            serve(dataclasses.replace(settings_of(model_folder), precision="fp16"), 5126)
        assert len(runs) == 1


def test_serve_with_onnx_checks_the_graph_and_not_the_pytorch_flags(
    folder: Path, runs: list, tmp_path: Path
) -> None:
    """--device and --precision are PyTorch's: with --onnx, one this machine lacks is not
    looked at; the graph is, before anything starts."""
    graph = folder.parent / "model.onnx"
    spamgpt(["serve", "--model", str(folder), "--onnx", str(graph), "--device", UNAVAILABLE],
            tmp_path)  # fmt: skip
    ((server, _),) = runs
    assert server.lit_api.settings.onnx == str(graph)
    (tmp_path / "text.onnx").write_text("not a graph")
    settings = dataclasses.replace(settings_of(folder, onnx=True), onnx=str(tmp_path / "text.onnx"))
    with pytest.raises(SpamGPTError, match=r"^--onnx .*text.onnx: not a graph onnxruntime loads"):
        serve(settings, 5128)
    assert len(runs) == 1


def test_serve_keeps_its_one_worker_on_the_cpu_on_a_machine_with_gpus(
    model_folder: Path, runs: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LitServe's default accelerator (auto) puts a worker on each GPU `nvidia-smi -L` lists;
    serve's one worker is LitServe's CPU one whatever the machine has (the engine puts the
    model on --device). Two GPUs here: an nvidia-smi of the test's own on PATH lists them."""
    from litserve import connector

    tools = tmp_path / "bin"
    tools.mkdir()
    smi = tools / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: H100 (UUID: GPU-0)'\necho 'GPU 1: H100 (UUID: GPU-1)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    connector.check_cuda_with_nvidia_smi.cache_clear()  # LitServe asks once a process
    try:
        assert connector.check_cuda_with_nvidia_smi() == 2
        serve(settings_of(model_folder), 5133)
    finally:
        connector.check_cuda_with_nvidia_smi.cache_clear()
    ((server, _),) = runs
    assert (server._connector.accelerator, server.devices) == ("cpu", ["cpu"])


def _asleep(ready: object) -> None:
    """A stand-in for LitServe's inference worker: SIGTERM's default action, then asleep."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ready.set()
    time.sleep(60)


def test_serve_stops_its_workers_when_stopped_while_they_start(
    model_folder: Path, runs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM while LitServe waits for its worker (run not yet serving): serve returns,
    and the worker still running is terminated (waited for at most 5 s), the one that ended
    left be."""
    import multiprocessing

    import litserve

    context = multiprocessing.get_context("fork")

    class Worker(context.Process):
        def join(self, timeout: float | None = None) -> None:
            self.waited = timeout
            super().join(timeout)

    ready = context.Event()
    workers = [Worker(target=_asleep, args=(ready,)), Worker(target=int)]

    def starting(server: object, **how: object) -> None:
        server.inference_workers = workers
        for worker in workers:
            worker.start()
        workers[1].join()
        assert ready.wait(30)
        raise KeyboardInterrupt  # what serve's SIGTERM handler raises

    monkeypatch.setattr(litserve.LitServer, "run", starting)
    serve(settings_of(model_folder), 5131)
    assert [worker.exitcode for worker in workers] == [-signal.SIGTERM, 0]
    assert (workers[0].waited, workers[1].waited) == (5, None)  # the second: joined above


def test_serve_refuses_a_threshold_the_models_task_does_not_take(
    tmp_path: Path, runs: list
) -> None:
    three = tiny_model(tmp_path, Classes(("billing", "outage", "sales")))
    with pytest.raises(SpamGPTError) as refused_:
        serve(Settings(str(three), "none", "cpu", "fp32", 0.7), 5132)
    assert str(refused_.value) == (
        "--threshold 0.7: this model decides without a threshold (single labels: billing, "
        "outage, sales; positive class: none): a threshold applies to the positive class of "
        "two classes or to each label of a multi-label model; allowed: leave --threshold out"
    )
    assert runs == []
    serve(Settings(str(three), "none", "cpu", "fp32"), 5132)  # no threshold: served
    assert len(runs) == 1


def light_model(root: Path) -> tuple[Path, Path]:
    """(folder, pretrained root): a model folder holding its head only, as finetune saves a
    model whose base is pretrained, and its base GPT-2 in the pretrained root."""
    hub = make_hub(root / "hub", layers=2, dim=32, heads=4, n_ctx=64, revision="light")
    pretrained = root / "pretrained"
    shutil.copytree(hub, pretrained / "someone" / "light")
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(SMS))
    torch.nn.init.normal_(model.head.weight, std=0.3)
    m = params.load(REPO / "params.yaml").model
    trained = ["head.weight", "head.bias"]
    meta = classifier.classifier_meta(m, SMS, trained, 48, tokenizer.load(hub).eot_token)
    meta.update(repo_id="someone/light", pretrained=True)
    classifier.save(model, root / "light", meta, hub, full=False)
    return root / "light", pretrained


def test_a_light_model_is_served_with_its_base_from_pretrained(
    tmp_path: Path, runs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, pretrained = light_model(tmp_path)
    monkeypatch.chdir(tmp_path)  # no models/pretrained here: --pretrained is read
    serve(Settings(str(folder), str(pretrained), "cpu", "fp32"), 5129)
    assert len(runs) == 1
    engine = TorchEngine(Settings(str(folder), str(pretrained), "cpu", "fp32", THRESHOLD))
    full, _ = classifier.load(folder, pretrained)
    texts = ["WIN a free prize", "see you"]
    probabilities, _ = classifier.classify_texts(full, engine.enc, texts, 48, engine.compute)
    assert engine.answers(texts) == classifier.answers(probabilities, SMS, THRESHOLD)
    export.to_onnx(full, classifier.load(folder, pretrained)[1], tmp_path / "light.onnx")
    onnx = OnnxEngine(Settings(str(folder), str(pretrained), threshold=THRESHOLD,
                               onnx=str(tmp_path / "light.onnx")))  # fmt: skip
    for answer, expected in zip(onnx.answers(texts), engine.answers(texts), strict=True):
        assert_same(answer, expected)


def test_the_engines_take_the_models_threshold_where_none_is_given(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --threshold: evaluate's, from the working directory's reports/evaluation.json; a
    --threshold given: that one, over the model's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluation.json").write_text(json.dumps({"threshold": 0.999}))
    texts = [text for request in REQUESTS for text in request]
    for onnx in (False, True):
        settings = dataclasses.replace(settings_of(folder, onnx), threshold=None)
        engine = OnnxEngine(settings) if onnx else TorchEngine(settings)
        assert engine.threshold == 0.999
        assert {a["label"] for a in engine.answers(texts)} == {"ham"}
        given = OnnxEngine if onnx else TorchEngine
        assert given(dataclasses.replace(settings, threshold=0.25)).threshold == 0.25


def test_the_torch_engine_computes_as_the_flags_say_and_describes_it(
    model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    settings = dataclasses.replace(settings_of(model_folder), max_tokens=512)
    engine = TorchEngine(settings)
    assert engine.compute == runtime.Compute(torch.device("cpu"), "fp32", 512)
    assert engine.described == (
        f"PyTorch fp32 on cpu, {torch.get_num_threads()} threads, OMP_WAIT_POLICY PASSIVE"
    )
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert TorchEngine(settings).described.endswith(" threads, OMP_WAIT_POLICY unset")
    with pytest.raises(SpamGPTError, match=f"^--device: {UNAVAILABLE} is not available on th"):
        TorchEngine(dataclasses.replace(settings, device=UNAVAILABLE))
    # the model moves to the device runtime resolved: torch's meta device, which every
    # machine has, stands in for a GPU (the loader gives the model on the CPU)
    resolved = runtime.setup
    monkeypatch.setattr(
        runtime,
        "setup",
        lambda *args, **kwargs: dataclasses.replace(
            resolved(*args, **kwargs), device=torch.device("meta")
        ),
    )
    assert {p.device.type for p in TorchEngine(settings).model.parameters()} == {"meta"}


def test_the_engines_cut_a_long_message_as_the_model_was_trained(
    folder: Path, tmp_path: Path
) -> None:
    """A head_tail model reads a message over max_length (48 tokens) by its first quarter and
    its end, as classify does: not by its first 48 tokens."""
    head_tail = tmp_path / "head_tail"
    shutil.copytree(folder, head_tail)
    meta = json.loads((head_tail / classifier.CLASSIFIER_JSON).read_text())
    meta.update(truncation="head_tail", head_ratio=0.25)
    (head_tail / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta))
    model, _ = classifier.load(head_tail)
    long = " ".join(WORDS * 8)  # about 90 tokens
    engine = TorchEngine(dataclasses.replace(settings_of(folder), model=str(head_tail)))
    compute = runtime.Compute(torch.device("cpu"), "fp32")
    cut = Truncation("head_tail", 0.25)
    probabilities, truncated = classifier.classify_texts(
        model, engine.enc, [long], 48, compute, cut
    )
    head, _ = classifier.classify_texts(model, engine.enc, [long], 48, compute)
    assert truncated == [True] and not torch.allclose(head, probabilities, atol=1e-3)
    expected = classifier.answers(probabilities, SMS, THRESHOLD)
    assert engine.answers([long]) == expected
    # the graph is the same model's (the cut is made before it)
    onnx = dataclasses.replace(settings_of(folder, onnx=True), model=str(head_tail))
    (answer,) = OnnxEngine(onnx).answers([long])
    assert_same(answer, expected[0])


def test_the_middleware_replays_the_body_once_then_hands_on_the_client() -> None:
    """A body in chunks, one without a body (ASGI's default b""), the last without
    more_body (False): the app gets the same scope, the whole body once, then what the
    client sends next."""
    good = b'{"inputs": ["WIN"]}'
    incoming = [
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": good[:5], "more_body": True},
        {"type": "http.request", "body": good[5:]},
    ]
    got: list = []

    async def app(scope: dict, receive, send) -> None:
        got.extend([scope, await receive(), await receive()])

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        raise AssertionError(f"the middleware answered {message}")

    scope = {"type": "http", "path": INVOCATIONS, "method": "POST"}
    asyncio.run(RefuseBadRequests(app, ONE_TEXT)(scope, receive, send))
    assert got[0] is scope
    assert got[1:] == [
        {"type": "http.request", "body": good, "more_body": False},
        {"type": "http.disconnect"},
    ]
    got.clear()
    other = {"type": "http", "path": "/ping", "method": "GET"}
    asyncio.run(RefuseBadRequests(app, ONE_TEXT)(other, receive, send))
    assert got[0] is other


def test_several_workers_share_the_cores_out(folder: Path, model_folder: Path) -> None:
    """Each of N workers computes on cores / N threads (at least 1), onnxruntime's and
    torch's; one worker leaves onnxruntime its own default (0: the physical cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    one = OnnxEngine(settings_of(folder, onnx=True)).session.get_session_options()
    assert one.intra_op_num_threads == 0
    for workers in (2, 3 * cores):
        share = max(1, cores // workers)
        settings = dataclasses.replace(settings_of(folder, onnx=True), workers=workers)
        onnx = OnnxEngine(settings).session.get_session_options()
        assert onnx.intra_op_num_threads == share
        torch.set_num_threads(cores)
        TorchEngine(dataclasses.replace(settings_of(model_folder), workers=workers))
        assert torch.get_num_threads() == share


def test_the_torch_engine_tells_runtime_how_many_workers_share_the_cores(
    model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime.setup shares the cores out among `processes` (tools/mutate.py's runs have one
    core, where every share is 1: the argument itself is pinned)."""
    calls: list[dict] = []
    setup = runtime.setup
    monkeypatch.setattr(runtime, "setup", lambda *a, **kw: calls.append(kw) or setup(*a, **kw))
    TorchEngine(dataclasses.replace(settings_of(model_folder), workers=3))
    assert calls[0]["processes"] == 3
