"""`spamgpt serve`, the batching server (LitServe), run for real on 127.0.0.1 with a tiny model
(and with --onnx, on its ONNX export): concurrent requests answered as `spamgpt classify`
answers, scored in batches of several requests, and bad requests refused with a 4xx without
harming the server."""

import json
import shutil
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import http_service, post, spamgpt, subprocess_env

from spamgpt import params
from spamgpt.data import tokenizer
from spamgpt.errors import SpamGPTError
from spamgpt.labels import SMS
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.serve import export
from spamgpt.serve.serve_batched import MAX_CHARS, Refused, check_onnx, texts_of
from spamgpt.texts import ONE_TEXT, TextFields

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.6
UNAVAILABLE = "mps" if torch.cuda.is_available() else "cuda"  # a device this machine lacks
WORDS = ["free", "prize", "call", "now", "see", "you", "at", "the", "station", "win", "txt"]


def tiny_model(root: Path) -> Path:
    """A self-contained fine-tuned folder of random tiny weights, the head drawn so that
    probabilities spread over (0, 1)."""
    hub = make_hub(root / "hub", layers=2, dim=32, heads=4, n_ctx=64, revision="serve")
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(SMS))
    torch.nn.init.normal_(model.head.weight, std=0.3)
    m = params.load(REPO / "params.yaml").model
    meta = classifier.classifier_meta(m, SMS, [], 48, tokenizer.load(hub).eot_token)
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


def test_concurrent_requests_are_batched_and_answered_as_classify_does(served) -> None:
    url, folder, log = served
    messages = [" ".join(WORDS[i % 11 : i % 11 + 1 + i % 7]) for i in range(32)]
    messages[5] = ""  # an empty message is a message
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda m: post(f"{url}/invocations", {"inputs": [m]}), messages))
    expected = classify(folder, messages)
    for answer, e in zip(answers, expected, strict=True):
        (prediction,) = answer["predictions"]
        assert_same(prediction, e)
    assert {e["label"] for e in expected} == {"spam", "ham"}  # the threshold matters
    sizes = [int(line.split()[1]) for line in log.read_text().splitlines()
             if line.startswith("batch: ")]  # fmt: skip
    assert sum(sizes) >= 32 and max(sizes) > 1  # several requests scored in one call


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
    sizes = [int(line.split()[1]) for line in log.read_text().splitlines()
             if line.startswith("batch: ")]  # fmt: skip
    assert max(sizes) > 1


def test_an_onnx_file_that_is_not_the_models_export_is_refused(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path)
    model, meta = classifier.load(folder)
    export.to_onnx(model.eval(), meta, tmp_path / "model.onnx")
    check_onnx(str(tmp_path / "model.onnx"), meta)  # its own export: taken
    other = {**meta, "max_length": meta["max_length"] + 1}
    with pytest.raises(SpamGPTError, match=r"is not an export of --model: its max_length is 48"):
        check_onnx(str(tmp_path / "model.onnx"), other)
    with pytest.raises(SpamGPTError, match=r"--onnx .*nothing.onnx: no such file"):
        check_onnx(str(tmp_path / "nothing.onnx"), meta)
    (tmp_path / "text.onnx").write_text("not a graph")
    with pytest.raises(SpamGPTError, match=r"--onnx .*text.onnx: not a graph onnxruntime loads"):
        check_onnx(str(tmp_path / "text.onnx"), meta)
