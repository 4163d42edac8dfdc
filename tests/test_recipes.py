"""Every experiment recipe in the README and docs/training-control.md runs: its `-S` overrides
applied to params.yaml, then each stage's main() in order, as `dvc exp run` would run them, on
a 3-block toy GPT-2 (so that 0, 1, 2 blocks and all differ) served on 127.0.0.1, with
gpt2-medium as a 4-block one.

In one process, so that nine pipelines cost seconds: DVC's choice of which stages an override
re-runs is tested in test_pipeline.py; here each recipe's outputs are checked."""

import contextlib
import itertools
import json
import math
import re
import runpy
import shlex
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    REPO,
    STAGES,
    TINY_REVISION,
    Mirror,
    evaluated_temperature,
    read_json,
    restored_tracking_uri,
    serve_mirror,
    sms_collection,
    tiny_params,
)
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from spamgpt import params as params_module
from spamgpt.data import readers, tokenized
from spamgpt.data.batching import ModelInputs
from spamgpt.evaluate import results
from spamgpt.labels import SMS
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPTConfig
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.serve import cli
from spamgpt.tasks.classification import SingleLabel
from spamgpt.tasks.registry import task_for

CPU = torch.device("cpu")


def readme_recipes() -> dict[str, list[str]]:
    """{name: ["key=value", ...]} of each `dvc exp run --temp -n NAME -S ...` line in the
    README and docs/training-control.md."""
    pages = (REPO / "README.md", REPO / "docs/training-control.md")
    text = "\n".join(page.read_text() for page in pages).replace("\\\n", " ")
    recipes = {}
    for line in re.findall(r"^dvc exp run --temp -n .*$", text, flags=re.M):
        words = shlex.split(line, comments=True)
        recipes[words[words.index("-n") + 1]] = [
            words[i + 1] for i, word in enumerate(words) if word == "-S"
        ]
    return recipes


RECIPES = readme_recipes()


def test_the_readme_has_the_recipes_of_issue_7() -> None:
    assert set(RECIPES) >= {
        "random-init",
        "head-only",
        "two-blocks",
        "full",
        "mean-pool",
        "lora",
        "medium",
        "auto-thresh",
        "reference",
    }


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("recipes-mirror")
    make_hub(root, layers=3, revision=TINY_REVISION)
    make_hub(root, layers=4, repo_id="openai-community/gpt2-medium", revision="main")
    with serve_mirror(root, sms_collection()) as mirror:
        yield mirror


def value(text: str) -> object:
    """An override's value as DVC (Hydra's grammar) reads it: 1e-5 is a number, unlike in
    YAML 1.1."""
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return yaml.safe_load(text)


def with_overrides(params: dict, overrides: list[str]) -> dict:
    """params.yaml after `dvc exp run -S key=value ...`."""
    for override in overrides:
        key, _, text = override.partition("=")
        section, _, name = key.partition(".")
        params[section][name] = value(text)
    return params


@pytest.fixture(scope="module")
def recipe_runs(mirror: Mirror, empty_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run each recipe in a folder of its own (a fresh MLflow store each); {name: folder}."""
    runs = {}
    with restored_tracking_uri(), pytest.MonkeyPatch.context() as patch:
        for name, overrides in RECIPES.items():
            folder = tmp_path_factory.mktemp(name)
            shutil.copy(empty_store, folder / "mlflow.db")
            params = tiny_params(mirror, mlflow={"log_model": False})  # tested in test_serving
            params["train"]["epochs"] = 2
            (folder / "params.yaml").write_text(
                yaml.safe_dump(with_overrides(params, overrides), sort_keys=False)
            )
            patch.chdir(folder)
            patch.setenv("DVC_ROOT", str(folder))
            patch.setenv("DVC_EXP_NAME", name)
            # mlflow.set_tracking_uri sets it: the runs go to this folder's store
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
            loaded = params_module.load()
            for stage in STAGES:
                runpy.run_path(str(REPO / "stages" / f"{stage}.py"))["main"](loaded)
            runs[name] = folder
    return runs


def mlflow_run(folder: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    return client.get_run(read_json(folder / "models/mlflow_run.json")["run_id"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_and_is_recorded(recipe_runs: dict, name: str) -> None:
    folder = recipe_runs[name]
    evaluation = read_json(folder / "reports/evaluation.json")
    assert 0 <= evaluation["test"]["accuracy"] <= 1
    assert 0 <= evaluation["baseline"]["test"]["accuracy"] <= 1
    run = mlflow_run(folder)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == name
    for override in RECIPES[name]:  # every override is what the run records
        key, _, text = override.partition("=")
        assert value(run.data.params[key]) == value(text), key
    assert "test/accuracy" in run.data.metrics and "baseline/accuracy" in run.data.metrics


def pretrained_dir(folder: Path, repo_id: str = "openai-community/gpt2") -> Path:
    return folder / "models/pretrained" / repo_id


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "models/finetuned/model.safetensors"))


def block_of(name: str) -> int | None:
    found = re.match(r"gpt\.h\.(\d+)\.", name)
    return int(found.group(1)) if found else None


# Which blocks each recipe trains (3-block model; params.yaml trains the last one), and what
# else: ln_f with any block; the embeddings too in a full fine-tune; LoRA only its targets.
TRAINED_BLOCKS = {
    "head-only": set(),
    "two-blocks": {1, 2},
    "full": {0, 1, 2},
    "lora": {0, 1, 2},  # adapters merged into the weights
    "mean-pool": {2},
    "auto-thresh": {2},
}
TRAINED_OTHERS = {"head-only": (), "lora": (), "full": ("gpt.wte.", "gpt.wpe.", "gpt.ln_f.")}


def trains(recipe: str, name: str) -> bool:
    """Does the recipe train this tensor of the GPT-2 (not the head)?"""
    others = TRAINED_OTHERS.get(recipe, ("gpt.ln_f.",))
    return block_of(name) in TRAINED_BLOCKS[recipe] or name.startswith(others)


@pytest.mark.parametrize("name", sorted(TRAINED_BLOCKS))
def test_trained_tensors_changed_and_frozen_ones_kept_the_pretrained_weights(
    recipe_runs: dict, name: str
) -> None:
    """The saved tensors, read from model.safetensors: the head and what the recipe trains,
    each different from the pretrained one; the model that classify and evaluate load has
    every other tensor byte-equal to the pretrained file's."""
    folder = recipe_runs[name]
    gpt = GPT2.from_pretrained(pretrained_dir(folder))
    pretrained = {f"gpt.{k}": v for k, v in gpt.state_dict().items()}
    saved = saved_tensors(folder)
    assert {block_of(n) for n in saved} - {None} == TRAINED_BLOCKS[name]
    assert {"head.weight", "head.bias"} <= set(saved)
    assert all(trains(name, n) for n in saved if not n.startswith("head."))
    changed = {n for n, t in saved.items() if n in pretrained and not torch.equal(t, pretrained[n])}
    if name == "lora":  # its targets' weights, in every block
        assert {block_of(n) for n in changed} == TRAINED_BLOCKS[name]
    else:
        assert changed == set(saved) - {"head.weight", "head.bias"}
    model, _ = classifier.load(folder / "models/finetuned", folder / "models/pretrained")
    for n, t in model.state_dict().items():
        if n in pretrained and not trains(name, n):
            assert n not in saved
            assert t.numpy().tobytes() == pretrained[n].numpy().tobytes(), n


def test_random_init_keeps_every_tensor(recipe_runs: dict) -> None:
    """Nothing of a random model can be re-read from the pretrained file: every tensor is
    saved; the frozen ones are GPT2.init_random's at model.init_seed, byte for byte, and the
    trained ones (the last block, ln_f) moved away from them."""
    folder = recipe_runs["random-init"]
    meta = read_json(folder / "models/finetuned/classifier.json")
    assert meta["pretrained"] is False and meta["full"] is True
    params = yaml.safe_load((folder / "params.yaml").read_text())
    config = GPTConfig.from_json(pretrained_dir(folder) / "config.json")
    with torch.random.fork_rng():
        torch.manual_seed(params["model"]["init_seed"])
        init = {f"gpt.{k}": v for k, v in GPT2.init_random(config).state_dict().items()}
    saved = saved_tensors(folder)
    assert set(saved) == set(init) | {"head.weight", "head.bias"}
    for n, t in init.items():
        if block_of(n) == 2 or n.startswith("gpt.ln_f."):
            if n.endswith("attn.bias"):  # the causal mask, a buffer
                continue
            assert not torch.equal(saved[n], t), n
        else:
            assert saved[n].numpy().tobytes() == t.numpy().tobytes(), n


def test_mean_pool_and_medium_use_their_settings(recipe_runs: dict) -> None:
    assert read_json(recipe_runs["mean-pool"] / "models/finetuned/classifier.json")["pooling"] == (
        "mean"
    )
    medium = recipe_runs["medium"]
    weights = read_json(medium / "metrics/weights.json")
    assert weights["repo_id"] == "openai-community/gpt2-medium"
    assert (
        read_json(medium / "models/pretrained/openai-community/gpt2-medium/config.json")["n_layer"]
        == 4
    )


def probabilities(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, class probabilities) of a split, recomputed here from the saved model over
    the cached trunk, as evaluate computes them (its logits divided by evaluate's
    temperature)."""
    model, _ = classifier.load(folder / "models/finetuned", folder / "models/pretrained")
    n_frozen = read_json(folder / "data/trunk/info.json")["frozen_blocks"]
    inputs = ModelInputs(trunk.load(folder / f"data/trunk/{split}.safetensors"), n_frozen)
    logits = classifier.class_logits(model, inputs, Compute(CPU, "fp32")).numpy()
    temperature = evaluated_temperature(folder) or 1.0
    probs = results.calibrated_probabilities(SingleLabel(SMS), logits, temperature)
    labels = tokenized.load(folder / f"data/tokens/{split}.safetensors").labels.numpy()
    return labels, probs


def test_auto_threshold_is_the_best_on_validation(recipe_runs: dict) -> None:
    evaluation = read_json(recipe_runs["auto-thresh"] / "reports/evaluation.json")
    threshold = evaluation["threshold"]
    assert threshold == evaluation["best_val_threshold"]
    labels, both = probabilities(recipe_runs["auto-thresh"], "val")
    # these are the probabilities evaluate had: its validation report comes out of them
    assert task_for(SMS).report(labels, both, threshold) == evaluation["val"]
    probs = both[:, 1]

    def spam_f1(t: float) -> float:
        predicted = probs >= t
        tp = int(np.sum(predicted & (labels == 1)))
        return 2 * tp / (np.sum(predicted) + np.sum(labels == 1))

    # every threshold predicts as one of the distinct probabilities does
    best = max(spam_f1(t) for t in np.unique(probs))
    assert spam_f1(threshold) == pytest.approx(best, abs=1e-12)
    assert evaluation["val"]["spam"]["f1"] == pytest.approx(best, abs=1e-12)
    assert read_json(recipe_runs["head-only"] / "metrics/eval.json")["threshold"] == 0.5


def threshold_that_matters(probs: np.ndarray) -> float:
    """A threshold away from 0.5 (classify's fallback) and from every probability, with as
    many of them as can be between it and 0.5: those messages tell which one was used."""
    p = np.unique(probs)
    gaps = [(a + b) / 2 for a, b in itertools.pairwise(p) if b - a > 1e-4]
    gaps = [t for t in gaps if abs(t - 0.5) > 1e-4]
    return float(max(gaps, key=lambda t: np.sum((probs - t) * (probs - 0.5) < 0)))


def test_classify_agrees_with_evaluate_and_uses_its_threshold(
    recipe_runs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """evaluate re-run (in a copy of a recipe's workspace) with a threshold that splits the
    test messages otherwise than 0.5 does; then `spamgpt classify` on them (the whole model,
    no trunk cache) gives evaluate's probabilities and labels them at evaluate's threshold."""
    source = recipe_runs["auto-thresh"]
    folder = Path(shutil.copytree(source, tmp_path / "copy"))
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as db, db:
        # the copy's run keeps its artifacts in the copy
        db.execute(
            "UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (str(source), str(folder))
        )
    test = readers.read_split(folder / "data/split/test.csv")
    evaluated = probabilities(folder, "test")[1][:, 1]
    threshold = threshold_that_matters(evaluated)
    between = (evaluated - threshold) * (evaluated - 0.5) < 0
    assert between.any()
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["evaluate"]["threshold"] = threshold
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DVC_ROOT", str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with restored_tracking_uri():
        runpy.run_path(str(REPO / "stages/evaluate.py"))["main"](params_module.load())
    assert read_json(folder / "metrics/eval.json")["threshold"] == threshold

    cli.main(["classify", "--json", "--device", "cpu", "--precision", "fp32", *test["text"]])
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["text"] for a in answers] == list(test["text"])
    classified = np.array([a["spam_probability"] for a in answers])
    np.testing.assert_allclose(classified, evaluated, rtol=0, atol=2e-6)  # rounded to 6 places
    labels = [a["label"] for a in answers]
    assert labels == list(pd.read_csv(folder / "metrics/confusion_test.csv")["predicted"])
    assert labels == ["spam" if p >= threshold else "ham" for p in evaluated]
    misclassified = readers.read_split(folder / "reports/misclassified_test.csv")
    by_line = dict(zip(test["line"], classified, strict=True))
    for line, p in zip(misclassified["line"], misclassified["spam_probability"], strict=True):
        assert by_line[line] == pytest.approx(p, abs=2e-6)


def test_reference_recipe_keeps_duplicates_and_splits_80_10_10(recipe_runs: dict) -> None:
    split = read_json(recipe_runs["reference"] / "metrics/data.json")
    sizes = {s: sum(split[s].values()) for s in ("train", "val", "test")}
    total = sum(sizes.values())
    assert split["duplicates_removed"] == 0 and total == split["raw_rows"]
    assert sizes["test"] == pytest.approx(0.1 * total, abs=2)
    assert sizes["val"] == pytest.approx(0.1 * total, abs=2)


def test_cost_policy_recipe_takes_the_highest_recall_within_its_fpr(recipe_runs: dict) -> None:
    """{max_fpr: 0.5}: the validation FPR and recall eval.json records are those of its
    threshold, recomputed from the probabilities evaluate had; every lower threshold (more
    recall) has too many false positives; MLflow has the same figures."""
    folder = recipe_runs["cost-policy"]
    evaluation = read_json(folder / "reports/evaluation.json")
    threshold, reached = evaluation["threshold"], evaluation["val_at_threshold"]
    assert read_json(folder / "metrics/eval.json")["val_at_threshold"] == reached  # compared
    labels, both = probabilities(folder, "val")
    assert task_for(SMS).report(labels, both, threshold) == evaluation["val"]
    spam, ham = labels == 1, labels == 0

    def fpr(t: float) -> float:
        return float(np.sum((both[:, 1] >= t) & ham) / np.sum(ham))

    def recall(t: float) -> float:
        return float(np.sum((both[:, 1] >= t) & spam) / np.sum(spam))

    assert reached["fpr"] == pytest.approx(fpr(threshold)) and reached["fpr"] <= 0.5
    assert reached["recall"] == pytest.approx(recall(threshold))
    assert reached["recall"] == pytest.approx(evaluation["val"]["spam"]["recall"])
    assert reached["precision"] == pytest.approx(evaluation["val"]["spam"]["precision"])
    lower = [t for t in np.unique(both[:, 1]) if t < threshold]  # more recall, or more fp only
    assert all(fpr(t) > 0.5 or recall(t) == reached["recall"] for t in lower)
    logged = mlflow_run(folder).data.metrics
    assert {k: logged[f"val/threshold_{k}"] for k in reached} == pytest.approx(reached)
    assert logged["test/threshold"] == threshold


def test_long_run_recipe_evaluates_every_5_updates_of_16_messages(recipe_runs: dict) -> None:
    folder = recipe_runs["long-run"]
    n_train = len(readers.read_split(folder / "data/split/train.csv"))
    per_epoch = math.ceil(n_train / (4 * 4))  # updates of batch_size x accumulation_steps
    losses = pd.read_csv(folder / "metrics/train_loss.csv")
    evaluations = pd.read_csv(folder / "metrics/val_epochs.csv")
    steps, last = list(evaluations["step"]), len(losses)
    assert steps == list(range(5, last + 1, 5)) + ([last] if last % 5 else [])
    assert list(evaluations["epoch"]) == [math.ceil(step / per_epoch) for step in steps]
    assert last == 2 * per_epoch or last == steps[-1] < 2 * per_epoch  # or stopped early
    train = read_json(folder / "metrics/train.json")
    best = evaluations.iloc[0]  # train.select_metric val_loss, by more than min_delta 0.001
    for _, evaluation in evaluations.iterrows():
        if evaluation["val_loss"] < best["val_loss"] - 0.001:
            best = evaluation
    assert (train["best_step"], train["best_epoch"]) == (best["step"], best["epoch"])
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    history = client.get_metric_history(mlflow_run(folder).info.run_id, "val/loss")
    assert sorted(m.step for m in history) == steps  # at the optimizer step, as train/loss
