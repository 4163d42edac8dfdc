"""spamgpt.paths: where the pipeline's files are and which repository they belong to; and
that every public function taking a path takes a str as well as a pathlib.Path."""

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO
from fileserver import serve

from spamgpt import atomic, params, paths
from spamgpt.data import download, hub, readers, tensorfile, tokenized, tokenizer
from spamgpt.data.batching import PackedSequences
from spamgpt.finetune import checkpoint
from spamgpt.labels import SMS
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute

PATH_NAMES = {"path", "dest", "model_dir", "folder", "root", "pretrained_root", "finetuned_dir"}
PATH_NAMES |= {"tokenizer_dir", "tokenizer"}


def test_repo_root_is_dvc_root_or_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert paths.repo_root() == tmp_path.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert paths.repo_root() == (tmp_path / "repo").resolve()


def test_repo_root_of_a_dvc_experiment_copy_is_the_repository(tmp_path: Path, monkeypatch) -> None:
    """`dvc exp run --temp` and `--queue` run in <repo>/.dvc/tmp/exps/<name>: their runs and
    downloads belong to <repo>."""
    copy = tmp_path / "repo/.dvc/tmp/exps/tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(copy)
    assert paths.repo_root() == (tmp_path / "repo").resolve()
    monkeypatch.setenv("DVC_ROOT", str(copy / "sub"))
    assert paths.repo_root() == (tmp_path / "repo").resolve()
    monkeypatch.setenv("DVC_ROOT", str(copy.parent))  # the exps folder itself: its last 3 parts
    assert paths.repo_root() == (tmp_path / "repo").resolve()


def test_every_output_is_relative_to_the_repository() -> None:
    """The stages write under the working directory DVC gives them, never elsewhere."""
    named = [v for v in vars(paths).values() if isinstance(v, Path)]
    named += [paths.split_file("val"), paths.tokens_file("test"), paths.trunk_file("train")]
    named += [paths.checkpoint_weights("best"), paths.curve_plot("roc")]
    named += [paths.pretrained_dir("openai-community/gpt2")]
    assert named and all(not p.is_absolute() and ".." not in p.parts for p in named)
    assert paths.pretrained_dir("a/b") == Path("models/pretrained/a/b")
    assert paths.checkpoint_weights("last").parent == paths.CHECKPOINT.parent


def test_each_named_file_is_the_one_dvc_yaml_names() -> None:
    assert paths.raw_split_file("val") == Path("data/raw/dataset/val")
    assert paths.split_file("val") == Path("data/split/val.csv")
    assert paths.split_file("test", "tmp/new") == Path("tmp/new/test.csv")
    assert paths.tokens_file("train") == Path("data/tokens/train.safetensors")
    assert paths.trunk_file("val") == Path("data/trunk/val.safetensors")
    assert paths.checkpoint_weights("best") == Path("models/checkpoints/best.safetensors")
    assert paths.timeline("train") == Path("reports/timelines/train.json")
    assert paths.curve_plot("roc") == Path("metrics/roc_test.csv")


def public_path_parameters() -> list[tuple[str, str, str]]:
    """(file:function, parameter, its annotation) of every public function or method whose
    parameter names a path, or is annotated as one."""
    found = []
    for file in sorted((REPO / "spamgpt").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            for arg in node.args.args + node.args.kwonlyargs:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if arg.arg in PATH_NAMES or "Path" in annotation:
                    found.append(
                        (
                            f"{file.relative_to(REPO / 'spamgpt').as_posix()}:{node.name}",
                            arg.arg,
                            annotation,
                        )
                    )
    return found


def test_every_public_path_parameter_takes_a_str_or_a_path_like() -> None:
    found = public_path_parameters()
    assert len(found) > 20  # the walk sees them
    wrong = [f for f in found if f[2] not in ("str | os.PathLike", "str | os.PathLike | None")]
    assert not wrong, f"public path parameters not typed str | os.PathLike: {wrong}"


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub(str(tmp_path_factory.mktemp("hub")), revision="tiny-test")


def test_public_functions_taking_a_path_take_a_str(tiny_hub: Path, tmp_path: Path) -> None:
    """Called with str paths, as a user's script or notebook would."""
    root = str(tmp_path)
    # params, the tokenizer, the pretrained model and its config
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert params.load(f"{root}/params.yaml").model.repo_id == "openai-community/gpt2"
    enc = tokenizer.load(str(tiny_hub))
    assert enc.decode(enc.encode_ordinary("see you")) == "see you"
    gpt = GPT2.from_pretrained(str(tiny_hub))
    assert GPTConfig.from_json(str(tiny_hub / "config.json")) == gpt.config
    # the hub download, and a local file fetched and hashed
    with serve(tiny_hub.parents[3]) as url:
        files = hub.download_model(url, "openai-community/gpt2", "tiny-test", f"{root}/gpt2")
    weights = f"{root}/gpt2/model.safetensors"
    assert files["model.safetensors"]["sha256"] == download.sha256_file(weights)
    sha = download.fetch([weights], f"{root}/copy.safetensors")
    assert sha == download.sha256_file(f"{root}/copy.safetensors")
    # atomic writes
    atomic.write_json(f"{root}/a.json", {"a": 1})
    atomic.write_text(f"{root}/b.txt", "b")
    with atomic.atomic_open(f"{root}/c.txt", "w") as f:
        f.write("c")
    with atomic.atomic_path(f"{root}/d.bin") as tmp:
        Path(tmp).write_bytes(b"d")
    atomic.remove_leftovers(f"{root}/d.bin")
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 1}
    assert [(tmp_path / n).read_bytes() for n in ("b.txt", "c.txt", "d.bin")] == [b"b", b"c", b"d"]
    # data splits, token files, the trunk cache, raw tensors
    frame = readers.read_messages(
        str(write_raw(tmp_path)), fmt=readers.Format(), labels=SMS.names
    ).frame
    readers.write_split(frame, f"{root}/train.csv")
    assert list(readers.read_split(f"{root}/train.csv")["label"]) == ["ham", "spam"]
    split = tokenized.pack(tokenized.encode_packed(enc, list(frame["text"])), frame, 16, SMS)
    tokenized.save(split, f"{root}/tokens.safetensors")
    assert torch.equal(tokenized.load(f"{root}/tokens.safetensors").labels, split.labels)
    trunk.write(
        f"{root}/trunk.safetensors", gpt, split.tokens, 1, Compute(torch.device("cpu"), "fp32")
    )
    cached = trunk.load(f"{root}/trunk.safetensors")
    assert isinstance(cached, PackedSequences) and len(cached) == 2
    tensorfile.create(f"{root}/t.safetensors", {"x": (torch.float32, (2,))})
    with tensorfile.TensorFile(f"{root}/t.safetensors") as f:
        assert f.read("x").shape == (2,)
    # the classifier's folder, and a checkpoint
    model = GPT2Classifier(gpt)
    meta = {"repo_id": "openai-community/gpt2", "labels": ["ham", "spam"], "positive_label": None}
    meta |= {"pooling": "last", "max_length": 16, "pad_id": enc.eot_token, "trained": []}
    classifier.save(model, f"{root}/finetuned", meta, str(tiny_hub), full=True)
    classifier.save_tensors({"w": torch.ones(1)}, f"{root}/w.safetensors")
    loaded, _ = classifier.load(f"{root}/finetuned", f"{root}/nowhere")
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert checkpoint.load(f"{root}/none.pt", "fingerprint") is None


def write_raw(folder: Path) -> Path:
    path = folder / "raw.tsv"
    path.write_bytes(b"ham\tsee you at 7\nspam\tWIN a prize now\n")
    return path
