"""spamgpt.serve.cli: `spamgpt classify`'s arguments, output formats and one-line errors, run in
this process (the subprocess runs are in test_pipeline.py and test_reliability_inputs.py)."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from spamgpt.data import tokenizer
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.serve import cli

pytestmark = pytest.mark.usefixtures("one_core")  # see conftest: mutmut forks

TEXTS = ["hi", "see you\tat 7"]  # 2 tokens at most, and more than 4


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


def expected(model_dir: Path, threshold: float) -> list[dict]:
    model, meta = classifier.load(model_dir)
    enc = tokenizer.load(model_dir)
    probs, _ = classifier.classify_texts(model, enc, TEXTS, 4, Compute(torch.device("cpu"), "fp32"))
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hi", "--file", "x.txt"], "give messages as arguments or with --file, not both"),
        (["--threshold", "1.5", "hi"], "--threshold must be between 0 and 1, got 1.5"),
        ([], "no messages to classify"),
        (["--file", "/nonexistent/m.txt"], "cannot read /nonexistent/m.txt"),
    ],
)
def test_a_mistake_is_one_line_and_exit_1(capsys, args: list[str], message: str) -> None:
    code, out, err = classify(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith(f"spamgpt: error: {message}") and err.count("\n") == 1


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


def test_every_option_of_every_command_has_help(capsys) -> None:
    """`spamgpt <command> --help` explains each option: none is listed bare."""
    commands = next(
        a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert sorted(commands.choices) == ["classify", "export", "predict", "serve"]
    for name, parser in commands.choices.items():
        bare = [a.dest for a in parser._actions if not a.help]
        assert bare == [], f"spamgpt {name}: options without help: {bare}"
    with pytest.raises(SystemExit):
        cli.main(["classify", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    assert "--precision {auto,fp32,bf16,fp16} the arithmetic it runs in (auto: bf16" in shown


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
