"""spamgpt.serve.cli: `spamgpt classify`'s arguments, output formats and one-line errors, run in
this process (the subprocess runs are in test_pipeline.py and test_reliability_inputs.py)."""

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from spamgpt import paths
from spamgpt.data import tokenizer
from spamgpt.data.batching import inference_tokens, sorted_order
from spamgpt.errors import SpamGPTError
from spamgpt.evaluate import explain
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.serve import cli
from spamgpt.serve import predict as predicting
from spamgpt.tasks.task import Threshold
from spamgpt.texts import TextFields, Truncation

pytestmark = pytest.mark.usefixtures("one_core", "tqdm_thread_lock")  # conftest: mutmut forks

TEXTS = ["hi", "see you\tat 7"]  # 2 tokens at most, and more than 4
CPU = Compute(torch.device("cpu"), "fp32")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub(tmp_path_factory.mktemp("hub"))


def saved_model(hub: Path, folder: Path, classes: Classes, max_length: int = 4) -> Path:
    """A full model folder of a tiny GPT-2 answering `classes`, its head drawn so that the
    probabilities spread."""
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(classes), "last", classes.label_format)
    torch.nn.init.normal_(model.head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    meta = {"repo_id": "openai-community/gpt2", **classes.to_dict(), "pooling": "last"}
    meta |= {"max_length": max_length, "pad_id": tokenizer.load(hub).eot_token, "trained": []}
    classifier.save(model, folder, meta, hub, full=True)
    return folder


@pytest.fixture(scope="module")
def model_dir(hub: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spam or ham; the positive class is the first."""
    folder = tmp_path_factory.mktemp("model") / "finetuned"
    return saved_model(hub, folder, Classes(("spam", "ham"), "spam"))


@pytest.fixture(scope="module")
def three_classes(hub: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Billing, outage or sales: no positive class, each message its most probable."""
    folder = tmp_path_factory.mktemp("three") / "finetuned"
    return saved_model(hub, folder, Classes(("billing", "outage", "sales")))


def expected(model_dir: Path, threshold: Threshold, texts: list[str] = TEXTS) -> list[dict]:
    """The answers of `texts` at `threshold`, by the library's classify path."""
    model, meta = classifier.load(model_dir)
    enc = tokenizer.load(model_dir)
    probs, _ = classifier.classify_texts(model, enc, texts, 4, CPU)
    return classifier.answers(probs, classifier.classes_of(meta), threshold)


def run_cli(argv: list[str]) -> int:
    """cli.main(argv) in this process; its exit code."""
    try:
        cli.main(argv)
    except SystemExit as e:
        return e.code
    return 0


def classify(capsys, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        cli.main(["classify", "--device", "cpu", "--precision", "fp32", *args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lines_carry_the_answers_rounded_and_the_truncation(model_dir: Path, capsys) -> None:
    code, out, _ = classify(
        capsys, "--model", str(model_dir), "--threshold", "0.4", "--json", *TEXTS
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["text"] for line in lines] == TEXTS
    for line, answer in zip(lines, expected(model_dir, 0.4), strict=True):
        assert line["label"] == answer["label"]
        assert line["spam_probability"] == round(answer["spam_probability"], 6)
        assert line["probabilities"] == {k: round(v, 6) for k, v in answer["probabilities"].items()}
    assert [line["truncated"] for line in lines] == [False, True]


def test_plain_lines_show_the_positive_probability_and_escape_tabs(model_dir: Path, capsys) -> None:
    code, out, _ = classify(capsys, "--model", str(model_dir), "--threshold", "0.4", *TEXTS)
    first, second = (line.split("\t") for line in out.splitlines())
    answers = expected(model_dir, 0.4)
    assert code == 0 and first[:2] == [answers[0]["label"], f"{answers[0]['spam_probability']:.4f}"]
    assert second[2] == "see you\\tat 7 [truncated to 4 tokens]"


def unavailable_device() -> str:
    """A device this machine does not have: cuda on a CPU-only machine, else mps."""
    return "mps" if torch.cuda.is_available() else "cuda"


def test_a_device_the_machine_lacks_is_refused_naming_the_flag(capsys) -> None:
    """`--device cuda` on a machine without it: the error names the flag, not train.device
    (the stages' key, which runtime.setup names by default)."""
    device = unavailable_device()
    code, out, err = classify(capsys, "--device", device, "hi")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(
        f"spamgpt: error: --device: {device} is not available on this machine; allowed here: auto"
    )


def test_a_precision_the_device_lacks_is_refused_naming_the_flag(capsys, monkeypatch) -> None:
    """`--device mps --precision bf16` (an Apple GPU, as torch sees it here): refused before
    anything runs on it, naming --precision, not train.precision."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    code, out, err = classify(capsys, "--device", "mps", "--precision", "bf16", "hi")
    assert (code, out) == (2, "")
    assert (
        err
        == "spamgpt: error: --precision: bf16 is not supported on mps; allowed: auto, fp32, fp16\n"
    )


HELP_IMPORTS = (
    "import sys\n"
    "from spamgpt.serve import cli\n"
    "for command in ('classify', 'predict', 'export', 'serve'):\n"
    "    try:\n"
    "        cli.main([command, '--help'])\n"
    "    except SystemExit:\n"
    "        pass\n"
    "print(sorted({'torch', 'numpy', 'pandas'} & set(sys.modules)))\n"
)


def test_help_imports_neither_torch_nor_numpy() -> None:
    """`spamgpt predict --help` took 5.6 s on a GPU machine: torch's import, to print help. In
    a fresh interpreter, each command's help imports none of torch, numpy and pandas; the
    choices the parser offers are the commands' own."""
    import subprocess
    import sys

    from spamgpt.serve import export, predict

    out = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1] == "[]"
    assert "--max-tokens" in out.stdout and "--output-format" in out.stdout
    assert cli.SCORED_FORMATS == predict.FORMATS and cli.EXPORT_FORMATS == export.FORMATS
    assert (
        cli.EXPORT_QUANTIZATIONS == export.QUANTIZATIONS and cli.EXPORT_MAX_DROP == export.MAX_DROP
    )


NO_THRESHOLD = (
    "spamgpt: error: --threshold 0.7: this model decides without a threshold (single labels: "
    "billing, outage, sales; positive class: none): a threshold applies to the positive class "
    "of two classes or to each label of a multi-label model; allowed: leave --threshold out\n"
)


def test_a_threshold_the_models_task_does_not_take_is_refused_by_classify_and_predict(
    three_classes: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Three classes and no positive one: the task decides by the most probable class, so a
    --threshold would be silently ignored; classify and predict both refuse it in one line
    naming the flag (exit 2), before anything is written."""
    code, out, err = classify(capsys, "--model", str(three_classes), "--threshold", "0.7", "hi")
    assert (code, out, err) == (2, "", NO_THRESHOLD)
    monkeypatch.chdir(tmp_path)
    Path("in.csv").write_text("text\nhi\n")
    code = run_cli(["predict", "in.csv", "-o", "out.csv", "--model", str(three_classes),
                    "--threshold", "0.7", "--device", "cpu"])  # fmt: skip
    assert (code, capsys.readouterr().err) == (2, NO_THRESHOLD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_serve_refuses_it_too_before_its_server_starts(
    three_classes: Path, capsys, monkeypatch
) -> None:
    """serve's --threshold on the same model: the same line, exit 2, and no server started
    (it used to serve the model, the flag silently ignored)."""
    import litserve

    monkeypatch.setattr(litserve.LitServer, "run", lambda *a, **k: pytest.fail("it served"))
    code = run_cli(["serve", "--model", str(three_classes), "--threshold", "0.7"])
    assert (code, capsys.readouterr().err) == (2, NO_THRESHOLD)


def test_number_labels_take_no_threshold_either(hub: Path, tmp_path: Path, capsys) -> None:
    model = saved_model(hub, tmp_path / "finetuned", Classes(("score",), None, "number"))
    code, out, err = classify(capsys, "--model", str(model), "--threshold", "0.5", "hi")
    assert (code, out) == (2, "") and err == (
        "spamgpt: error: --threshold 0.5: this model decides without a threshold (number "
        "labels: score; positive class: none): a threshold applies to the positive class of two "
        "classes or to each label of a multi-label model; allowed: leave --threshold out\n"
    )


@pytest.fixture(scope="module")
def multi_label(hub: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Billing, outage and sales as independent labels."""
    folder = tmp_path_factory.mktemp("multi") / "finetuned"
    return saved_model(hub, folder, Classes(("billing", "outage", "sales"), None, "multi"))


@pytest.fixture(scope="module")
def two_fields(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_dir reading a subject and a body, joined by a template."""
    folder = tmp_path_factory.mktemp("fields") / "finetuned"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / classifier.CLASSIFIER_JSON).read_text())
    meta |= {"text_columns": ["subject", "body"], "text_template": "Subject: {subject}\n{body}"}
    (folder / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta))
    return folder


WIN = "WIN a prize now"  # spam probability 0.22 in model_dir: spam at 0.1, ham at 0.5
WIN_SHOWN = f"{WIN} [truncated to 4 tokens]"  # as plain output shows it: 5 tokens


def binary_lines(answers: list[dict], texts: list[str]) -> str:
    """classify's plain output of spam-or-ham answers: label, spam probability, text."""
    return "".join(
        f"{a['label']}\t{a['spam_probability']:.4f}\t{t}\n"
        for a, t in zip(answers, texts, strict=True)
    )


def test_plain_lines_answer_at_the_evaluated_threshold_unless_the_flag_gives_one(
    model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """No --threshold: the one evaluate chose (reports/evaluation.json), 0.5 before any
    evaluation; --threshold overrides it."""
    monkeypatch.chdir(tmp_path)
    texts = [WIN, "hi"]
    at_half, at_tenth = expected(model_dir, 0.5, texts), expected(model_dir, 0.1, texts)
    assert [a["label"] for a in at_half] == ["ham", "ham"]
    assert [a["label"] for a in at_tenth] == ["spam", "ham"]
    assert classify(capsys, "--model", str(model_dir), *texts) == (
        0, binary_lines(at_half, [WIN_SHOWN, "hi"]), ""
    )  # fmt: skip
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluation.json").write_text('{"threshold": 0.1}')
    assert classify(capsys, "--model", str(model_dir), *texts) == (
        0, binary_lines(at_tenth, [WIN_SHOWN, "hi"]), ""
    )  # fmt: skip
    assert classify(capsys, "--model", str(model_dir), "--threshold", "0.5", *texts) == (
        0, binary_lines(at_half, [WIN_SHOWN, "hi"]), ""
    )  # fmt: skip


def test_plain_lines_escape_what_would_split_them_and_note_the_cut(model_dir: Path, capsys) -> None:
    message = "a\\b\tc\nd\re"  # a backslash, a tab, a line break, a carriage return
    code, out, _ = classify(capsys, "--model", str(model_dir), message, "hi")
    first, second = out.splitlines()
    assert code == 0 and len(out.splitlines()) == 2
    assert first.split("\t", 2)[2] == "a\\\\b\\tc\\nd\\re [truncated to 4 tokens]"
    assert second.endswith("\thi") and second.count("\t") == 2


def test_json_lines_are_the_answers_to_six_decimals_text_as_given(model_dir: Path, capsys):
    texts = ["café ☕", WIN, "hi"]  # not ASCII, written as it is
    code, out, _ = classify(capsys, "--model", str(model_dir), "--threshold", "0.1", "--json",
                            *texts)  # fmt: skip
    lines = []
    for answer, text, cut in zip(
        expected(model_dir, 0.1, texts), texts, [True, True, False], strict=True
    ):
        record = {
            "label": answer["label"],
            "probability": round(answer["probability"], 6),
            "probabilities": {k: round(v, 6) for k, v in answer["probabilities"].items()},
            "spam_probability": round(answer["spam_probability"], 6),
            "truncated": cut,
            "text": text,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    assert list(expected(model_dir, 0.1, texts)[0]) == list(record)[:4]  # the answer's order
    assert (code, out) == (0, "".join(line + "\n" for line in lines))
    assert [json.loads(line)["label"] for line in lines] == ["spam", "spam", "ham"]


def test_a_model_of_three_classes_shows_the_labels_probability(three_classes: Path, capsys):
    texts = ["hi", WIN]
    code, out, _ = classify(capsys, "--model", str(three_classes), *texts)
    answers = expected(three_classes, None, texts)
    shown = zip(answers, ["hi", WIN_SHOWN], strict=True)
    assert code == 0 and out == "".join(
        f"{a['label']}\t{a['probability']:.4f}\t{t}\n" for a, t in shown
    )


def test_a_multi_label_model_shows_every_labels_probability_at_the_flags_threshold(
    multi_label: Path, capsys
) -> None:
    """--threshold applies to each label: 0.3 gives "hi" two labels, 0.999 none."""
    for threshold, given in (("0.3", "billing|outage"), ("0.999", "(none)")):
        code, out, err = classify(capsys, "--model", str(multi_label), "--threshold", threshold,
                                  "hi")  # fmt: skip
        (answer,) = expected(multi_label, float(threshold), ["hi"])
        shown = " ".join(f"{k}={v:.4f}" for k, v in answer["probabilities"].items())
        assert (code, out, err) == (0, f"{given}\t{shown}\thi\n", "")


def test_messages_come_one_a_line_from_a_file_or_stdin_bytes_not_utf8_replaced(
    model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    raw = b"hi\r\nWIN a prize now\n\xff ok\n"
    messages = ["hi", WIN, "\ufffd ok"]
    (tmp_path / "m.txt").write_bytes(raw)
    code, out, _ = classify(capsys, "--model", str(model_dir), "--json", "--file",
                            str(tmp_path / "m.txt"))  # fmt: skip
    assert code == 0 and [json.loads(line)["text"] for line in out.splitlines()] == messages
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code, out, _ = classify(capsys, "--model", str(model_dir), "--json", "--file", "-")
    assert code == 0 and [json.loads(line)["text"] for line in out.splitlines()] == messages


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["hi", "--file", "x.txt"], "give messages as arguments or with --file, not both"),
        (["--file", "/no/m.txt"], "cannot read /no/m.txt: No such file or directory"),
        (["--threshold", "1.5", "hi"], "--threshold must be between 0 and 1, got 1.5"),
        ([], "no messages to classify: pass text arguments or --file PATH (- for stdin)"),
        (["--threshold", "0", "hi"], "--threshold must be between 0 and 1, got 0.0"),
    ],
)
def test_a_mistake_is_this_one_line_and_exit_1(capsys, args: list[str], line: str) -> None:
    assert classify(capsys, *args) == (1, "", f"spamgpt: error: {line}\n")


def test_an_empty_file_has_no_messages(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.txt").write_bytes(b"")
    code, out, err = classify(capsys, "--file", str(tmp_path / "m.txt"))
    assert (code, out) == (1, "") and err.startswith("spamgpt: error: no messages to classify")


def test_messages_of_several_fields_are_json_objects_joined_by_the_template(
    two_fields: Path, model_dir: Path, capsys
) -> None:
    message = '{"subject": "WIN", "body": "a prize"}'
    code, out, _ = classify(capsys, "--model", str(two_fields), "--threshold", "0.1", message)
    (answer,) = expected(model_dir, 0.1, ["Subject: WIN\na prize"])
    assert (code, out) == (0, binary_lines([answer], [f"{message} [truncated to 4 tokens]"]))
    code, out, err = classify(capsys, "--model", str(two_fields), message, "WIN")
    assert (code, out) == (1, "")
    assert err == (
        "spamgpt: error: message 2: the model reads the fields subject, body: give each "
        "message as a JSON object of them (field 'subject' is missing or not text)\n"
    )


def test_joined_fields_of_one_field_and_of_several() -> None:
    one = TextFields(("text",), "Message: {text}")
    assert cli.joined_fields(["hi", "a b"], one) == ["Message: hi", "Message: a b"]
    two = TextFields(("subject", "body"), "{subject} / {body}")
    good = ['{"subject": "a", "body": "b"}', '{"body": "d", "subject": "c", "x": 1}']
    assert cli.joined_fields(good, two) == ["a / b", "c / d"]
    for bad, field in (('["subject"]', "subject"), ('{"subject": "a", "body": 3}', "body"),
                       ('{"subject": "a"', "subject")):  # fmt: skip
        with pytest.raises(SpamGPTError) as caught:
            cli.joined_fields([good[0], bad], two)
        assert str(caught.value) == (
            f"message 2: the model reads the fields subject, body: give each message as a "
            f"JSON object of them (field {field!r} is missing or not text)"
        )


def test_explain_marks_the_strongest_tokens_or_gives_every_tokens_attribution(
    model_dir: Path, capsys
) -> None:
    texts = [WIN, "hi"]
    answers = expected(model_dir, 0.1, texts)
    model, meta = classifier.load(model_dir)
    why = explain.explain_answers(
        model, tokenizer.load(model_dir), texts, answers, classifier.classes_of(meta), meta
    )
    args = ["--model", str(model_dir), "--threshold", "0.1", "--explain", *texts]
    code, out, _ = classify(capsys, *args)
    marked = [w.marked() for w in why]
    assert "[[" in marked[0] and code == 0
    assert out == binary_lines(answers, [f"{marked[0]} [truncated to 4 tokens]", marked[1]])
    code, out, _ = classify(capsys, *args, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["explanation"] for r in records] == [w.to_dict() for w in why]
    assert [r["text"] for r in records] == texts and [r["label"] for r in records] == [
        "spam", "ham"
    ]  # fmt: skip


def run_predict(capsys, *args: str) -> tuple[int, str]:
    code = run_cli(["predict", "--device", "cpu", "--precision", "fp32", *args])
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


def test_predict_scores_a_file_saying_how_many_rows_at_the_evaluated_threshold(
    model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Formats from the flags where the names do not say them; the threshold evaluate chose
    unless --threshold gives one; --keep, --text-column and --explain-top as given: the file
    predict_file writes with them."""
    monkeypatch.chdir(tmp_path)
    Path("in.dat").write_text(f"id,message\n1,{WIN}\n2,hi\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluation.json").write_text('{"threshold": 0.1}')
    args = ["in.dat", "-o", "out.dat", "--model", str(model_dir), "--format", "csv",
            "--output-format", "jsonl", "--text-column", "message", "--keep", "id"]  # fmt: skip
    scorer = predicting.load_scorer(str(model_dir), model_dir, CPU, 0.1)
    for flags, threshold, top in (
        ([], 0.1, None),
        (["--threshold", "0.5", "--explain-top", "2"], 0.5, 2),
    ):
        assert run_predict(capsys, *args, *flags) == (0, "out.dat: 2 rows\n")
        scorer.threshold = threshold
        predicting.predict_file("in.dat", "want.jsonl", scorer, "csv", "jsonl", ["message"],
                                ["id"], explain_top=top)  # fmt: skip
        assert Path("out.dat").read_text() == Path("want.jsonl").read_text()
    rows = [json.loads(line) for line in Path("out.dat").read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in rows] == [("1", "ham"), ("2", "ham")]
    assert "top_tokens" in rows[0]
    assert run_predict(capsys, *args) == (0, "out.dat: 2 rows\n")
    assert [json.loads(line)["label"] for line in Path("out.dat").read_text().splitlines()] == [
        "spam", "ham"
    ]  # fmt: skip


def test_predict_counts_the_bad_rows_it_skips(model_dir: Path, tmp_path: Path, capsys) -> None:
    source, dest = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text('id,text\n1,hello there\n2,\n3,"a",extra\n')
    args = [str(source), "-o", str(dest), "--model", str(model_dir), "--bad-lines", "skip"]
    assert run_predict(capsys, *args) == (
        0, f"{dest}: 1 rows; 2 bad rows skipped (empty_text 1, wrong_fields 1)\n"
    )  # fmt: skip


def test_predict_refuses_a_device_the_machine_lacks_naming_the_flag(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "in.csv").write_text("text\nhi\n")
    device = unavailable_device()
    code, err = run_predict(capsys, str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"),
                            "--model", str(model_dir), "--device", device)  # fmt: skip
    assert code == 2 and err.startswith(
        f"spamgpt: error: --device: {device} is not available on this machine; allowed here: auto"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


MODEL = str(paths.FINETUNED_DIR)
RUNTIME = {"device": "auto", "precision": "auto", "max_tokens": None}


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (
            ["classify"],
            {"command": "classify", "messages": [], "file": None, "json": False,
             "explain": False, "model": MODEL, "pretrained": paths.PRETRAINED_DIR,
             "threshold": None, **RUNTIME},
        ),
        (
            ["classify", "a", "b", "--file", "f", "--json", "--explain", "--model", "m",
             "--pretrained", "p", "--threshold", "0.3", "--device", "cpu", "--precision",
             "bf16", "--max-tokens", "7"],
            {"command": "classify", "messages": ["a", "b"], "file": "f", "json": True,
             "explain": True, "model": "m", "pretrained": Path("p"), "threshold": 0.3,
             "device": "cpu", "precision": "bf16", "max_tokens": 7},
        ),
        (
            ["predict", "in.csv", "-o", "out.csv"],
            {"command": "predict", "input": "in.csv", "output": "out.csv", "format": None,
             "output_format": None, "text_column": None, "keep": [], "bad_lines": "error",
             "model": MODEL, "pretrained": paths.PRETRAINED_DIR, "threshold": None,
             **RUNTIME, "explain_top": None, "run": cli.predict},
        ),
        (
            ["predict", "in", "--output", "out", "--format", "tsv", "--output-format",
             "parquet", "--text-column", "a", "b", "--keep", "x", "y", "--bad-lines", "skip",
             "--threshold", "0.25", "--max-tokens", "64", "--explain-top", "3"],
            {"command": "predict", "input": "in", "output": "out", "format": "tsv",
             "output_format": "parquet", "text_column": ["a", "b"], "keep": ["x", "y"],
             "bad_lines": "skip", "model": MODEL, "pretrained": paths.PRETRAINED_DIR,
             "threshold": 0.25, "device": "auto", "precision": "auto", "max_tokens": 64,
             "explain_top": 3, "run": cli.predict},
        ),
        (
            ["export", "d", "--to", "onnx"],
            {"command": "export", "dest": Path("d"), "to": "onnx", "quantize": None,
             "max_drop": 0.005, "model": MODEL, "pretrained": paths.PRETRAINED_DIR,
             "run": cli.export_command},
        ),
        (
            ["export", "m.onnx", "--to", "onnx", "--quantize", "int8", "--max-drop", "0.02"],
            {"command": "export", "dest": Path("m.onnx"), "to": "onnx", "quantize": "int8",
             "max_drop": 0.02, "model": MODEL, "pretrained": paths.PRETRAINED_DIR,
             "run": cli.export_command},
        ),
        (
            ["serve"],
            {"command": "serve", "model": MODEL, "pretrained": paths.PRETRAINED_DIR,
             "port": 5001, "host": "127.0.0.1", "max_batch_size": 16, "batch_timeout": 0.01,
             "workers": 1, "onnx": None, "threshold": None, **RUNTIME, "run": cli.serve},
        ),
        (
            ["serve", "-p", "8000", "--host", "0.0.0.0", "--max-batch-size", "4",
             "--batch-timeout", "0.5", "--onnx", "m.onnx", "--threshold", "0.2",
             "--max-tokens", "9", "--workers", "2"],
            {"command": "serve", "model": MODEL, "pretrained": paths.PRETRAINED_DIR,
             "port": 8000, "host": "0.0.0.0", "max_batch_size": 4, "batch_timeout": 0.5,
             "workers": 2,
             "onnx": Path("m.onnx"), "threshold": 0.2, "device": "auto", "precision": "auto",
             "max_tokens": 9, "run": cli.serve},
        ),
    ],
)  # fmt: skip
def test_each_commands_arguments_and_defaults(argv: list[str], parsed: dict) -> None:
    """classify has no `run`: main runs it by default."""
    assert vars(cli.build_parser().parse_args(argv)) == parsed


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        ([], "the following arguments are required: command"),
        (["predict", "in.csv"], "the following arguments are required: --output/-o"),
        (["export", "d"], "the following arguments are required: --to"),
        (["export", "d", "--to", "tflite"], "argument --to: invalid choice: 'tflite' (choose "
         "from 'transformers', 'onnx')"),
        (["classify", "--max-tokens", "0"], "argument --max-tokens: must be a positive "
         "integer, got 0"),
        (["predict", "i", "-o", "o", "--explain-top", "-1"], "argument --explain-top: must be "
         "a positive integer, got -1"),
        (["serve", "--max-batch-size", "x"], "argument --max-batch-size: invalid positive_int "
         "value: 'x'"),
        (["serve", "--workers", "0"], "argument --workers: must be a positive integer, got 0"),
        (["classify", "--device", "tpu"], "argument --device: invalid choice: 'tpu' (choose "
         "from 'auto', 'cpu', 'cuda', 'mps')"),
        (["predict", "i", "-o", "o", "--bad-lines", "drop"], "argument --bad-lines: invalid "
         "choice: 'drop' (choose from 'error', 'skip')"),
        (["predict", "i", "-o", "o", "--format", "xls"], "argument --format: invalid choice: "
         "'xls' (choose from 'csv', 'tsv', 'jsonl', 'parquet')"),
        (["predict", "i", "-o", "o", "--output-format", "x"], "argument --output-format: "
         "invalid choice: 'x' (choose from 'csv', 'tsv', 'jsonl', 'parquet')"),
        (["export", "d", "--to", "onnx", "--quantize", "int4"], "argument --quantize: invalid "
         "choice: 'int4' (choose from 'int8')"),
        (["serve", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8' (choose "
         "from 'auto', 'fp32', 'bf16', 'fp16')"),
    ],
)  # fmt: skip
def test_a_refused_argument_is_argparses_line_and_exit_2(capsys, argv, line) -> None:
    assert run_cli(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {line}")


MODEL_HELP = (
    "a fine-tuned model folder, an MLflow model folder, or a logged MLflow model "
    "(runs:/<run_id>/model, models:/<name>/<version>)"
)
THRESHOLD_HELP = (
    "on the positive class's probability of two classes, or each label's of a multi-label "
    "model; a model of other classes takes none (default: the model's, evaluate's)"
)
RUNTIME_HELP = {
    "--device": "where the model runs (auto: CUDA, then MPS, then the CPU)",
    "--precision": "the arithmetic it runs in (auto: bf16 where the device computes it "
    "natively, else fp16 on CUDA, else fp32)",
}
HELP = {
    "classify": {
        "messages": "messages to classify",
        "--file": "read one message per line from this file (- for stdin)",
        "--json": "print one JSON object per message",
        "--explain": "each token's attribution to the label (integrated gradients): the text "
        "with its strongest tokens [[marked]]; with --json, every token's (docs/explain.md)",
        "--model": MODEL_HELP,
        "--pretrained": "base models folder",
        "--threshold": THRESHOLD_HELP,
        **RUNTIME_HELP,
        "--max-tokens": "padded tokens per batch (memory vs speed; default: 1024 on a CPU, "
        "32768 on a GPU)",
    },
    "predict": {
        "input": "the file to score (.csv, .tsv, .jsonl, .parquet)",
        "--output/-o": "the file to write (same formats)",
        "--format": "the input's format (default: extension)",
        "--output-format": "the output's (default: extension)",
        "--text-column": "the text column(s) (default: the model's fields)",
        "--keep": "columns copied to the output",
        "--bad-lines": "a row that does not parse: stop there (error) or leave it out and "
        "count it (skip)",
        "--model": MODEL_HELP,
        "--pretrained": "base models folder",
        "--threshold": THRESHOLD_HELP,
        **RUNTIME_HELP,
        "--max-tokens": "padded tokens per batch",
        "--explain-top": "add `top_tokens`: each row's K tokens most for its label "
        "(integrated gradients; slow: docs/explain.md)",
    },
    "export": {
        "dest": "the folder (transformers) or the .onnx file to write",
        "--to": "what to write",
        "--quantize": "onnx: int8 weights (ONNX Runtime), written only if the test figure holds",
        "--max-drop": "--quantize: the most the selected test metric may drop (default: "
        "%(default)s)",
        "--model": MODEL_HELP,
        "--pretrained": "base models folder",
    },
    "serve": {
        "--model": MODEL_HELP,
        "--pretrained": "base models folder",
        "--port/-p": "the port to listen on",
        "--host": "the address to listen on",
        "--max-batch-size": "requests a batch",
        "--workers": "worker processes, each scoring its own batches on its share of the cores",
        "--batch-timeout": "seconds a batch waits to fill",
        "--onnx": "score with onnxruntime on this ONNX export of --model (spamgpt export --to "
        "onnx [--quantize int8]; int8: the fast path on a CPU) instead of PyTorch; --device, "
        "--precision and --max-tokens are PyTorch's",
        "--threshold": cli.THRESHOLD_HELP,
        **RUNTIME_HELP,
        "--max-tokens": "padded tokens per batch",
    },
}
COMMANDS_HELP = {
    "classify": "label messages with the fine-tuned classes",
    "predict": "score every row of a CSV, TSV, JSON Lines or Parquet file",
    "export": "write the fine-tuned model for transformers or ONNX Runtime",
    "serve": "serve the model over HTTP, batching across requests (LitServe)",
}


def test_each_option_says_this_in_help(capsys, monkeypatch) -> None:
    """What `spamgpt COMMAND --help` says of each option and command, word for word."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {a.dest: a.help for a in commands._choices_actions} == COMMANDS_HELP
    for name, command in commands.choices.items():
        said = {"/".join(a.option_strings) or a.dest: a.help for a in command._actions}
        assert said == {"-h/--help": "show this help message and exit", **HELP[name]}, name
    monkeypatch.setenv("COLUMNS", "200")
    assert parser.format_help().startswith(
        "usage: spamgpt [-h] {classify,predict,export,serve} ...\n\n"
        "GPT-2 fine-tuned as a text classifier\n"
    )
    shown = {}
    for name in COMMANDS_HELP:
        assert run_cli([name, "--help"]) == 0
        shown[name] = capsys.readouterr().out
    assert "(default: 0.005)" in shown["export"]
    assert "--explain-top K " in shown["predict"] and "--onnx FILE " in shown["serve"]


def test_rounded_keeps_six_decimals_of_each_probability() -> None:
    answer = {"label": "a", "probability": 0.12345678, "truncated": True, "n": 3,
              "probabilities": {"a": 0.1234566, "b": 0.87654349}}  # fmt: skip
    assert cli._rounded(answer) == {
        "label": "a", "probability": 0.123457, "truncated": True, "n": 3,
        "probabilities": {"a": 0.123457, "b": 0.876543},
    }  # fmt: skip


def test_positive_int() -> None:
    assert cli.positive_int("1") == 1 and cli.positive_int("12") == 12
    for text in ("0", "-3"):
        with pytest.raises(argparse.ArgumentTypeError) as caught:
            cli.positive_int(text)
        assert str(caught.value) == f"must be a positive integer, got {int(text)}"
    with pytest.raises(ValueError):
        cli.positive_int("1.5")


def test_a_closed_pipe_ends_quietly(model_dir: Path, monkeypatch, capsys) -> None:
    """`spamgpt classify ... | head`: the reader gone, exit 0 without a traceback."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert run_cli(["classify", "--model", str(model_dir), "--device", "cpu", "hi"]) == 0
    assert capsys.readouterr().err == ""


def test_export_and_serve_run_their_commands(capsys) -> None:
    """`spamgpt export` and `spamgpt serve` hand their arguments to their modules' commands,
    whose first checks answer here."""
    assert run_cli(["export", "d", "--to", "transformers", "--quantize", "int8"]) == 1
    assert capsys.readouterr().err == "spamgpt: error: --quantize int8: only with --to onnx\n"
    assert run_cli(["serve", "--threshold", "1.5"]) == 1
    assert (
        capsys.readouterr().err == "spamgpt: error: --threshold must be between 0 and 1, got 1.5\n"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["in.txt", "-o", "out.csv"], "in.txt: cannot tell the format from its extension; name "
         "the file .csv, .tsv, .jsonl, .parquet, or pass --format csv | tsv | jsonl | parquet"),
        (["in.csv", "-o", "out.txt"], "out.txt: cannot tell the format from its extension; "
         "name the file .csv, .tsv, .jsonl, .parquet, or pass --output-format csv | tsv | "
         "jsonl | parquet"),
        (["in.csv", "-o", "out.csv", "--threshold", "1.5"], "--threshold must be between 0 "
         "and 1, got 1.5"),
    ],
)  # fmt: skip
def test_predicts_mistakes_name_their_flags(capsys, args: list[str], line: str) -> None:
    assert run_predict(capsys, *args) == (1, f"spamgpt: error: {line}\n")


def test_predict_refuses_a_precision_the_device_lacks_naming_the_flag(capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    code = run_cli(["predict", "in.csv", "-o", "out.csv", "--device", "mps", "--precision",
                    "bf16"])  # fmt: skip
    assert (code, capsys.readouterr().err) == (
        2, "spamgpt: error: --precision: bf16 is not supported on mps; allowed: auto, fp32, fp16\n"
    )  # fmt: skip


def test_max_tokens_is_each_batchs_budget(model_dir: Path, tmp_path: Path, capsys, monkeypatch):
    """--max-tokens reaches the batching (batching.sorted_order's budget), in classify and
    predict; the answers are the same."""
    budgets = []

    def recorded(lengths, max_tokens, full_last=False):
        budgets.append(max_tokens)
        return sorted_order(lengths, max_tokens, full_last)

    monkeypatch.setattr(classifier, "sorted_order", recorded)
    code, out, _ = classify(capsys, "--model", str(model_dir), "--max-tokens", "8", *TEXTS)
    assert (code, out) == classify(capsys, "--model", str(model_dir), *TEXTS)[:2]
    assert budgets == [8, inference_tokens(CPU.device)]  # without it: the device's
    (tmp_path / "in.csv").write_text("text\nhi\n")
    args = [str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(model_dir)]
    assert run_predict(capsys, *args, "--max-tokens", "16")[0] == 0 and budgets[2:] == [16]


def test_classify_reads_a_light_model_on_pretrained_and_its_truncation(
    model_dir: Path, hub: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A folder of the head alone takes its base weights from --pretrained/<repo_id>; a
    model keeping the tail of long messages (classifier.json's truncation) reads the tail."""
    monkeypatch.chdir(tmp_path)  # no models/pretrained here
    meta = json.loads((model_dir / classifier.CLASSIFIER_JSON).read_text())
    shutil.copytree(hub, tmp_path / "pretrained" / meta["repo_id"])
    model, _ = classifier.load(model_dir)
    meta |= {"trained": ["head.weight", "head.bias"], "truncation": "tail"}
    classifier.save(model, tmp_path / "light", meta, hub, full=False)
    texts = [WIN, "hi"]
    code, out, _ = classify(capsys, "--model", "light", "--pretrained", "pretrained", "--json",
                            *texts)  # fmt: skip
    probs, _ = classifier.classify_texts(model, tokenizer.load(hub), texts, 4, CPU,
                                         Truncation("tail"))  # fmt: skip
    head, _ = classifier.classify_texts(model, tokenizer.load(hub), texts, 4, CPU)
    got = [json.loads(line)["probabilities"]["spam"] for line in out.splitlines()]
    assert code == 0 and got == pytest.approx(probs[:, 0].tolist(), abs=1e-6)
    assert abs(head[0, 0] - probs[0, 0]) > 1e-3  # the head's answer differs
