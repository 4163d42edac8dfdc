"""Bad inputs at the edges, through the real stage scripts and CLI: values that only the
machine or the model can refuse, broken downloads and an empty data file, an output that
cannot be written, a foreign checkpoint, and `spamgpt classify` fed anything at all.

Every case ends in a defined answer or one error line and its exit code, never a traceback,
and a stage that fails leaves the files it found as they were, with no temporary file.
"""

import errno
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    REPO,
    TINY_REVISION,
    assert_same_answers,
    expected_answers,
    sms_collection,
    subprocess_env,
    tiny_params,
)
from fileserver import Faults, serve

from spamgpt import atomic, contracts, params
from spamgpt.data import readers, tokenizer
from spamgpt.errors import SpamGPTError
from spamgpt.finetune import checkpoint
from spamgpt.labels import SMS
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import hub_dir

PRETRAINED = Path("models/pretrained/openai-community/gpt2")


def zip_of(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("SMSSpamCollection", member)
    return buffer.getvalue()


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> content)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def error_line(stderr: str, prefix: str = "error: ") -> str:
    """The one error line among a process's log lines; there must be no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, stderr
    return errors[0]


# --- stages given what they must refuse --------------------------------------------------

# (name, stage scripts run in turn, params overrides, exit code, start of the error line)
STAGE_CASES = [
    (
        "trainable-blocks-above-layers",
        ["trunk"],
        {"model": {"trainable_blocks": 3}},  # the tiny model has 2 blocks
        2,
        "error: model.trainable_blocks: must be <= the model's 2 blocks or 'all', got 3",
    ),
    (
        "max-length-above-context",
        ["loaders"],
        {"model": {"max_length": 100}},  # its context is 64 tokens
        2,
        "error: model.max_length: must be <= the model's context length 64, got 100",
    ),
    ("html-page", ["download_data"], {}, 1, "error: could not download SMSSpamCollection: "),
    (
        "empty-member",  # verified (its checksum is that of nothing), then refused by split
        ["download_data", "split"],
        {"data": {"sha256": hashlib.sha256(b"").hexdigest()}},
        1,
        "error: empty.zip/SMSSpamCollection: no messages (the file is empty or every line is bad)",
    ),
    # split builds data/split beside the old one and writes metrics/data.json before the swap
    ("output-is-a-directory", ["split"], {}, 1, "error: metrics/data.json: Is a directory"),
    (  # refused before any training, the file and the checkpoint as they were
        "store-is-a-text-file",
        ["finetune"],
        {},
        1,
        "error: {folder}/mlflow.db is not an SQLite database (file is not a database); MLflow's "
        "store there must be one, or no file (a new store is made): move it away, or set "
        "MLFLOW_TRACKING_URI to another store",
    ),
]
if not torch.cuda.is_available():
    STAGE_CASES.append(
        (
            "cuda-on-a-cpu-machine",
            ["finetune"],
            {"train": {"device": "cuda"}},
            2,
            "error: train.device: cuda is not available on this machine",
        )
    )
# A truncated archive and a wrong checksum fail the same way as the HTML page (one
# DownloadError naming the URL and why): test_download.py covers each reason.
DOWNLOADS = {"html-page": "page.zip", "empty-member": "empty.zip"}
REASONS = {"html-page": "/page.zip: not a zip or tar archive: the server sent an HTML page"}


def lay_out(folder: Path, mirror, name: str, overrides: dict, url: str) -> None:
    """A workspace holding what the case's stages read, and outputs of an earlier run that a
    refusing stage must leave alone."""
    p = tiny_params(mirror, **overrides)
    if name in DOWNLOADS:
        p["data"]["url"] = f"{url}/{DOWNLOADS[name]}"
    (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    shutil.copytree(hub_dir(mirror.root, revision=TINY_REVISION), folder / PRETRAINED)
    earlier = {
        "data/trunk/info.json": b'{"frozen_blocks": 1}\n',
        "data/tokens/train.safetensors": b"old tokens",
        "models/checkpoints/checkpoint.pt": b"old checkpoint",
        "metrics/data.json": b'{"old": true}\n',
    }
    if name not in DOWNLOADS:
        earlier["data/raw/dataset"] = sms_collection()
    if name == "store-is-a-text-file":
        earlier["mlflow.db"] = b"runs: none yet\n"
        earlier["metrics/data.json"] = json.dumps(SMS.to_dict()).encode()  # the classes
    if name == "output-is-a-directory":
        del earlier["metrics/data.json"]
        earlier["metrics/data.json/keep"] = b"a folder where split writes a file"
        earlier["data/split/train.csv"] = b"the split of an earlier run"
    for path, content in earlier.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    if name == "max-length-above-context":
        frame = readers.read_messages(
            folder / "data/raw/dataset", fmt=readers.Format(), labels=SMS.names
        ).frame
        for split in ("train", "val", "test"):
            readers.write_split(frame, folder / "data/split" / f"{split}.csv")


@pytest.fixture(scope="module")
def stage_runs(mirror, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Every case's workspace and its stages, started all at once (each run is seconds of
    imports): name -> (workspace, its files before, the process)."""
    site = tmp_path_factory.mktemp("site")
    (site / "empty.zip").write_bytes(zip_of(b""))
    (site / "page.zip").write_bytes(zip_of(sms_collection()))  # answered with an HTML page
    runs = {}
    with serve(site, faults=Faults(paths={"/page.zip"}, html=True)) as url:
        for name, stages, overrides, _, _ in STAGE_CASES:
            folder = tmp_path_factory.mktemp(name)
            lay_out(folder, mirror, name, overrides, url)
            script = " && ".join(f"python {REPO / 'stages' / stage}.py" for stage in stages)
            proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=folder,
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            runs[name] = (folder, listing(folder), proc)
        for _, _, proc in runs.values():  # the downloads need the server until they end
            proc.wait(timeout=300)
    yield runs


@pytest.mark.parametrize(
    ("name", "code", "start"),
    [(c[0], c[3], c[4]) for c in STAGE_CASES],
    ids=[c[0] for c in STAGE_CASES],
)
def test_stage_refuses_in_one_line_and_leaves_files_alone(
    stage_runs: dict, name: str, code: int, start: str
) -> None:
    folder, before, proc = stage_runs[name]
    _, stderr = proc.communicate()
    assert proc.returncode == code, stderr
    line = error_line(stderr)
    assert line.startswith(start.format(folder=folder.resolve())), line
    assert REASONS.get(name, "") in line
    after = listing(folder)
    if name == "empty-member":  # the download did succeed, and wrote its phases' timeline
        assert after.pop("data/raw/dataset") == b""
        assert b'"imports"' in after.pop("reports/timelines/download_data.json")
    assert after == before  # nothing created, changed or removed, no temporary file


# --- writes that fail part-way -----------------------------------------------------------


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    dest = tmp_path / "train.json"
    dest.write_text("old")
    return dest


def test_a_block_failing_mid_write_leaves_the_old_file(old_file: Path) -> None:
    with pytest.raises(RuntimeError), atomic.atomic_open(old_file) as f:
        f.write("half of the new")
        raise RuntimeError("stopped")
    assert old_file.read_text() == "old"
    assert temporaries(old_file.parent) == []


def test_disk_full_during_a_write_names_the_file(old_file: Path) -> None:
    """A failing write() carries no file name: the error must get the destination's."""
    with pytest.raises(OSError) as info, atomic.atomic_open(old_file) as f:
        f.write("half of the new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(old_file)
    assert old_file.read_text() == "old"
    assert temporaries(old_file.parent) == []


@pytest.mark.parametrize("call", ["fsync", "replace"])
def test_failing_sync_or_rename_names_the_file_not_the_temporary(
    old_file: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    def fail(target: object, *args: object) -> None:
        # As the real calls fail: naming the (temporary) file they were given, if a path.
        named = [os.fspath(target)] if isinstance(target, str | os.PathLike) else []
        raise OSError(errno.EIO, os.strerror(errno.EIO), *named)

    monkeypatch.setattr(atomic.os, call, fail)
    with pytest.raises(OSError) as info:
        atomic.write_json(old_file, {"new": True})
    assert info.value.errno == errno.EIO and info.value.filename == str(old_file)
    assert old_file.read_text() == "old"
    monkeypatch.undo()
    assert temporaries(old_file.parent) == []


def test_a_file_where_the_folder_should_be_names_the_destination(tmp_path: Path) -> None:
    (tmp_path / "metrics").write_text("not a folder")
    with pytest.raises(OSError) as info:
        atomic.write_json(tmp_path / "metrics" / "train.json", {})
    assert info.value.filename == str(tmp_path / "metrics" / "train.json")


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    """safetensors writes 0600 files: checkpoints and models unreadable by the group."""
    dest = tmp_path / "best.safetensors"
    classifier.save_tensors({"w": torch.zeros(2)}, dest)
    mask = os.umask(0)
    os.umask(mask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~mask


def test_leftovers_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoint.pt"
    names = [".checkpoint.pt.a1b2.tmp", ".checkpoint.pt.x.tmp", ".other.pt.a1b2.tmp", "keep.tmp"]
    for name in [*names, "checkpoint.pt"]:
        (tmp_path / name).write_text(name)
    removed = atomic.remove_leftovers(dest)
    assert sorted(p.name for p in removed) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.pt.a1b2.tmp",
        "checkpoint.pt",
        "keep.tmp",
    ]


# --- checkpoints that are not what they seem ---------------------------------------------


class Payload:
    """Unpickling this runs `touch <marker>`: the file appearing means the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_in_the_checkpoint_is_refused_unrun(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    if writer == "torch.save":
        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    with pytest.raises(SpamGPTError) as info:
        checkpoint.load(tmp_path / "checkpoint.pt", "fingerprint")
    assert str(info.value) == (
        f"{path}: refused: it holds pickled objects other than tensors, which could run code; "
        f"it is not a spamgpt checkpoint, delete it to start afresh"
    )
    assert not marker.exists()


def test_truncated_checkpoint_is_one_line(tmp_path: Path) -> None:
    torch.save({"state": {"finished": False}, "weights": torch.zeros(1000)}, tmp_path / "x.pt")
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "x.pt").read_bytes()[:500])
    with pytest.raises(SpamGPTError) as info:
        checkpoint.load(tmp_path / "checkpoint.pt", "fingerprint")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'checkpoint.pt'}: cannot load checkpoint (")
    assert message.endswith("delete it to start afresh") and "\n" not in message


# --- spamgpt classify fed anything ------------------------------------------------------

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def model(mirror, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier folder as finetune writes it (an untrained head on the tiny GPT-2: what
    is tested here is input handling, not accuracy), cutting messages at 32 tokens."""
    hub = hub_dir(mirror.root, revision=TINY_REVISION)
    torch.manual_seed(0)
    net = GPT2Classifier(GPT2.from_pretrained(hub))
    model_params = params.parse(tiny_params(mirror)).model
    meta = classifier.classifier_meta(
        model_params, SMS, [], MAX_LENGTH, tokenizer.load(hub).eot_token
    )
    folder = tmp_path_factory.mktemp("classifier") / "finetuned"
    classifier.save(net, folder, meta, hub, full=True)
    return folder


RANDOM_BYTES = random.Random(0).randbytes(4000)
LONG = "WIN " * 5000  # 20 000 characters
CLI_CASES = {
    "odd-messages": (["", "   ", "😀🎉 WIN a prize 中文", LONG], None),
    "random-bytes": (["--json", "--file", "-"], RANDOM_BYTES),
    "empty-stdin": (["--file", "-"], b""),
    "missing-file": (["--file", "/nonexistent/messages.txt"], None),
    "tabs-and-newlines": (["call\tnow\nor\r\nnever \\o/"], None),
}


@pytest.fixture(scope="module")
def cli_runs(model: Path) -> dict[str, subprocess.CompletedProcess]:
    """`spamgpt classify` on each case, all started at once."""
    procs = {
        name: subprocess.Popen(
            ["spamgpt", "classify", "--model", str(model), *args],
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, (args, _) in CLI_CASES.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(CLI_CASES[name][1] or b"", timeout=120)
        results[name] = subprocess.CompletedProcess(
            proc.args, proc.returncode, out.decode(), err.decode()
        )
    return results


def test_classify_answers_empty_blank_emoji_and_huge_messages(cli_runs: dict, model: Path) -> None:
    result = cli_runs["odd-messages"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    texts = CLI_CASES["odd-messages"][0]
    assert len(lines) == 4
    for line, text in zip(lines, texts, strict=True):
        assert line.split("\t", 2)[2].startswith(text)
    labels, probabilities = zip(*(line.split("\t")[:2] for line in lines), strict=True)
    threshold = contracts.read_threshold()  # as the command read it, in this directory
    expected = expected_answers(model, texts, threshold, temperature=contracts.read_temperature())
    assert_same_answers(list(labels), [float(p) for p in probabilities], expected, threshold, 1e-4)
    assert lines[3].endswith(f" [truncated to {MAX_LENGTH} tokens]")
    assert not any("truncated" in line for line in lines[:3])


def test_classify_plain_output_escapes_tabs_and_line_breaks(cli_runs: dict, model: Path) -> None:
    result = cli_runs["tabs-and-newlines"]
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    label, probability, text = line.split("\t")
    assert text == "call\\tnow\\nor\\r\\nnever \\\\o/"
    threshold = contracts.read_threshold()
    expected = expected_answers(
        model,
        CLI_CASES["tabs-and-newlines"][0],
        threshold,
        temperature=contracts.read_temperature(),
    )
    assert_same_answers([label], [float(probability)], expected, threshold, 1e-4)


def test_classify_answers_every_line_of_random_bytes(cli_runs: dict, model: Path) -> None:
    result = cli_runs["random-bytes"]
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    texts = RANDOM_BYTES.decode("utf-8", errors="replace").splitlines()
    assert [a["text"] for a in answers] == texts
    threshold = contracts.read_threshold()
    labels, probabilities = [a["label"] for a in answers], [a["spam_probability"] for a in answers]
    assert_same_answers(
        labels,
        probabilities,
        expected_answers(model, texts, threshold, temperature=contracts.read_temperature()),
        threshold,
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty-stdin", "no messages to classify"),
        ("missing-file", "cannot read /nonexistent/messages.txt: No such file or directory"),
    ],
)
def test_classify_without_messages_is_one_error_line(
    cli_runs: dict, name: str, message: str
) -> None:
    result = cli_runs[name]
    assert result.returncode == 1
    assert result.stdout == ""
    assert error_line(result.stderr, "spamgpt: error: ").startswith(f"spamgpt: error: {message}")
