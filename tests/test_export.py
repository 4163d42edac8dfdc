"""spamgpt.serve.export: the transformers folder and the ONNX graph give the class probabilities of
spamgpt's own prediction path (classifier.classify_texts), for every kind of fine-tuned folder;
the real transformers, tokenizers and onnxruntime load them, on a tiny random GPT-2."""

import contextlib
import copy
import io
import json
import logging
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    REPO,
    STAGES,
    evaluated_temperature,
    restored_tracking_uri,
    subprocess_env,
    tiny_params,
)
from fileserver import Faults, serve
from mlflow.tracking import MlflowClient

from spamgpt import contracts, paths, tracking
from spamgpt import params as params_module
from spamgpt.contracts import Tokenization
from spamgpt.data import hub, tokenized, tokenizer
from spamgpt.data.batching import ModelInputs, PackedSequences
from spamgpt.data.tokenized import TokenizedSplit
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.params import LoraParams, ModelParams
from spamgpt.random_hub import hub_dir, make_hub
from spamgpt.runtime import Compute
from spamgpt.serve import cli, export
from spamgpt.tasks.registry import task_for
from spamgpt.texts import ONE_TEXT, TextFields, Truncation

REPO_ID = "someone/gpt2-six"
MAX_LENGTH = 24
CPU = torch.device("cpu")
FP32_CPU = Compute(CPU, "fp32")
CLASSES = Classes(("ham", "spam", "promo"), "spam")  # three: the fold solves a 3 x d system
TEXTS = [
    "WINNER!! You have won a £900 prize! Call 09061701461 to claim now",
    "see you at 7",
    "ok",
    "tabs\tand\nnew lines, ünïcödé and emoji 🎉 too",
    "a long message that goes on and on " * 6,  # cut to MAX_LENGTH tokens, as spamgpt cuts it
]
MODES = {  # every fine-tune transformers' class can hold: last-token pooling
    "blocks": {"trainable_blocks": 2},
    "lora": {"finetune": "lora", "trainable_blocks": 1},  # adapters merged into the weights
    "random-base-all": {"pretrained": False, "trainable_blocks": "all"},
}


def model_params(**overrides) -> ModelParams:
    """params.yaml's model section for REPO_ID, with these values."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"].update(repo_id=REPO_ID, revision="tiny", **overrides)
    return params_module.parse(raw).model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-block GPT-2 (distilgpt2's depth, width 32) in models/pretrained/<REPO_ID>."""
    root = tmp_path_factory.mktemp("export")
    hub = make_hub(root / "hub", layers=6, dim=32, heads=4, n_ctx=64, revision="tiny", seed=3)
    shutil.copytree(hub, root / paths.pretrained_dir(REPO_ID))
    return root


def finetuned(workspace: Path, name: str, fields: TextFields = ONE_TEXT, **overrides) -> Path:
    """models/finetuned as finetune writes it (classifier.export: adapters merged, only the
    trained tensors where the base is pretrained), with every trained tensor drawn at random
    so that a tensor exported wrongly changes the probabilities."""
    m = model_params(**overrides)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        model, trained = classifier.for_training(
            m, LoraParams(4, 8.0, ["c_attn", "mlp.c_fc"]), CLASSES, CPU, seed=1
        )
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name_, p in model.named_parameters():
                if name_ in trained:
                    p.add_(torch.randn(p.shape, generator=g) * (0.5 if "head" in name_ else 0.05))
        assert model.head.bias.abs().min() > 0  # there is a bias to fold
        dest = workspace / "finetuned" / name
        pad = tokenizer.load(paths.pretrained_dir(REPO_ID)).eot_token
        state = {n: p.detach().clone() for n, p in model.named_parameters()}
        tokenization = Tokenization(MAX_LENGTH, pad)
        classifier.export(model, state, trained, m, CLASSES, tokenization, dest, fields)
    return dest


def reference(workspace: Path, folder: Path) -> tuple[GPT2Classifier, dict, np.ndarray]:
    """The folder loaded as spamgpt loads it, and spamgpt's probabilities of TEXTS."""
    model, meta = classifier.load(folder, workspace / paths.PRETRAINED_DIR)
    enc = tokenizer.load(folder)
    probs, _ = classifier.classify_texts(model, enc, TEXTS, meta["max_length"], FP32_CPU)
    return model, meta, probs.numpy()


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_transformers_gives_spamgpts_probabilities(
    workspace: Path, tmp_path: Path, mode: str
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    folder = finetuned(workspace, mode, **MODES[mode])
    model, meta, expected = reference(workspace, folder)
    export.to_transformers(model, meta, folder, tmp_path / "hf")

    hf = GPT2ForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    got = hf(**batch).logits.softmax(-1).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert hf.config.id2label == dict(enumerate(CLASSES.names))
    assert hf.config.problem_type == "single_label_classification"
    # The same ids from the tokenizers library alone (tokenizer.json), as servers read it.
    enc = tokenizer.load(folder)
    fast = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    assert [e.ids for e in fast.encode_batch(TEXTS)] == enc.encode_ordinary_batch(TEXTS)


def test_the_transformers_pipeline_answers_with_spamgpts_probabilities(
    workspace: Path, tmp_path: Path
) -> None:
    from transformers import pipeline

    folder = finetuned(workspace, "pipeline", trainable_blocks=1)
    *_, expected = reference(workspace, folder)
    pretrained = str(workspace / paths.PRETRAINED_DIR)
    cli.main(["export", "--to", "transformers", str(tmp_path / "hf"), "--model", str(folder),
              "--pretrained", pretrained])  # fmt: skip
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    answers = classify(TEXTS, top_k=None, truncation=True, batch_size=2)
    for row, answer in zip(expected, answers, strict=True):
        got = {a["label"]: a["score"] for a in answer}
        assert got == pytest.approx(dict(zip(CLASSES.names, row, strict=True)), abs=1e-4)


def test_the_head_bias_folds_into_ln_f_exactly(workspace: Path) -> None:
    model, _ = classifier.load(finetuned(workspace, "fold"), workspace / paths.PRETRAINED_DIR)
    weight, beta = export.folded_head(model)
    h = torch.randn(7, 32, dtype=torch.float64)
    ours = model.head(model.gpt.ln_f(h.float())).double()
    ln = torch.nn.functional.layer_norm(
        h, (32,), model.gpt.ln_f.weight.double(), beta.double(), model.gpt.ln_f.eps
    )
    torch.testing.assert_close(ln @ weight.double().T, ours, rtol=0, atol=1e-5)


def test_a_head_whose_bias_cannot_be_folded_is_refused(workspace: Path) -> None:
    model, _ = classifier.load(finetuned(workspace, "dep"), workspace / paths.PRETRAINED_DIR)
    with torch.no_grad():
        model.head.weight[2] = model.head.weight[0] * 2  # rows dependent, biases not
        model.head.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(SpamGPTError, match=r"^head\.weight's rows are linearly dependent"):
        export.folded_head(model)


def test_mean_pooling_is_refused_naming_the_parameter(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = finetuned(workspace, "mean", pooling="mean")
    pretrained = str(workspace / paths.PRETRAINED_DIR)
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--to", "transformers", str(tmp_path / "hf"), "--model", str(folder),
                  "--pretrained", pretrained])  # fmt: skip
    assert info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("spamgpt: error: model.pooling is 'mean': transformers'")
    assert error.count("\n") == 1
    assert not (tmp_path / "hf").exists()


@torch.no_grad()
def test_onnx_runtime_gives_spamgpts_probabilities_on_any_batch_and_length(
    workspace: Path, tmp_path: Path
) -> None:
    """Mean pooling, which transformers cannot hold; batch and length unlike the example."""
    import onnxruntime

    folder = finetuned(workspace, "onnx", pooling="mean")
    model, meta, expected = reference(workspace, folder)
    export.to_onnx(model, meta, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    ids_in, lengths_in = session.get_inputs()
    assert (ids_in.name, lengths_in.name) == export.ONNX_INPUTS
    assert all(isinstance(d, str) for d in ids_in.shape)  # both axes dynamic
    enc = tokenizer.load(folder)
    rows = [row[:MAX_LENGTH] for row in enc.encode_ordinary_batch(TEXTS)]
    ids = np.full((len(rows), max(map(len, rows))), meta["pad_id"], dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    (got,) = session.run(None, {"input_ids": ids, "lengths": lengths})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    one_row = {"input_ids": ids[1:2, : lengths[1]], "lengths": lengths[1:2]}  # no padding
    (one,) = session.run(None, one_row)
    np.testing.assert_allclose(one, expected[1:2], rtol=0, atol=1e-4)


def test_the_exported_config_names_the_classes_and_the_pad_token(
    workspace: Path, tmp_path: Path
) -> None:
    folder = finetuned(workspace, "config")
    model, meta = classifier.load(folder, workspace / paths.PRETRAINED_DIR)
    export.to_transformers(model, meta, folder, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["label2id"] == {"ham": 0, "spam": 1, "promo": 2}
    assert config["pad_token_id"] == meta["pad_id"] == config["vocab_size"] - 1
    assert config["n_layer"] == 6
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert files == {
        "config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json",
    }  # fmt: skip


# Several text fields and head_tail: what both exports record, and docs/huggingface.md's
# recipes, run as they are written there, against spamgpt's own texts, ids and probabilities.

DOCS = REPO / "docs" / "huggingface.md"
FIELDS = TextFields(("name", "description"))  # joined by a blank line
TEMPLATED = TextFields(("name", "description"), "{name}: {description}")
ROWS = [
    {"name": "prize-bot", "description": "WIN a FREE prize now, txt WIN to 80086"},
    {"name": "a long name " * 3, "description": "that goes on and on, " * 8 + "and ends here"},
    {"name": "ünïcödé 🎉", "description": "see you at 7"},
]


def docs_recipe(containing: str, **replaced: str) -> str:
    """The ```python block of docs/huggingface.md that contains `containing`, with its
    example paths and rows replaced (`rows = [...]` by `rows = ROWS`)."""
    parts = DOCS.read_text(encoding="utf-8").split("```python\n")[1:]
    (block,) = [b for b in (p.split("```")[0] for p in parts) if containing in b]
    block = re.sub(r"^rows = \[.*$", "rows = ROWS", block, flags=re.MULTILINE)
    for old, new in replaced.items():
        assert old in block
        block = block.replace(old, new)
    return block


def run_recipes(*recipes: str) -> dict:
    """docs/huggingface.md's text_of and cut_ids, then `recipes`, in one namespace."""
    namespace = {"ROWS": ROWS}
    for source in (docs_recipe("def cut_ids"), *recipes):
        exec(compile(source, str(DOCS), "exec"), namespace)
    return namespace


def spamgpts_answers(workspace: Path, folder: Path) -> np.ndarray:
    """spamgpt's probabilities of ROWS (its fields joined, its ids cut as the model says)."""
    model, meta = classifier.load(folder, workspace / paths.PRETRAINED_DIR)
    texts = [TextFields.from_dict(meta).join(row) for row in ROWS]
    probs, truncated = classifier.classify_texts(
        model, tokenizer.load(folder), texts, meta["max_length"], FP32_CPU,
        truncation=Truncation.from_dict(meta),
    )  # fmt: skip
    assert truncated[1] and not truncated[0]  # the long row is cut
    return probs.numpy()


def test_the_documented_cut_and_join_are_spamgpts(workspace: Path) -> None:
    recipes = run_recipes()
    cut_ids, text_of = recipes["cut_ids"], recipes["text_of"]
    ids = list(range(100, 160))
    for side, ratio in [("head", 0.25), ("tail", 0.25), ("head_tail", 0.25), ("head_tail", 0.5),
                        ("head_tail", 0.3), ("head_tail", 0.0), ("head_tail", 1.0)]:  # fmt: skip
        rule = Truncation(side, ratio)
        for length in (0, 1, 7, 23, 24, 25, 31, 60):
            for max_length in (1, 7, 24):
                recorded = {"max_length": max_length, **rule.to_dict()}
                assert cut_ids(ids[:length], recorded) == rule.keep(ids[:length], max_length)
    for fields in (FIELDS, TEMPLATED, TextFields(("name",))):
        assert [text_of(row, fields.to_dict()) for row in ROWS] == list(map(fields.join, ROWS))


@torch.no_grad()
def test_a_head_tail_model_of_several_fields_exports_to_transformers_with_its_cut(
    workspace: Path, tmp_path: Path
) -> None:
    folder = finetuned(workspace, "head_tail", FIELDS, truncation="head_tail", head_ratio=0.3)
    expected = spamgpts_answers(workspace, folder)
    pretrained = str(workspace / paths.PRETRAINED_DIR)
    cli.main(["export", "--to", "transformers", str(tmp_path / "hf"), "--model", str(folder),
              "--pretrained", pretrained])  # fmt: skip
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config[export.RECORDED] == {
        "text_columns": ["name", "description"], "text_template": None, "max_length": MAX_LENGTH,
        "truncation": "head_tail", "head_ratio": 0.3, "labels": list(CLASSES.names),
    }  # fmt: skip
    recipe = docs_recipe("GPT2ForSequenceClassification.from_pretrained", **{
        '"exported/"': repr(str(tmp_path / "hf"))})  # fmt: skip
    got = run_recipes(recipe)["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_the_documented_pipeline_joins_the_recorded_fields_by_the_template(
    workspace: Path, tmp_path: Path
) -> None:
    folder = finetuned(workspace, "templated", TEMPLATED)
    expected = spamgpts_answers(workspace, folder)
    pretrained = str(workspace / paths.PRETRAINED_DIR)
    cli.main(["export", "--to", "transformers", str(tmp_path / "hf"), "--model", str(folder),
              "--pretrained", pretrained])  # fmt: skip
    recipe = docs_recipe("answers = classify(", **{'"exported/"': repr(str(tmp_path / "hf"))})
    answers = run_recipes(recipe)["answers"]
    for row, answer in zip(expected, answers, strict=True):
        got = {a["label"]: a["score"] for a in answer}
        assert got == pytest.approx(dict(zip(CLASSES.names, row, strict=True)), abs=1e-4)


def test_the_documented_onnx_recipe_needs_no_transformers_export(
    workspace: Path, tmp_path: Path
) -> None:
    """A head_tail model of several fields: the graph's metadata, the model folder's
    vocabulary and the documented lines give spamgpt's probabilities."""
    folder = finetuned(workspace, "onnx_head_tail", FIELDS, truncation="head_tail")
    expected = spamgpts_answers(workspace, folder)
    pretrained = str(workspace / paths.PRETRAINED_DIR)
    cli.main(["export", "--to", "onnx", str(tmp_path / "model.onnx"), "--model", str(folder),
              "--pretrained", pretrained])  # fmt: skip
    recipe = docs_recipe("onnxruntime.InferenceSession", **{
        '"model.onnx"': repr(str(tmp_path / "model.onnx")),
        '"models/finetuned/vocab.json"': repr(str(folder / "vocab.json")),
        '"models/finetuned/merges.txt"': repr(str(folder / "merges.txt")),
    })  # fmt: skip
    recipes = run_recipes(recipe)
    assert recipes["recorded"]["truncation"] == "head_tail"
    assert recipes["recorded"]["text_columns"] == ["name", "description"]
    np.testing.assert_allclose(recipes["probabilities"], expected, rtol=0, atol=1e-4)


def test_the_onnx_export_prints_no_warning(workspace: Path, tmp_path: Path) -> None:
    """torch's exporter, run as a user runs it: nothing on stderr, warnings shown."""
    folder = finetuned(workspace, "quiet")
    dest = tmp_path / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "from spamgpt.serve.cli import main; main()",
         "export", "--to", "onnx", str(dest), "--model", str(folder),
         "--pretrained", str(workspace / paths.PRETRAINED_DIR)],
        capture_output=True, text=True, env={**subprocess_env(), "PYTHONPATH": str(REPO)},
        check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{dest}: onnx export of {folder}\n"


# End to end: a 6-block GPT-2 from the "Hugging Face hub" (HF_ENDPOINT, with HF_TOKEN) and
# its cache, through every stage with mlflow.export: [transformers, onnx] (each stage's main()
# in this process, as tests/test_recipes.py runs them: DVC itself adds nothing here), then
# `spamgpt export --model runs:/`.

SIX = "distilbert/distilgpt2"
TOKEN = "hf_e2eSECRETtoken0123456789"
MESSAGES = ["WINNER!! claim your £900 prize, call 09061701461", "see you at 7", "ok then"]


@dataclass
class Pipeline:
    path: Path
    run_id: str
    requests: list  # what the hub was asked, with its headers
    output: str  # the stages' logs (DEBUG and up), stdout and stderr
    hub_url: str
    cached: Path  # the model's folder in the Hugging Face cache


def fill_cache(cache: Path, hub_files: Path, names: tuple[str, ...]) -> Path:
    """`names` in the Hugging Face cache as huggingface_hub lays them out: refs/tiny-six
    names a commit whose snapshot links into blobs/. Returns the model's cache folder."""
    repo = cache / f"models--{SIX.replace('/', '--')}"
    for name in names:
        blob = repo / "blobs" / name.replace(".", "-")
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hub_files / name, blob)
        link = repo / "snapshots" / "c0ffee" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "tiny-six").write_text("c0ffee")
    return repo


@pytest.fixture(scope="module")
def pipeline(
    mirror, empty_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("six-hub")
    make_hub(root, layers=6, dim=32, heads=4, n_ctx=64, repo_id=SIX, revision="tiny-six")
    cached = fill_cache(
        tmp_path_factory.mktemp("hf-cache"),
        hub_dir(root, SIX, "tiny-six"),
        ("vocab.json", "merges.txt"),
    )
    params = tiny_params(
        mirror,
        model={"hub_url": hub.DEFAULT_HUB_URL, "repo_id": SIX, "revision": "tiny-six"},
        train={"epochs": 1},
        mlflow={"export": ["transformers", "onnx"], "serve": "onnx-int8"},
    )
    path = tmp_path_factory.mktemp("six")
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(empty_store, path / "mlflow.db")
    faults, output = Faults(), io.StringIO()
    log = logging.StreamHandler(output)
    with (
        serve(root, faults=faults) as url,
        restored_tracking_uri(),
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(output),
        contextlib.redirect_stderr(output),
    ):
        patch.chdir(path)
        patch.setenv("DVC_ROOT", str(path))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, value in [(hub.ENDPOINT_ENV, url), (hub.TOKEN_ENV, TOKEN),
                            ("HF_HUB_CACHE", str(cached.parent))]:  # fmt: skip
            patch.setenv(name, value)
        patch.delenv(hub.OFFLINE_ENV, raising=False)
        patch.setattr(logging.getLogger(), "level", logging.DEBUG)
        logging.getLogger().addHandler(log)
        try:
            loaded = params_module.load()
            for stage in STAGES:
                runpy.run_path(str(REPO / "stages" / f"{stage}.py"))["main"](loaded)
        finally:
            logging.getLogger().removeHandler(log)
    run_id = json.loads((path / paths.MLFLOW_RUN).read_text())["run_id"]
    yield Pipeline(path, run_id, faults.requests, output.getvalue(), url, cached)


def spamgpt_probabilities(path: Path) -> np.ndarray:
    """What spamgpt's own prediction path says of MESSAGES, with the project's model and the
    temperature evaluate fitted (the exports' heads have it folded in)."""
    model, meta = classifier.load(
        path / paths.FINETUNED_DIR, path / paths.PRETRAINED_DIR, evaluated_temperature(path)
    )
    enc = tokenizer.load(path / paths.FINETUNED_DIR)
    probs, _ = classifier.classify_texts(model, enc, MESSAGES, meta["max_length"], FP32_CPU)
    return probs.numpy()


def test_six_blocks_come_from_hf_endpoint_with_the_token_which_is_recorded_nowhere(
    pipeline: Pipeline,
) -> None:
    asked = sorted(r.path.rsplit("/", 1)[1] for r in pipeline.requests)
    assert asked == ["config.json", "model.safetensors"]  # the rest is in the cache
    assert {r.headers.get("Authorization") for r in pipeline.requests} == {f"Bearer {TOKEN}"}
    weights = json.loads((pipeline.path / paths.WEIGHTS_METRICS).read_text())
    assert weights["hub_url"] == pipeline.hub_url and weights["repo_id"] == SIX
    assert json.loads((pipeline.path / "data/trunk/info.json").read_text())["frozen_blocks"] == 5
    assert "vocab.json: taken from the Hugging Face cache" in pipeline.output  # logs were read
    assert TOKEN not in pipeline.output
    # Every file of the project: metrics, the MLflow store (params, tags) and its artifacts.
    holding = [
        p for p in pipeline.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()
    ]
    assert holding == []
    for name in ("vocab.json", "merges.txt"):  # the cache's copies, as they were
        blob = pipeline.cached / "blobs" / name.replace(".", "-")
        assert blob.read_bytes() == (pipeline.path / paths.FINETUNED_DIR / name).read_bytes()
    params = MlflowClient(f"sqlite:///{pipeline.path / 'mlflow.db'}").get_run(pipeline.run_id)
    assert all(
        TOKEN not in str(v) for v in [*params.data.params.values(), *params.data.tags.values()]
    )


@torch.no_grad()
def test_the_logged_exports_answer_as_spamgpt_does(pipeline: Pipeline, tmp_path: Path) -> None:
    import onnxruntime
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    expected = spamgpt_probabilities(pipeline.path)
    store = MlflowClient(f"sqlite:///{pipeline.path / 'mlflow.db'}")
    folder = Path(store.download_artifacts(pipeline.run_id, "transformers", str(tmp_path)))
    hf = GPT2ForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.n_layer == 6
    tok = AutoTokenizer.from_pretrained(folder)
    batch = tok(MESSAGES, padding=True, truncation=True, return_tensors="pt")
    got = hf(**batch).logits.softmax(-1).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)

    onnx_file = store.download_artifacts(pipeline.run_id, "onnx/model.onnx", str(tmp_path))
    session = onnxruntime.InferenceSession(onnx_file)
    ids = batch["input_ids"].numpy()
    lengths = batch["attention_mask"].sum(1).numpy()
    (got,) = session.run(None, {"input_ids": ids, "lengths": lengths})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_the_logged_model_serves_the_gated_int8_graph(pipeline: Pipeline) -> None:
    """mlflow.serve: onnx-int8: evaluate logs the model with the int8 graph that passed the
    gate on the test split, and the gate's figures; the model answers as spamgpt does."""
    import mlflow
    import onnx

    uri = f"sqlite:///{pipeline.path / 'mlflow.db'}"
    gate = MlflowClient(uri).download_artifacts(pipeline.run_id, "export/served_onnx_int8.json")
    gate = json.loads(Path(gate).read_text())
    assert gate["drop"] <= export.MAX_DROP and gate["messages"] > 0
    with restored_tracking_uri(), pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline.path)
        mlflow.set_tracking_uri(uri)
        loaded = mlflow.pyfunc.load_model(f"runs:/{pipeline.run_id}/model")
        answers = loaded.predict(MESSAGES)
        local = mlflow.artifacts.download_artifacts(f"runs:/{pipeline.run_id}/model")
    assert loaded.unwrap_python_model().session is not None  # onnxruntime scores
    (graph,) = Path(local).rglob("*.onnx")
    assert "MatMulIntegerToFloat" in {node.op_type for node in onnx.load(str(graph)).graph.node}
    got = np.array([list(a.probabilities.values()) for a in answers])
    np.testing.assert_allclose(got, spamgpt_probabilities(pipeline.path), rtol=0, atol=0.03)


def test_export_from_an_mlflow_model_uri(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runs:/<id>/model, the light model evaluate logged: its base from the workspace."""
    uri = f"sqlite:///{pipeline.path / 'mlflow.db'}"
    monkeypatch.chdir(pipeline.path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with restored_tracking_uri():
        cli.main(["export", "--to", "transformers", str(tmp_path / "hf"), "--model",
                  f"runs:/{pipeline.run_id}/model"])  # fmt: skip
        logged = MlflowClient(uri).download_artifacts(
            pipeline.run_id, "transformers/model.safetensors", str(tmp_path)
        )
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == Path(logged).read_bytes()


# --quantize int8 and its accuracy gate, on the tiny pipeline's model, test tokens and
# evaluation (conftest.reproduced, copied), with an MLflow store whose run is the model's.


@pytest.fixture(scope="module")
def gated(reproduced, empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = reproduced.copy(tmp_path_factory.mktemp("gate") / "project")
    shutil.copy(empty_store, path / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch, restored_tracking_uri():
        patch.chdir(path)
        patch.setenv("DVC_ROOT", str(path))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.connect()
        run = MlflowClient().create_run(tracking.experiment_id("gate"))
        contracts.write_mlflow_run(run.info.run_id)
    return path


def export_int8(project: Path, *args: str) -> None:
    with pytest.MonkeyPatch.context() as patch, restored_tracking_uri():
        patch.chdir(project)
        patch.setenv("DVC_ROOT", str(project))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cli.main(["export", "--to", "onnx", "--quantize", "int8", *args])


def test_the_int8_export_passes_the_gate_and_reports_beside_pytorch(gated: Path) -> None:
    import onnx

    dest = gated / "exports" / "int8.onnx"
    export_int8(gated, str(dest))
    graph = onnx.load(str(dest))
    assert "MatMulIntegerToFloat" in {node.op_type for node in graph.graph.node}  # int8 weights
    report = json.loads((gated / paths.EXPORT_ONNX_INT8_REPORT).read_text())
    evaluated = json.loads((gated / paths.EVAL_METRICS).read_text())
    assert report["metric"] == "spam_f1" and report["max_drop"] == export.MAX_DROP
    # The PyTorch figure is evaluate's own, on the same ids at the same threshold.
    assert report["pytorch_fp32"]["spam_f1"] == pytest.approx(evaluated["spam"]["f1"], abs=1e-9)
    assert report["threshold"] == evaluated["threshold"]
    assert report["pytorch_fp32"]["report"]["accuracy"] == evaluated["accuracy"]
    assert report["drop"] <= export.MAX_DROP
    drop = report["pytorch_fp32"]["spam_f1"] - report["onnx_int8"]["spam_f1"]
    assert report["drop"] == pytest.approx(drop)
    run_id = json.loads((gated / paths.MLFLOW_RUN).read_text())["run_id"]
    logged = MlflowClient(f"sqlite:///{gated / 'mlflow.db'}").get_run(run_id).data.metrics
    assert logged["export/onnx_int8/test_spam_f1"] == report["onnx_int8"]["spam_f1"]
    assert logged["export/pytorch_fp32/test_spam_f1"] == report["pytorch_fp32"]["spam_f1"]


def test_nodes_of_modules_reads_the_exporters_name_scopes() -> None:
    """A node is a module's when that module's path is one of its recorded scopes, at any
    depth; a node without scopes, or in a module whose name only starts like it, is not."""
    import onnx
    from onnx import helper

    def node(name: str, scopes: list[str] | None) -> onnx.NodeProto:
        made = helper.make_node("Identity", ["x"], [name], name=name)
        if scopes is not None:
            made.metadata_props.add(key=export.NAME_SCOPES, value=repr(["", "model", *scopes]))
        return made

    nodes = [
        node("qkv", ["model.gpt.h.0", "model.gpt.h.0.attn", "model.gpt.h.0.attn.c_attn", "x"]),
        node("bias", ["model.gpt.h.0", "model.gpt.h.0.attn", "model.gpt.h.0.attn.c_proj"]),
        node("sdpa", ["model.gpt.h.0", "model.gpt.h.0.attn", "scaled_dot_product_attention"]),
        node("block10", ["model.gpt.h.10", "model.gpt.h.10.attn", "model.gpt.h.10.attn.c_attn"]),
        node("head", ["model.head", "linear_9"]),
        node("unscoped", None),
        node("other_key", None),
    ]
    nodes[-1].metadata_props.add(key="namespace", value=repr(["model.head"]))
    graph = helper.make_model(helper.make_graph(nodes, "g", [], []))
    attn = ("gpt.h.0.attn.c_attn", "gpt.h.0.attn.c_proj")
    assert export.nodes_of_modules(graph, attn) == ["qkv", "bias"]
    assert export.nodes_of_modules(graph, ("gpt.h.0.attn",)) == ["qkv", "bias", "sdpa"]
    assert export.nodes_of_modules(graph, ("head", "gpt.h.1")) == ["head"]
    assert export.nodes_of_modules(graph, ()) == []
    assert attn == export.FLOAT_MODULES


def test_int8_keeps_exactly_the_first_blocks_attention_projections_in_float(
    workspace: Path, tmp_path: Path
) -> None:
    """The float32 MatMuls left with a weight are the ones holding block 0's c_attn and
    c_proj weights, and no other; every other block but the last (Gemm, left by dynamic
    quantization) has its four projections in int8, one scale per output channel."""
    import onnx
    import onnxruntime

    folder = finetuned(workspace, "float-nodes", trainable_blocks="all")
    model, meta, expected = reference(workspace, folder)
    export.to_onnx(model, meta, tmp_path / "fp32.onnx")
    how = export.quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    graph = onnx.load(str(tmp_path / "int8.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    float_matmuls = {
        n.name: weights[n.input[1]]
        for n in graph.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights
    }
    attn = model.gpt.h[0].attn
    kept = [attn.c_attn.weight.detach().T.numpy(), attn.c_proj.weight.detach().T.numpy()]
    assert len(float_matmuls) == 2 and set(float_matmuls) <= set(how["float_nodes"])
    for weight in float_matmuls.values():
        assert sum(w.shape == weight.shape and np.array_equal(w, weight) for w in kept) == 1
    integer = {n.name: n for n in graph.graph.node if n.op_type == "MatMulIntegerToFloat"}
    for node in integer.values():  # b's zero point: one per output channel
        assert weights[node.input[5]].shape == (weights[node.input[1]].shape[1],)
    # Without the named modules kept, exactly those two MatMuls more are int8.
    export.quantize_int8(tmp_path / "fp32.onnx", tmp_path / "all.onnx", float_modules=())
    every = onnx.load(str(tmp_path / "all.onnx")).graph.node
    all_integer = {n.name for n in every if n.op_type == "MatMulIntegerToFloat"}
    assert all_integer - set(integer) == {f"{name}_quant" for name in float_matmuls}
    assert set(integer) < all_integer
    assert how == {
        "method": "dynamic", "weight_type": "int8", "per_channel": True, "activations": "per row",
        "float_modules": ["gpt.h.0.attn.c_attn", "gpt.h.0.attn.c_proj"],
        "float_nodes": how["float_nodes"],
    }  # fmt: skip
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"))
    enc = tokenizer.load(folder)
    ids = tokenized.pack_ids(tokenized.encode(enc, TEXTS), MAX_LENGTH)
    from spamgpt.serve.serving import onnx_probabilities

    got = onnx_probabilities(session, ModelInputs(ids, None))
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.1)  # int8: near, not equal


@torch.no_grad()
def test_the_gate_refuses_a_model_that_int8_breaks_and_leaves_nothing(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A planted outlier: one feature that block 0's layer norm sets to exactly 0 reaches
    its MLP through a weight 10^4 times the others. The float model is unchanged by it
    (0 times anything), but int8 rounds every other weight of that matrix to 0: each output
    channel's scale (one per channel, or one for the tensor) is set by its planted weight.
    The test split: 300 random messages labelled with the float model's own answers, so that
    it scores 1.0 and any drop is the int8 model's."""
    folder = finetuned(workspace, "planted", trainable_blocks="all")
    model, meta = classifier.load(folder, workspace / paths.PRETRAINED_DIR)
    block = model.gpt.h[0]
    block.ln_2.weight[0] = block.ln_2.bias[0] = 0.0
    block.mlp.c_fc.weight[:, 0] = 1e4 * block.mlp.c_fc.weight.abs().max()
    planted = tmp_path / "planted"
    classifier.save(model, planted, meta, folder, full=True)
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, MAX_LENGTH + 1, (300,), generator=g)
    ids = torch.randint(0, meta["pad_id"], (int(lengths.sum()),), generator=g)
    inputs = ModelInputs(PackedSequences(ids, lengths), frozen_blocks=None)
    probabilities = classifier.class_probabilities(model, inputs, FP32_CPU).numpy()
    # evaluate's threshold where it has none
    labels = task_for(CLASSES).decisions(probabilities, 0.5)
    assert (labels == CLASSES.positive_index).sum() >= 20  # spam to find
    project = tmp_path / "project"
    split = TokenizedSplit(inputs.sequences, torch.from_numpy(labels), torch.arange(300))
    (project / paths.TOKENS_DIR).mkdir(parents=True)
    tokenized.save(split, project / paths.tokens_file("test"))
    dest = tmp_path / "new" / "int8.onnx"
    args = ["--model", str(planted), "--pretrained", str(workspace / paths.PRETRAINED_DIR)]
    with pytest.raises(SystemExit) as info:
        export_int8(project, str(dest), *args)
    assert info.value.code == 1
    error = capsys.readouterr().err
    assert re.fullmatch(
        r"spamgpt: error: --max-drop 0\.005: the int8 ONNX model's test spam_f1 is \d\.\d{4}, "
        r"the PyTorch model's 1\.0000 \(a drop of \d\.\d{4}\); nothing written\n",
        error,
    )
    assert not (tmp_path / "new").exists()  # not even the folder
    assert sorted(p.name for p in project.rglob("*")) == ["data", "test.safetensors", "tokens"]
    # The same model passes with room for that drop: the gate, not the export, refused it.
    export_int8(project, str(dest), *args, "--max-drop", "1")
    assert dest.is_file()
    report = json.loads((project / paths.EXPORT_ONNX_INT8_REPORT).read_text())
    assert report["onnx_int8"]["spam_f1"] < 0.5 < report["pytorch_fp32"]["spam_f1"] == 1.0


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--to", "onnx", "--quantize", "int8", "--max-drop", "-0.1"],
         "--max-drop must be 0 or more, got -0.1"),
        (["--to", "transformers", "--quantize", "int8"], "--quantize int8: only with --to onnx"),
    ],
)  # fmt: skip
def test_bad_quantize_arguments_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], line: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["export", str(tmp_path / "out" / "model.onnx"), *args])
    assert info.value.code == 1
    assert capsys.readouterr().err == f"spamgpt: error: {line}\n"
    assert not (tmp_path / "out").exists()


@torch.no_grad()
@pytest.mark.parametrize(
    "calibration",
    [
        {"method": "temperature", "temperature": 2.5},
        {"method": "platt", "temperature": 2.5, "shift": {"ham": 0.0, "spam": -1.3, "promo": 0.8}},
    ],
)
def test_export_of_a_folder_folds_evaluates_temperature(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibration: dict
) -> None:
    """`spamgpt export` of models/finetuned, run where evaluate wrote models/calibration.json:
    the ONNX graph gives the calibrated probabilities (platt's shifted too), as classify
    does."""
    import onnxruntime

    folder = finetuned(workspace, "calibrated", trainable_blocks=1)
    monkeypatch.chdir(tmp_path)
    contracts.write_calibration(calibration)
    cli.main(["export", "--to", "onnx", "model.onnx", "--model", str(folder),
              "--pretrained", str(workspace / paths.PRETRAINED_DIR)])  # fmt: skip
    model, meta = classifier.load(
        folder, workspace / paths.PRETRAINED_DIR, 2.5, calibration.get("shift")
    )
    enc = tokenizer.load(folder)
    expected, _ = classifier.classify_texts(model, enc, TEXTS, meta["max_length"], FP32_CPU)
    *_, uncalibrated = reference(workspace, folder)
    assert not np.allclose(expected.numpy(), uncalibrated, atol=1e-3)
    session = onnxruntime.InferenceSession("model.onnx")
    for text, want in zip(TEXTS, expected.numpy(), strict=True):
        ids = np.array([enc.encode_ordinary(text)[:MAX_LENGTH]], dtype=np.int64)
        (got,) = session.run(None, {"input_ids": ids, "lengths": np.array([ids.shape[1]])})
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-5)


def quantized_matmuls(
    tmp_path: Path, weights: list[np.ndarray], weight_type: str, opset: int = 20
) -> Path:
    """A graph of MatMuls x_i (batch, rows, K) @ weights[i] -> y_i, the first behind a Cast
    and before an Add of a Constant 0 (nodes the rewrite must pass by), quantized by ONNX
    Runtime's dynamic quantization as quantize_int8 quantizes it (one weight scale per
    output channel; QInt8: symmetric, zero points 0; QUInt8: zero points of their own)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    k = weights[0].shape[0]
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["batch", "rows", k])
              for i in range(len(weights))]  # fmt: skip
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None)
               for i in range(len(weights))]  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["x0"], ["x0_float"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["nothing"], name="nothing",
                         value=numpy_helper.from_array(np.zeros(1, dtype=np.float32))),
        helper.make_node("MatMul", ["x0_float", "w0"], ["y0_matmul"], name="matmul0"),
        helper.make_node("Add", ["y0_matmul", "nothing"], ["y0"], name="add"),
    ]  # fmt: skip
    nodes += [helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"], name=f"matmul{i}")
              for i in range(1, len(weights))]  # fmt: skip
    initializers = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", per_channel=True,
                     weight_type=QuantType[weight_type])  # fmt: skip
    return tmp_path / "int8.onnx"


def row_quantized(message: np.ndarray) -> np.ndarray:
    """numpy's per-row quantization of `message`, dequantized: 255 levels over each row's
    range, 0 included."""
    low = np.minimum(message.min(axis=-1, keepdims=True), 0)
    high = np.maximum(message.max(axis=-1, keepdims=True), 0)
    scale = np.maximum(high - low, np.finfo(np.float32).tiny) / 255
    zero = np.round(-low / scale)
    return (np.clip(np.round(message / scale) + zero, 0, 255) - zero) * scale


@pytest.mark.parametrize(("weight_type", "opset"), [("QInt8", 20), ("QUInt8", 20), ("QInt8", 18)])
def test_per_row_activations_quantizes_each_row_by_its_own_range(
    tmp_path: Path, weight_type: str, opset: int
) -> None:
    """Each row (a token) is rounded to 255 levels over its own range (0 included), whatever
    its batch-mates: the planted batch-mate of values 1000 times larger moved the row's
    output under dynamic quantization's one scale per tensor, not after the rewrite.
    Checked against numpy on the graph's own int8 weights, zero points and scales: a row of
    both signs, one all positive (zero point 0), one all negative (255), one all zero (0,
    not NaN); each of two MatMuls, the nodes around them passed by, the nodes that rescaled
    each MatMulInteger's output gone with it."""
    import onnx
    import onnxruntime

    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(8, 5)).astype(np.float32) for _ in range(2)]
    file = quantized_matmuls(tmp_path, weights, weight_type, opset)  # 18: ReduceMin's axes an input
    graph = onnx.load(str(file))
    tensor = onnxruntime.InferenceSession(str(file))
    assert export.per_row_activations(graph) == 2
    names = [n.name for n in graph.graph.node]
    assert all(names) and len(set(names)) == len(names)
    kinds = Counter(n.op_type for n in graph.graph.node)
    # Casts: the graph's own and each row quantization's zero points to uint8
    assert (kinds["DynamicQuantizeLinear"], kinds["MatMulInteger"], kinds["Cast"]) == (0, 0, 3)
    # each output less its rows' zero points, times its rows' scales: 2 Muls a MatMul, the
    # product of the scales gone
    assert (kinds["MatMulIntegerToFloat"], kinds["Mul"]) == (2, 4)
    rows = onnxruntime.InferenceSession(graph.SerializeToString())
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}

    message = rng.normal(size=(1, 4, 8)).astype(np.float32)
    message[0, 1] = np.abs(message[0, 1]) + 0.5
    message[0, 2] = -np.abs(message[0, 2]) - 0.5
    message[0, 3] = 0.0
    mate = 1000 * rng.normal(size=(1, 4, 8)).astype(np.float32)
    feed = {"x0": message, "x1": message[:, ::-1].copy()}
    alone = rows.run(None, feed)
    batched = rows.run(None, {x: np.concatenate([m, mate]) for x, m in feed.items()})
    for i, (x, w) in enumerate(zip(feed.values(), weights, strict=True)):
        node = next(n for n in graph.graph.node if n.op_type == "MatMulIntegerToFloat" and
                    n.output[0].startswith(f"y{i}"))  # fmt: skip
        codes, scales, zeros = (arrays[node.input[j]] for j in (1, 3, 5))
        assert arrays[node.input[2]] == 1 and arrays[node.input[4]] == 0
        assert (np.any(zeros != 0)) == (weight_type == "QUInt8")
        dequantized = (codes.astype(np.float32) - zeros) * scales
        assert np.array_equal(batched[i][:1], alone[i])
        expected = row_quantized(x) @ dequantized
        np.testing.assert_allclose(alone[i], expected, rtol=1e-5, atol=1e-5)
        assert np.array_equal(alone[i][0, 3 * (1 - i)], np.zeros(5, dtype=np.float32))
        np.testing.assert_allclose(alone[i], x @ w, rtol=0, atol=0.1)  # int8: near
    before = tensor.run(None, {x: np.concatenate([m, mate]) for x, m in feed.items()})[0]
    assert np.abs(before[:1] - tensor.run(None, feed)[0]).max() > 0.1


def test_an_int8_graphs_answer_is_the_same_alone_and_batched(
    workspace: Path, tmp_path: Path
) -> None:
    """The served ONNX model's path (serving.onnx_probabilities) on the int8 export: each
    message's probabilities scored with the others equal those scored alone, to float
    rounding (1e-6: a batch's padded length changes float sums' order, not an int8 code,
    export.per_row_activations); with one activation scale per batch (the graph before the
    rewrite) they moved by more than 1e-3."""
    import onnx
    import onnxruntime

    from spamgpt.serve.serving import onnx_probabilities

    folder = finetuned(workspace, "alone-or-batched", trainable_blocks="all")
    model, meta, _ = reference(workspace, folder)
    export.to_onnx(model, meta, tmp_path / "fp32.onnx")
    export.quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    enc = tokenizer.load(folder)
    texts = [*TEXTS, "WIN WIN WIN £££ 09061701461 !!!", "x"]

    def scored(session: onnxruntime.InferenceSession, batch: list[str]) -> np.ndarray:
        ids = tokenized.pack_ids(tokenized.encode(enc, batch), MAX_LENGTH)
        return onnx_probabilities(session, ModelInputs(ids, None))

    graph = onnx.load(str(tmp_path / "int8.onnx"))
    assert [n for n in graph.graph.node if n.op_type == "DynamicQuantizeLinear"] == []
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"))
    together = scored(session, texts)
    alone = np.concatenate([scored(session, [text]) for text in texts])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    prepared = tmp_path / "prepared.onnx"  # what quantize_int8 wrote before the rewrite
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(tmp_path / "fp32.onnx"), str(prepared))
    quantize_dynamic(prepared, tmp_path / "tensor.onnx", weight_type=QuantType.QInt8,
                     per_channel=True)  # fmt: skip
    per_batch = onnxruntime.InferenceSession(str(tmp_path / "tensor.onnx"))
    moved = scored(per_batch, texts) - np.concatenate([scored(per_batch, [t]) for t in texts])
    assert np.abs(moved).max() > 1e-3


# In-process unit tests on a 1-block GPT-2 of width 32 built here (seconds, no pipeline): what
# each step of the exports computes, against transformers, tokenizers and onnxruntime.

UNIT_LENGTH = 16


def tiny_classifier(
    root: Path, classes: Classes = CLASSES, **meta: object
) -> tuple[GPT2Classifier, dict, Path]:
    """(model, classifier.json's meta, tokenizer folder): random weights, the head's and
    ln_f's biases drawn too, so that a tensor or bias exported wrongly moves the answers."""
    hub = make_hub(root / "hub", layers=1, dim=32, heads=4, n_ctx=32, revision="unit", seed=4,
                   num_merges=60)  # fmt: skip
    model = GPT2Classifier(
        GPT2.from_pretrained(hub, dropout=0.1), len(classes), label_format=classes.label_format
    ).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5, generator=g)
        model.head.bias.normal_(0, 1.0, generator=g)
        model.gpt.ln_f.bias.normal_(0, 0.3, generator=g)
    pad = tokenizer.load(hub).eot_token
    m = params_module.parse(yaml.safe_load((REPO / "params.yaml").read_text())).model
    info = classifier.classifier_meta(m, classes, [], UNIT_LENGTH, pad)
    return model, {**info, "pretrained": False, **meta}, hub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT2Classifier, dict, Path]:
    return tiny_classifier(tmp_path_factory.mktemp("tiny"))


def random_batch(pad: int, lengths: list[int], seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random token ids (pad: `pad`, never drawn) and their lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad, dtype=torch.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(0, pad, (n,), generator=g)
    return ids, torch.tensor(lengths)


def test_recorded_is_the_fields_cut_and_classes_and_a_mean_pooled_model_refused() -> None:
    meta = {"text_columns": ["subject", "body"], "text_template": "{subject}: {body}",
            "max_length": 40, "truncation": "head_tail", "head_ratio": 0.3,
            "labels": ("ham", "spam"), "pooling": "last"}  # fmt: skip
    assert export.recorded(meta) == {
        "text_columns": ["subject", "body"], "text_template": "{subject}: {body}",
        "max_length": 40, "truncation": "head_tail", "head_ratio": 0.3, "labels": ["ham", "spam"],
    }  # fmt: skip
    export.check_representable(meta)  # last-token pooling: taken
    with pytest.raises(SpamGPTError) as refused:
        export.check_representable({**meta, "pooling": "mean"})
    assert str(refused.value) == (
        "model.pooling is 'mean': transformers' GPT2ForSequenceClassification reads the last "
        "real token only; train with model.pooling: last, or export --to onnx"
    )


@torch.no_grad()
def test_the_folded_head_gives_the_heads_logits_without_a_bias(tiny) -> None:
    model, _, _ = tiny
    weight, beta = export.folded_head(model)
    assert weight.dtype == beta.dtype == torch.float32
    assert torch.equal(weight, model.head.weight)
    h = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    g, eps = model.gpt.ln_f.weight, model.gpt.ln_f.eps
    ours = model.head(model.gpt.ln_f(h))
    folded = torch.nn.functional.layer_norm(h, (32,), g, beta, eps) @ weight.T
    torch.testing.assert_close(folded, ours, rtol=0, atol=1e-5)
    assert (beta - model.gpt.ln_f.bias).abs().max() > 0.1  # the bias did move into ln_f


@torch.no_grad()
def test_a_dependent_head_is_refused_with_its_residual(tiny) -> None:
    model = copy.deepcopy(tiny[0])
    model.head.weight[2] = model.head.weight[0] * 2
    model.head.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(SpamGPTError) as refused:
        export.folded_head(model)
    assert re.fullmatch(
        r"head\.weight's rows are linearly dependent: its bias cannot be folded into ln_f "
        r"\(residual 0\.\d+\), so transformers' bias-free score layer cannot hold it",
        str(refused.value),
    )


@torch.no_grad()
def test_a_residual_at_the_fold_tolerance_is_taken_and_one_over_refused(
    tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is inclusive: the head's own residual (its least-norm fold's, in float64, as
    the docstring defines it) set as the tolerance is folded, the next float below it refused.
    (A full-rank head: LAPACK's least squares of a singular system may not give the same
    solution twice.)"""
    model = tiny[0]
    w, b = model.head.weight.double(), model.head.bias.double()
    d = w.T @ torch.linalg.lstsq(w @ w.T, b[:, None]).solution[:, 0]
    residual = float((w @ d - b).abs().max())
    assert residual < 1e-12
    monkeypatch.setattr(export, "FOLD_TOLERANCE", residual)
    _, beta = export.folded_head(model)
    assert torch.equal(beta, (model.gpt.ln_f.bias.double() + d).float())
    monkeypatch.setattr(export, "FOLD_TOLERANCE", float(np.nextafter(residual, -1)))
    with pytest.raises(SpamGPTError, match="linearly dependent"):
        export.folded_head(model)


@torch.no_grad()
def test_the_transformers_folder_answers_as_the_model_does(tiny, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import GPT2ForSequenceClassification

    model, meta, hub = tiny
    dest = tmp_path / "new" / "hf"
    export.to_transformers(model, meta, hub, dest)
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.json",
    ]  # fmt: skip
    for name in ("vocab.json", "merges.txt"):
        assert (dest / name).read_bytes() == (hub / name).read_bytes()
    for name, content in export.tokenizer_files(meta, hub).items():
        assert json.loads((dest / name).read_text(encoding="utf-8")) == content
    with safe_open(str(dest / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    hf = GPT2ForSequenceClassification.from_pretrained(dest).eval()
    state = export.transformers_state(model)
    assert set(state) == set(hf.state_dict())
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    c_attn = model.gpt.h[0].attn.c_attn.weight
    assert torch.equal(state["transformer.h.0.attn.c_attn.weight"], c_attn.T)
    assert torch.equal(state["transformer.wte.weight"], model.gpt.wte.weight)
    ids, lengths = random_batch(meta["pad_id"], [5, 16, 1, 9])
    got = hf(input_ids=ids).logits
    torch.testing.assert_close(got, model(ids, lengths), rtol=0, atol=1e-5)


def test_the_transformers_config_is_gpt2s_with_the_classes(tiny) -> None:
    model, meta, _ = tiny
    pad = meta["pad_id"]
    assert export.transformers_config(model, meta) == {
        "architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2",
        "activation_function": "gelu_new", "n_layer": 1, "n_head": 4, "n_embd": 32,
        "n_positions": 32, "n_ctx": 32, "n_inner": None, "vocab_size": pad + 1,
        "layer_norm_epsilon": 1e-05, "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1,
        "scale_attn_weights": True, "bos_token_id": pad, "eos_token_id": pad,
        "pad_token_id": pad, "id2label": {"0": "ham", "1": "spam", "2": "promo"},
        "label2id": {"ham": 0, "spam": 1, "promo": 2},
        "problem_type": "single_label_classification", "dtype": "float32",
        "spamgpt": {"text_columns": ["text"], "text_template": None, "max_length": UNIT_LENGTH,
                    "truncation": "head", "head_ratio": 0.25, "labels": ["ham", "spam", "promo"]},
    }  # fmt: skip
    labels = Classes(("a", "b", "c"), None, "multi")
    multi = export.transformers_config(model, {**meta, **labels.to_dict()})
    assert multi["problem_type"] == "multi_label_classification"


def test_the_tokenizer_files_are_gpt2s_byte_level_bpe(tiny) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    _, meta, hub = tiny
    files = export.tokenizer_files(meta, hub)
    vocab = json.loads((hub / "vocab.json").read_text(encoding="utf-8"))
    merges = (hub / "merges.txt").read_text(encoding="utf-8").splitlines()
    fast = copy.deepcopy(files["tokenizer.json"])
    assert merges[0] == "#version: 0.2"
    assert fast["model"].pop("vocab") == vocab
    assert fast["model"].pop("merges") == [line.split(" ") for line in merges[1:]]
    eot = {"id": meta["pad_id"], "content": "<|endoftext|>", "single_word": False,
           "lstrip": False, "rstrip": False, "normalized": False, "special": True}  # fmt: skip
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert fast == {  # as in openai-community/gpt2's own tokenizer.json
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [eot],
        "normalizer": None, "pre_tokenizer": {**byte_level, "trim_offsets": True},
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": {**byte_level, "trim_offsets": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False},
    }  # fmt: skip
    special = {k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    assert files["special_tokens_map.json"] == special
    assert files["tokenizer_config.json"] == {
        "tokenizer_class": "GPT2Tokenizer", **special, "add_prefix_space": False,
        "add_bos_token": False, "model_max_length": UNIT_LENGTH, "padding_side": "right",
        "truncation_side": "right", "clean_up_tokenization_spaces": False,
    }  # fmt: skip
    without = {k: v for k, v in meta.items() if k != "truncation"}
    cuts = [{"truncation": "head"}, {"truncation": "tail"}, {"truncation": "head_tail"}, {}]
    sides = [
        export.tokenizer_files({**without, **cut}, hub)["tokenizer_config.json"] for cut in cuts
    ]
    assert [side["truncation_side"] for side in sides] == ["right", "left", "right", "right"]
    # What the files do: spamgpt's ids, and <|endoftext|> as one special token.
    enc = tokenizer.load(hub)
    with_eot = [*TEXTS, "the end<|endoftext|>"]
    loaded = Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
    want = [*enc.encode_ordinary_batch(TEXTS), [*enc.encode_ordinary("the end"), meta["pad_id"]]]
    assert [e.ids for e in loaded.encode_batch(with_eot)] == want
    assert loaded.decode(want[0]) == TEXTS[0]
    folder = Path(hub).parent / "tokenizer-only"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    auto = AutoTokenizer.from_pretrained(folder)
    assert auto(TEXTS[4], truncation=True)["input_ids"] == want[4][:UNIT_LENGTH]


def test_the_tokenizer_files_read_gpt2s_vocabulary_as_utf8_whatever_the_locale(
    tiny, tmp_path: Path, ascii_locale: None
) -> None:
    """vocab.json with its symbols as UTF-8 (not \\u escapes, as a hub may hold it) and
    merges.txt, read under an ASCII locale."""
    _, meta, hub = tiny
    vocab = json.loads((hub / "vocab.json").read_bytes().decode("utf-8"))
    raw = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
    assert not raw.isascii()  # byte-level BPE's symbols: 'Ġ', ...
    (tmp_path / "vocab.json").write_bytes(raw)
    shutil.copyfile(hub / "merges.txt", tmp_path / "merges.txt")
    merges = (hub / "merges.txt").read_bytes().decode("utf-8").splitlines()[1:]
    assert any(not line.isascii() for line in merges)
    model = export.tokenizer_files(meta, tmp_path)["tokenizer.json"]["model"]
    assert (model["vocab"], model["merges"]) == (vocab, [line.split(" ") for line in merges])


def test_the_exporters_two_notices_and_only_they_are_silenced() -> None:
    import warnings

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    registration.addHandler(handler)
    leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with export.quiet_exporter():
                registration.warning("torchvision is not installed. Skipping torchvision::nms")
                registration.warning("not torchvision is not installed. Skipping torchvision::")
                warnings.warn(leaf, FutureWarning, stacklevel=1)
                warnings.warn(leaf, DeprecationWarning, stacklevel=1)
                warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
            registration.warning("torchvision is not installed. Skipping torchvision::roi")
    finally:
        registration.removeHandler(handler)
    assert seen == [
        "not torchvision is not installed. Skipping torchvision::",
        "torchvision is not installed. Skipping torchvision::roi",  # the filter is gone
    ]
    assert [(w.category, str(w.message)) for w in shown] == [
        (DeprecationWarning, leaf), (FutureWarning, "another FutureWarning")
    ]  # fmt: skip
    assert registration.filters == []


@torch.no_grad()
def test_the_graph_module_gives_each_tasks_probabilities(tmp_path: Path) -> None:
    for classes, probabilities in [
        (CLASSES, lambda logits: logits.softmax(-1)),
        (Classes(("a", "b", "c"), None, "multi"), torch.sigmoid),
    ]:
        model, meta, _ = tiny_classifier(tmp_path / classes.label_format, classes)
        ids, lengths = random_batch(meta["pad_id"], [3, 7])
        got = export.ProbabilityGraph(model)(ids, lengths)
        torch.testing.assert_close(got, probabilities(model(ids, lengths)), rtol=0, atol=0)


def saved(model: GPT2Classifier, meta: dict, hub: Path, dest: Path) -> Path:
    """`model` as a self-contained fine-tuned folder (every tensor)."""
    classifier.save(model, dest, meta, hub, full=True)
    return dest


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(graph, what `spamgpt export --to onnx` printed) of the tiny model, saved as a folder,
    into folders it creates; its weights exactly at the size kept inside the graph."""
    model, meta, hub = tiny
    root = tmp_path_factory.mktemp("tiny-onnx")
    folder = saved(model, meta, hub, root / "finetuned")
    dest = root / "new" / "deeper" / "model.onnx"
    size = sum(p.numel() * 4 for p in model.parameters())
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(root)
        patch.setattr(export, "ONNX_FILE_LIMIT", size)
        cli.main(["export", "--to", "onnx", str(dest), "--model", str(folder)])
    return dest, printed.getvalue()


def onnx_answers(graph: Path, ids: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(graph))
    return session.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]


@torch.no_grad()
def test_the_onnx_graph_gives_the_models_probabilities_on_any_batch(tiny, tiny_onnx) -> None:
    import onnx
    import onnxruntime

    model, meta, _ = tiny
    graph, printed = tiny_onnx
    assert printed == f"{graph}: onnx export of {graph.parents[2] / 'finetuned'}\n"
    assert sorted(p.name for p in graph.parent.iterdir()) == ["model.onnx"]  # weights inside
    session = onnxruntime.InferenceSession(str(graph))
    (ids_in, lengths_in), (out,) = session.get_inputs(), session.get_outputs()
    assert (ids_in.name, ids_in.type, lengths_in.name, lengths_in.type, out.name) == (
        "input_ids", "tensor(int64)", "lengths", "tensor(int64)", "probabilities"
    )  # fmt: skip
    # both axes dynamic, by the names the graph gives them (lengths' axis is input_ids' batch)
    assert (ids_in.shape, lengths_in.shape, out.shape) == (
        ["batch", "sequence"], ["batch"], ["batch", 3]
    )  # fmt: skip
    recorded = session.get_modelmeta().custom_metadata_map["spamgpt"]
    assert json.loads(recorded) == export.recorded(meta)
    loaded = onnx.load(str(graph), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in loaded.graph.initializer)
    for lengths in ([5, 16, 1, 9], [2], [UNIT_LENGTH] * 3):  # wider than the example's 8
        ids, lengths = random_batch(meta["pad_id"], lengths)
        want = model(ids, lengths).softmax(-1).numpy()
        np.testing.assert_allclose(onnx_answers(graph, ids, lengths), want, rtol=0, atol=1e-5)


@torch.no_grad()
def test_weights_over_the_limit_go_beside_the_graph(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte over: <file>.data beside it. The model is handed over in training mode, with
    dropout: the graph is the model's evaluation all the same."""
    import onnx

    model, meta, _ = tiny
    size = sum(p.numel() * 4 for p in model.parameters())
    monkeypatch.setattr(export, "ONNX_FILE_LIMIT", size - 1)
    training = copy.deepcopy(model).train()
    export.to_onnx(training, meta, tmp_path / "model.onnx")  # tmp_path exists
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    loaded = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    ids, lengths = random_batch(meta["pad_id"], [4, 11])
    want = model(ids, lengths).softmax(-1).numpy()
    got = onnx_answers(tmp_path / "model.onnx", ids, lengths)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_without_the_onnx_packages_the_export_says_what_to_install(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, meta, _ = tiny
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript: ImportError
    with pytest.raises(SpamGPTError) as refused:
        export.to_onnx(model, meta, tmp_path / "model.onnx")
    assert str(refused.value) == (
        "export --to onnx needs the onnx and onnxscript packages: pip install onnx onnxscript, "
        'or pip install "spamgpt[export]"'
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.chdir(tmp_path)  # no test split either: onnxruntime is asked for first
    with pytest.raises(SpamGPTError) as refused:
        export.gated_int8(model, meta, tmp_path / "int8.onnx", 0.1, "m")
    assert str(refused.value) == (
        'export --quantize int8 needs onnxruntime: pip install "spamgpt[export]"'
    )
    assert list(tmp_path.iterdir()) == []


def matmul_graph(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x (N, 8) -> MatMul w1 (in gpt.h.0.attn.c_attn) -> MatMul w2 (in gpt.h.1.mlp.c_fc),
    name scopes recorded as torch's exporter records them. Returns (w1, w2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    nodes = []
    for name, x, w, y, scope in [("m1", "x", "w1", "h", "model.gpt.h.0.attn.c_attn"),
                                 ("m2", "h", "w2", "y", "model.gpt.h.1.mlp.c_fc")]:  # fmt: skip
        node = helper.make_node("MatMul", [x, w], [y], name=name)
        node.metadata_props.add(key=export.NAME_SCOPES, value=repr(["", "model", scope]))
        nodes.append(node)
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w1, w2


def test_int8_quantizes_every_matmul_but_the_named_modules_ones(tmp_path: Path) -> None:
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    w1, w2 = matmul_graph(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)

    def quantized(name: str, **how: object) -> tuple[dict, dict, np.ndarray]:
        (tmp_path / name).mkdir()
        dest = tmp_path / name / "int8.onnx"
        report = export.quantize_int8(tmp_path / "fp32.onnx", dest, **how)
        assert sorted(p.name for p in dest.parent.iterdir()) == ["int8.onnx"]
        graph = onnx.load(str(dest)).graph
        weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        nodes = {n.name: (n.op_type, [weights.get(i) for i in n.input]) for n in graph.node}
        (y,) = onnxruntime.InferenceSession(str(dest)).run(None, {"x": x})
        return report, nodes, y

    report, nodes, y = quantized("default")
    assert report == {
        "method": "dynamic", "weight_type": "int8", "per_channel": True, "activations": "per row",
        "float_modules": list(export.FLOAT_MODULES), "float_nodes": ["m1"],
    }  # fmt: skip
    assert nodes["m1"][0] == "MatMul" and np.array_equal(nodes["m1"][1][1], w1)
    op, (_, weight, _, _, _, zero_point) = nodes["m2_quant"]
    assert (op, weight.dtype, zero_point.shape) == ("MatMulIntegerToFloat", np.int8, (4,))
    np.testing.assert_allclose(y, x @ w1 @ w2, rtol=0, atol=0.1)
    assert not np.allclose(y, x @ w1 @ w2, rtol=0, atol=1e-6)  # int8: near, not equal

    report, nodes, _ = quantized("per-tensor", per_channel=False, float_modules=())
    assert (report["per_channel"], report["float_modules"], report["float_nodes"]) == (
        False,
        [],
        [],
    )
    assert {n: op for n, (op, _) in nodes.items() if op.startswith("MatMulInteger")} == {
        "m1_quant": "MatMulIntegerToFloat",
        "m2_quant": "MatMulIntegerToFloat",
    }
    assert nodes["m2_quant"][1][5].shape == ()  # one zero point for the tensor


def test_the_gate_compares_the_selected_metric(tiny) -> None:
    _, meta, _ = tiny
    assert export.selected_metric(meta) == "spam_f1"  # the positive class's
    assert export.selected_metric({**meta, "positive_label": None}) == "macro_f1"
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    split = TokenizedSplit(
        PackedSequences(torch.arange(3), torch.ones(3, dtype=torch.int64)),
        torch.tensor([0, 1, 1]), torch.arange(3),
    )  # fmt: skip
    report = export.split_report(probabilities, split, meta, None)
    assert report == task_for(CLASSES).report(np.array([0, 1, 1]), probabilities, None)
    assert (report["accuracy"], report["spam"]["recall"]) == (pytest.approx(2 / 3), 0.5)


SMS_CLASSES = Classes(("ham", "spam"), "spam")
GATE_THRESHOLD = 0.4  # evaluate's, in the project's reports/evaluation.json


def gate_project(
    root: Path, margin: float = 0.0
) -> tuple[GPT2Classifier, dict, Path, TokenizedSplit]:
    """A project as the pipeline leaves it, for the int8 gate: a tiny spam model in
    models/finetuned, evaluate's threshold, and a test split of 60 random messages labelled
    with the model's own answers at it (PyTorch scores 1.0: a drop is int8's); only those
    whose spam probability is more than `margin` from the threshold (0.2: further than
    int8 moves any of them, about 0.05 here, so that int8 scores 1.0 too)."""
    model, meta, hub = tiny_classifier(root, SMS_CLASSES)
    saved(model, meta, hub, root / paths.FINETUNED_DIR)
    (root / paths.EVAL_REPORT).parent.mkdir(parents=True)
    (root / paths.EVAL_REPORT).write_text(json.dumps({"threshold": GATE_THRESHOLD}))
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, UNIT_LENGTH + 1, (60,), generator=g)
    ids = torch.randint(0, meta["pad_id"], (int(lengths.sum()),), generator=g)
    inputs = ModelInputs(PackedSequences(ids, lengths), frozen_blocks=None)
    with torch.no_grad():
        probabilities = classifier.class_probabilities(model, inputs, FP32_CPU).numpy()
    kept = np.flatnonzero(np.abs(probabilities[:, 1] - GATE_THRESHOLD) > margin)
    ids = torch.cat([ids[inputs.sequences.starts[i] :][: lengths[i]] for i in kept])
    sequences = PackedSequences(ids, lengths[kept])
    labels = task_for(SMS_CLASSES).decisions(probabilities[kept], GATE_THRESHOLD)
    assert 5 <= labels.sum() <= len(kept) - 5  # spam and ham to find
    split = TokenizedSplit(sequences, torch.from_numpy(labels), torch.arange(len(kept)))
    (root / paths.TOKENS_DIR).mkdir(parents=True)
    tokenized.save(split, root / paths.tokens_file("test"))
    return model, meta, root, split


def test_the_int8_gate_reports_both_models_on_the_test_split_and_logs_them(
    local_store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """`spamgpt export --quantize int8` of models/finetuned, the project's run recorded: the
    report holds both models' figures at evaluate's threshold, the same figures go to the
    run, and one line says where."""
    from spamgpt.serve.serving import onnx_probabilities

    model, _, project, split = gate_project(tmp_path)
    monkeypatch.chdir(project)
    shm = Path("/dev/shm")  # a file system other than the project's here
    if shm.is_dir() and shm.stat().st_dev != project.stat().st_dev:
        # the int8 graph is made in a temporary folder beside its destination, not in the
        # system's: it is moved into place, which cannot cross file systems
        system_tmp = tempfile.mkdtemp(dir=shm)
        request.addfinalizer(lambda: shutil.rmtree(system_tmp))
        monkeypatch.setattr(tempfile, "tempdir", system_tmp)
        # torch's cache folder, else made in system_tmp and kept in the environment
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    run_id = local_store.create_run(tracking.experiment_id("gate")).info.run_id
    contracts.write_mlflow_run(run_id)
    dest = Path("exports") / "int8.onnx"
    cli.main(["export", "--to", "onnx", "--quantize", "int8", str(dest), "--model",
              str(paths.FINETUNED_DIR), "--max-drop", "1"])  # fmt: skip
    report = json.loads(paths.EXPORT_ONNX_INT8_REPORT.read_text())
    import onnxruntime

    inputs = ModelInputs(split.tokens, frozen_blocks=None)
    int8 = onnx_probabilities(onnxruntime.InferenceSession(str(dest)), inputs)
    with torch.no_grad():
        fp32 = classifier.class_probabilities(model, inputs, FP32_CPU).numpy()
    task, labels = task_for(SMS_CLASSES), split.labels.numpy()
    expected = {}
    for name, probabilities in [("pytorch_fp32", fp32), ("onnx_int8", int8)]:
        figures = task.report(labels, probabilities, GATE_THRESHOLD)
        expected[name] = {"spam_f1": figures["spam"]["f1"], "report": figures}
    expected = json.loads(json.dumps(expected))
    assert expected["pytorch_fp32"]["spam_f1"] == 1.0
    drop = 1.0 - expected["onnx_int8"]["spam_f1"]
    assert report.pop("quantization")["float_modules"] == list(export.FLOAT_MODULES)
    assert report == {
        "model": "models/finetuned", "split": "test", "messages": 60, "metric": "spam_f1",
        "threshold": GATE_THRESHOLD, "max_drop": 1.0, "drop": drop, **expected,
    }  # fmt: skip
    assert sorted(p.name for p in dest.parent.iterdir()) == ["int8.onnx"]
    assert capsys.readouterr().out == (
        f"{dest}: int8 onnx export of models/finetuned; test spam_f1 "
        f"{expected['onnx_int8']['spam_f1']:.4f} (PyTorch fp32 1.0000), "
        f"{paths.EXPORT_ONNX_INT8_REPORT}\n"
    )
    assert local_store.get_run(run_id).data.metrics == {
        "export/pytorch_fp32/test_spam_f1": 1.0,
        "export/onnx_int8/test_spam_f1": expected["onnx_int8"]["spam_f1"],
        "export/onnx_int8/drop": drop,
    }
    logged = local_store.download_artifacts(run_id, "export/export_onnx_int8.json", str(tmp_path))
    assert Path(logged).read_bytes() == paths.EXPORT_ONNX_INT8_REPORT.read_bytes()


def test_the_gate_refuses_a_drop_over_max_drop_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, meta, project, _ = gate_project(tmp_path)
    monkeypatch.chdir(project)
    before = sorted(project.rglob("*"))
    # relative: code that removed the first existing folder instead of the first one it made
    # would empty this project (".") rather than the file system's root
    with pytest.raises(SpamGPTError) as refused:
        export.gated_int8(model, meta, Path("new") / "deeper" / "int8.onnx", -0.5, "m")
    assert re.fullmatch(
        r"--max-drop -0\.5: the int8 ONNX model's test spam_f1 is \d\.\d{4}, the PyTorch "
        r"model's 1\.0000 \(a drop of \d\.\d{4}\); nothing written",
        str(refused.value),
    )
    assert sorted(project.rglob("*")) == before  # not a folder, not a temporary file


def test_without_the_test_split_the_gate_says_to_run_the_pipeline(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, meta, _ = tiny
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpamGPTError) as refused:
        export.gated_int8(model, meta, tmp_path / "out" / "int8.onnx", 0.1, "m")
    assert str(refused.value) == (
        "export --quantize int8 scores the model on the test split: "
        "data/tokens/test.safetensors not found; run the pipeline (dvc repro) in this folder first"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_the_store_lacks_is_named_and_nothing_logged(local_store: MlflowClient) -> None:
    unlogged = export.log_gate({"metric": "spam_f1"}, "0123456789abcdef")
    assert unlogged == (  # the first line of MLflow's own answer
        "not logged to MLflow run 0123456789abcdef: Run with id=0123456789abcdef not found"
    )
    experiments = [e.experiment_id for e in local_store.search_experiments()]
    assert local_store.search_runs(experiments) == []


def test_the_run_of_a_model_is_its_uris_or_the_workspaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert export.run_of("runs:/abc123/model") == "abc123"
    assert export.run_of("runs:/abc123") == "abc123"
    assert export.run_of("models/finetuned") is None  # no run recorded yet
    contracts.write_mlflow_run("def456")
    assert export.run_of("models/finetuned") == "def456"
    assert export.run_of(str(tmp_path / "models" / "finetuned")) == "def456"
    assert export.run_of("models/other") is None
    assert export.run_of("models:/spam/1") is None


@torch.no_grad()
def test_the_served_graph_has_evaluates_calibration_folded_in(
    tiny, local_store: MlflowClient
) -> None:
    """mlflow.serve's graph: none for pytorch; for onnx the model's probabilities at
    evaluate's temperature and platt's shift, the model itself left as it was."""
    model, meta, _ = tiny
    run = tracking.Run(local_store.create_run(tracking.experiment_id("serve")).info.run_id)
    with export.served_onnx(model, meta, "pytorch", run, 2.5) as graph:
        assert graph is None
    head = copy.deepcopy(model.head.state_dict())
    shift = {"ham": 0.0, "spam": -1.3, "promo": 0.8}
    ids, lengths = random_batch(meta["pad_id"], [4, 12, 1])
    with export.served_onnx(model, meta, "onnx", run, 2.5, shift) as graph:
        got = onnx_answers(graph, ids, lengths)
    assert not graph.parent.exists()  # for the block's duration only
    calibrated = copy.deepcopy(model)
    classifier.fold_temperature(calibrated, 2.5, CLASSES, shift)
    want = calibrated(ids, lengths).softmax(-1).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not np.allclose(got, model(ids, lengths).softmax(-1).numpy(), atol=1e-2)
    assert all(torch.equal(t, head[n]) for n, t in model.head.state_dict().items())
    assert local_store.list_artifacts(run.run_id) == []


@torch.no_grad()
def test_mlflow_export_logs_each_format_asked_under_its_folder(
    tiny, local_store: MlflowClient, tmp_path: Path
) -> None:
    model, meta, hub = tiny
    runs = [local_store.create_run(tracking.experiment_id("exports")).info.run_id for _ in "ab"]
    export.log_exports(tracking.Run(runs[0]), model, meta, hub, ["transformers", "onnx"])
    export.log_exports(tracking.Run(runs[1]), model, meta, hub, ["transformers"])
    files = ["config.json", "merges.txt", "model.safetensors", "special_tokens_map.json",
             "tokenizer.json", "tokenizer_config.json", "vocab.json"]  # fmt: skip
    for run_id, logged in zip(runs, [["onnx", "transformers"], ["transformers"]], strict=True):
        assert [a.path for a in local_store.list_artifacts(run_id)] == logged
        folder = [a.path for a in local_store.list_artifacts(run_id, "transformers")]
        assert folder == [f"transformers/{name}" for name in files]
    config = local_store.download_artifacts(runs[1], "transformers/config.json", str(tmp_path))
    assert json.loads(Path(config).read_text()) == export.transformers_config(model, meta)
    (graph,) = [a.path for a in local_store.list_artifacts(runs[0], "onnx")]
    assert graph == "onnx/model.onnx"
    graph = local_store.download_artifacts(runs[0], graph, str(tmp_path))
    ids, lengths = random_batch(meta["pad_id"], [6, 2])
    want = model(ids, lengths).softmax(-1).numpy()
    np.testing.assert_allclose(onnx_answers(Path(graph), ids, lengths), want, rtol=0, atol=1e-5)


def test_export_to_transformers_says_what_it_wrote(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    model, meta, hub = tiny
    folder = saved(model, meta, hub, tmp_path / "finetuned")
    monkeypatch.chdir(tmp_path)
    cli.main(["export", "--to", "transformers", "hf", "--model", str(folder)])
    assert capsys.readouterr().out == f"hf: transformers export of {folder}\n"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "promo"}
    weights = export.transformers_state(model)["score.weight"]
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "hf" / "model.safetensors")["score.weight"], weights)


def test_a_max_drop_of_0_passes_an_int8_model_as_good_and_no_run_logs_nothing(
    local_store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """--max-drop 0 takes an int8 model that scores as PyTorch does (a drop of exactly 0: the
    bound is inclusive). The model has no run (models/finetuned, no mlflow_run.json): nothing
    is logged, nothing said but the export's line."""
    _, _, project, split = gate_project(tmp_path, margin=0.2)
    monkeypatch.chdir(project)
    cli.main(["export", "--to", "onnx", "--quantize", "int8", "int8.onnx", "--model",
              str(paths.FINETUNED_DIR), "--max-drop", "0"])  # fmt: skip
    report = json.loads(paths.EXPORT_ONNX_INT8_REPORT.read_text())
    assert (report["messages"], report["max_drop"], report["drop"]) == (len(split), 0.0, 0.0)
    assert report["onnx_int8"]["spam_f1"] == report["pytorch_fp32"]["spam_f1"] == 1.0
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == (
        "int8.onnx: int8 onnx export of models/finetuned; test spam_f1 1.0000 (PyTorch fp32 "
        f"1.0000), {paths.EXPORT_ONNX_INT8_REPORT}\n",
        "",
    )
    assert Path("int8.onnx").is_file()
    experiments = [e.experiment_id for e in local_store.search_experiments()]
    assert local_store.search_runs(experiments) == []  # nothing logged, no run made


def test_the_int8_gate_says_in_one_line_that_the_models_run_is_not_in_the_store(
    local_store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """models/finetuned's recorded run, which the store does not hold: the export is written
    and reported all the same, one line on stderr says why its figures were not logged."""
    _, _, project, _ = gate_project(tmp_path)
    monkeypatch.chdir(project)
    contracts.write_mlflow_run("0123456789abcdef")
    cli.main(["export", "--to", "onnx", "--quantize", "int8", "int8.onnx", "--model",
              str(paths.FINETUNED_DIR), "--max-drop", "1"])  # fmt: skip
    report = json.loads(paths.EXPORT_ONNX_INT8_REPORT.read_text())
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == (
        f"int8.onnx: int8 onnx export of models/finetuned; test spam_f1 "
        f"{report['onnx_int8']['spam_f1']:.4f} (PyTorch fp32 1.0000), "
        f"{paths.EXPORT_ONNX_INT8_REPORT}\n",
        "spamgpt: not logged to MLflow run 0123456789abcdef: "
        "Run with id=0123456789abcdef not found\n",
    )
    assert Path("int8.onnx").is_file()
    experiments = [e.experiment_id for e in local_store.search_experiments()]
    assert local_store.search_runs(experiments) == []


@torch.no_grad()
def test_export_builds_a_partly_saved_model_on_the_base_in_pretrained(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of only the trained tensors (pretrained base) is completed from the base under
    --pretrained, not under the working folder's models/pretrained."""
    from safetensors.torch import load_file

    model, meta, hub = tiny
    partial = {**meta, "pretrained": True, "repo_id": "someone/unit",
               "trained": ["gpt.ln_f.bias", "head.weight", "head.bias"]}  # fmt: skip
    classifier.save(model, tmp_path / "finetuned", partial, hub, full=False)
    shutil.copytree(hub, tmp_path / "bases" / "someone" / "unit")
    monkeypatch.chdir(tmp_path)  # no models/pretrained here
    cli.main(["export", "--to", "transformers", "hf", "--model", "finetuned",
              "--pretrained", "bases"])  # fmt: skip
    written = load_file(tmp_path / "hf" / "model.safetensors")
    want = export.transformers_state(model)
    assert set(written) == set(want)
    assert all(torch.equal(written[name], want[name]) for name in want)
