"""spamgpt.export: the transformers folder and the ONNX graph give the class probabilities of
spamgpt's own prediction path (classifier.classify_texts), for every kind of fine-tuned folder;
the real transformers, tokenizers and onnxruntime load them, on a tiny random GPT-2."""

import contextlib
import io
import json
import logging
import runpy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, STAGES, evaluated_temperature, restored_tracking_uri, tiny_params
from fileserver import Faults, serve
from mlflow.tracking import MlflowClient

from spamgpt import classifier, cli, contracts, export, hub, paths, tokenizer
from spamgpt import params as params_module
from spamgpt.contracts import Tokenization
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import GPT2Classifier
from spamgpt.params import LoraParams, ModelParams
from spamgpt.random_hub import hub_dir, make_hub

REPO_ID = "someone/gpt2-six"
MAX_LENGTH = 24
CPU = torch.device("cpu")
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


def finetuned(workspace: Path, name: str, **overrides) -> Path:
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
        classifier.export(model, state, trained, m, CLASSES, Tokenization(MAX_LENGTH, pad), dest)
    return dest


def reference(workspace: Path, folder: Path) -> tuple[GPT2Classifier, dict, np.ndarray]:
    """The folder loaded as spamgpt loads it, and spamgpt's probabilities of TEXTS."""
    model, meta = classifier.load(folder, workspace / paths.PRETRAINED_DIR)
    enc = tokenizer.load(folder)
    probs, _ = classifier.classify_texts(model, enc, TEXTS, meta["max_length"], CPU, "fp32")
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
    export.to_onnx(model, tmp_path / "model.onnx")
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
        mlflow={"export": ["transformers", "onnx"]},
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
    probs, _ = classifier.classify_texts(model, enc, MESSAGES, meta["max_length"], CPU, "fp32")
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


@torch.no_grad()
def test_export_of_a_folder_folds_evaluates_temperature(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`spamgpt export` of models/finetuned, run where evaluate wrote models/calibration.json:
    the ONNX graph gives the calibrated probabilities, as classify does."""
    import onnxruntime

    folder = finetuned(workspace, "calibrated", trainable_blocks=1)
    monkeypatch.chdir(tmp_path)
    contracts.write_calibration({"method": "temperature", "temperature": 2.5})
    cli.main(["export", "--to", "onnx", "model.onnx", "--model", str(folder),
              "--pretrained", str(workspace / paths.PRETRAINED_DIR)])  # fmt: skip
    model, meta = classifier.load(folder, workspace / paths.PRETRAINED_DIR, temperature=2.5)
    enc = tokenizer.load(folder)
    expected, _ = classifier.classify_texts(model, enc, TEXTS, meta["max_length"], CPU, "fp32")
    *_, uncalibrated = reference(workspace, folder)
    assert not np.allclose(expected.numpy(), uncalibrated, atol=1e-3)
    session = onnxruntime.InferenceSession("model.onnx")
    for text, want in zip(TEXTS, expected.numpy(), strict=True):
        ids = np.array([enc.encode_ordinary(text)[:MAX_LENGTH]], dtype=np.int64)
        (got,) = session.run(None, {"input_ids": ids, "lengths": np.array([ids.shape[1]])})
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-5)
