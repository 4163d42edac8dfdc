"""spamgpt.finetune.outputs: what finetune writes besides its checkpoints, read back from the
files and from the MLflow store (a fresh SQLite store under tmp_path, in this process)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from test_train import PARAMS, trainer_splits

from spamgpt import contracts, params, paths, tracking
from spamgpt.contracts import Tokenization
from spamgpt.data import readers
from spamgpt.finetune import outputs
from spamgpt.finetune.train import State, Trainer
from spamgpt.labels import SMS
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.texts import TextFields

CPU = torch.device("cpu")
REPO_ID = "openai-community/gpt2"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub(tmp_path_factory.mktemp("hub"), layers=2, dim=16, heads=2, n_ctx=16)


@pytest.fixture
def project(tmp_path: Path, hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the tiny GPT-2 in models/pretrained and the loaders' report."""
    shutil.copytree(hub, tmp_path / paths.pretrained_dir(REPO_ID))
    for folder in (paths.METRICS_DIR, paths.REPORTS_DIR, paths.checkpoint_weights("x").parent):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    contracts.write_tokenization(
        Tokenization(max_length=12, pad_id=556),
        {s: {"truncated": n} for s, n in zip(paths.SPLITS, (3, 0, 1), strict=True)},
    )
    return tmp_path


@pytest.fixture
def store(project: Path, local_store: MlflowClient) -> MlflowClient:
    """conftest's local_store, in the project's folder (both are the test's tmp_path)."""
    return local_store


def trainer(hub: Path) -> Trainer:
    """A trainer of the tiny GPT-2's last block, its best weights those of another draw."""
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(hub))
    trained = classifier.freeze(model, 1)
    t = Trainer(model, trained, *trainer_splits(16), SMS, PARAMS, Compute(CPU, "fp32"))
    t.state.best_weights = {n: torch.randn_like(p) for n, p in t.trained.items()}
    return t


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, path))


@pytest.mark.parametrize("log_last", [True, False])
def test_checkpoint_weights_are_the_best_and_the_last_epochs(
    project: Path, hub: Path, store: MlflowClient, log_last: bool
) -> None:
    t = trainer(hub)
    with tracking.Run.open("outputs") as run:
        outputs.write_checkpoint_weights(run, t, log_last)
    best, last = (load_file(paths.checkpoint_weights(n)) for n in ("best", "last"))
    assert best.keys() == last.keys() == t.trained.keys()
    assert all(torch.equal(best[n], t.state.best_weights[n]) for n in best)
    assert all(torch.equal(last[n], p.detach()) for n, p in t.trained.items())
    logged = artifacts(store, run.run_id, "checkpoints")
    assert logged == (["checkpoints/last.safetensors"] if log_last else [])


def test_the_exported_model_is_the_best_epochs_with_its_text_fields(
    project: Path, hub: Path
) -> None:
    t = trainer(hub)
    m = params.load(REPO / "params.yaml").model
    fields = TextFields(("subject", "body"), None)
    outputs.export_model(t, m, fields)
    meta = json.loads((paths.FINETUNED_DIR / classifier.CLASSIFIER_JSON).read_text())
    assert meta["max_length"] == 12 and meta["pad_id"] == 556
    assert meta["text_columns"] == ["subject", "body"] and meta["trained"] == list(t.trained)
    loaded, _ = classifier.load(paths.FINETUNED_DIR)
    ours = loaded.state_dict()
    assert all(torch.equal(ours[n], t.state.best_weights[n]) for n in t.trained)


def history_state() -> State:
    """Three evaluations, the second the best, stopped 10 messages into the third epoch."""
    state = State(epoch=2, step=25, epoch_samples=10, train_seconds=4.5, best_evaluation=2)
    state.history = [
        {"epoch": e, "step": 10 * e, "train/loss": 0.7 - 0.1 * e, "val/loss": v, "val/f1": f}
        for e, v, f in ((1, 0.6, 0.5), (2, 0.4, 0.8), (3, 0.5, 0.7))
    ]
    state.steps = [[s, 1.0 / s, 1e-3] for s in range(1, 26)]
    return state


def test_write_training_writes_the_figures_the_report_and_the_plots(project: Path) -> None:
    state = history_state()
    summary = outputs.write_training(state, 40, Compute(CPU, "bf16"))
    speed = (2 * 40 + 10) / 4.5  # messages trained on, an early stop mid-epoch included
    assert summary == {"best_epoch": 2, "train/seconds": 4.5, "train/samples_per_second": speed}
    figures = {
        "best_epoch": 2, "best_step": 20, "epochs_run": 3, "train_seconds": 4.5,
        "samples_per_second": 20.0,
    }  # fmt: skip
    assert json.loads(paths.TRAIN_METRICS.read_text()) == figures
    assert json.loads(paths.TRAIN_REPORT.read_text()) == {
        **figures, "steps": 25, "device": "cpu", "precision": "bf16",
        "threads": torch.get_num_threads(), "val": {"loss": 0.4, "f1": 0.8},
    }  # fmt: skip
    steps = pd.read_csv(paths.TRAIN_LOSS_PLOT)
    assert steps.columns.tolist() == ["step", "loss", "lr"] and len(steps) == 25
    assert steps.iloc[3].tolist() == pytest.approx([4, 0.25, 1e-3])
    epochs = pd.read_csv(paths.VAL_EPOCHS_PLOT)
    assert epochs.columns.tolist() == ["epoch", "step", "train_loss", "val_loss", "val_f1"]
    assert epochs["val_f1"].tolist() == [0.5, 0.8, 0.7]


def test_write_training_rounds_the_figures_and_survives_no_time(project: Path) -> None:
    state = history_state()
    state.train_seconds, state.best_evaluation = 0.0, 1
    summary = outputs.write_training(state, 40, Compute(CPU, "fp32"))
    assert summary["train/samples_per_second"] == 90 / 1e-9 and summary["best_epoch"] == 1
    state.train_seconds = 7.123456
    outputs.write_training(state, 40, Compute(CPU, "fp32"))
    figures = json.loads(paths.TRAIN_METRICS.read_text())
    assert figures["train_seconds"] == 7.12 and figures["samples_per_second"] == 12.6


def split_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"line": range(n), "label": ["ham", "spam"] * (n // 2), "text": [f"m{i}" for i in range(n)]}
    )


@pytest.mark.parametrize(
    ("given", "sources"), [(False, None), (False, "dataset"), (True, None)],
    ids=["one file", "one file named", "given splits"],
)  # fmt: skip
def test_log_run_inputs_records_params_data_truncation_and_labels(
    project: Path, store: MlflowClient, given: bool, sources: str | None
) -> None:
    """One file (the data report names it as the source "dataset", or, older, names none):
    its training split, with the raw file's hash; given splits: each with its own."""
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    p = params.load(project / "params.yaml")
    for split, n in zip(paths.SPLITS, (6, 4, 2), strict=True):
        paths.split_file(split).parent.mkdir(parents=True, exist_ok=True)
        readers.write_split(split_frame(n), paths.split_file(split))
    report = {**SMS.to_dict(), "raw_sha256": "a" * 64}
    if sources == "dataset":
        report["sources"] = {"dataset": {"source": "http://127.0.0.1/sms.zip", "sha256": "e" * 64}}
    if given:
        report["sources"] = {
            s: {"source": f"http://127.0.0.1/{s}.csv", "sha256": c * 64}
            for s, c in zip(paths.SPLITS, "bcd", strict=True)
        }
    with tracking.Run.open("outputs") as run:
        outputs.log_run_inputs(run, p, report)
    logged = store.get_run(run.run_id)
    assert logged.data.params == {k: str(v) for k, v in params.flatten(p).items()}
    assert logged.data.metrics == {"truncated/train": 3, "truncated/val": 0, "truncated/test": 1}
    assert [m.step for m in store.get_metric_history(run.run_id, "truncated/test")] == [0]
    inputs = logged.inputs.dataset_inputs
    got = {
        i.dataset.name: (i.dataset.digest, i.dataset.source, {t.key: t.value for t in i.tags})
        for i in inputs
    }
    experiment = p.mlflow.experiment
    if given:
        assert got == {
            f"{experiment}-{s}": (
                c * 36, json.dumps({"url": f"http://127.0.0.1/{s}.csv"}),
                {"mlflow.data.context": context, "sha256": c * 64},
            )
            for s, c, context in zip(
                paths.SPLITS, "bcd", ("training", "validation", "testing"), strict=True
            )
        }  # fmt: skip
    else:
        assert got == {
            f"{experiment}-train": (
                "a" * 36, json.dumps({"url": p.data.url}),
                {"mlflow.data.context": "training", "sha256": "a" * 64},
            )
        }  # fmt: skip
    assert [json.loads(i.dataset.profile)["num_rows"] for i in inputs] == (
        [6, 4, 2] if given else [6]
    )
    assert artifacts(store, run.run_id) == ["labels.json", "params.yaml"]
    labels = json.loads(Path(store.download_artifacts(run.run_id, "labels.json")).read_text())
    assert labels == {**SMS.to_dict(), "metric_names": {"ham": "ham", "spam": "spam"}}
