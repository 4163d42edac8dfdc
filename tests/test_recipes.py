"""Every experiment recipe in the README runs: its `-S` overrides applied to params.yaml, then
each stage's main() in order, as `dvc exp run` would run them, on a 3-block toy GPT-2 (so that
0, 1, 2 blocks and all differ) served on 127.0.0.1, with gpt2-medium as a 4-block one.

In one process, so that nine pipelines cost seconds: DVC's choice of which stages an override
re-runs is tested in test_pipeline.py; here each recipe's outputs are checked."""

import json
import re
import runpy
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    STAGES,
    TINY_REVISION,
    Mirror,
    restored_tracking_uri,
    serve_mirror,
    sms_collection,
    tiny_params,
)
from mlflow.tracking import MlflowClient
from tiny_gpt2 import make_tiny_hub

from spamgpt import params as params_module


def readme_recipes() -> dict[str, list[str]]:
    """{name: ["key=value", ...]} of each `dvc exp run --temp -n NAME -S ...` line in the
    README."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
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
    make_tiny_hub(root, layers=3, revision=TINY_REVISION)
    make_tiny_hub(root, layers=4, repo_id="openai-community/gpt2-medium", revision="main")
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
def recipe_runs(mirror: Mirror, tmp_path_factory: pytest.TempPathFactory):
    """Run each recipe in a folder of its own; {name: folder}."""
    runs = {}
    with restored_tracking_uri(), pytest.MonkeyPatch.context() as patch:
        for name, overrides in RECIPES.items():
            folder = tmp_path_factory.mktemp(name)
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


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def mlflow_run(folder: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    return client.get_run(read_json(folder / "models/mlflow_run.json")["run_id"])


def trained_blocks(folder: Path) -> set[int]:
    """The blocks whose weights the fine-tuned model changed."""
    trained = read_json(folder / "models/finetuned/classifier.json")["trained"]
    return {int(m) for m in re.findall(r"\.h\.(\d+)\.", " ".join(trained))}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_and_is_recorded(recipe_runs: dict, name: str) -> None:
    folder = recipe_runs[name]
    evaluation = read_json(folder / "metrics/eval.json")
    assert 0 <= evaluation["test"]["accuracy"] <= 1
    assert 0 <= evaluation["baseline"]["test"]["accuracy"] <= 1
    run = mlflow_run(folder)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == name
    for override in RECIPES[name]:  # every override is what the run records
        key, _, text = override.partition("=")
        assert value(run.data.params[key]) == value(text), key
    assert "test/accuracy" in run.data.metrics and "baseline/accuracy" in run.data.metrics


def test_blocks_recipes_train_what_they_say(recipe_runs: dict) -> None:
    assert trained_blocks(recipe_runs["head-only"]) == set()
    assert trained_blocks(recipe_runs["two-blocks"]) == {1, 2}
    assert trained_blocks(recipe_runs["full"]) == {0, 1, 2}
    assert trained_blocks(recipe_runs["lora"]) == {0, 1, 2}  # adapters merged into the weights
    assert trained_blocks(recipe_runs["mean-pool"]) == {2}  # params.yaml: the last block


def test_random_init_keeps_every_tensor(recipe_runs: dict) -> None:
    """Nothing of a random model can be re-read from the pretrained file: all of it is saved."""
    meta = read_json(recipe_runs["random-init"] / "models/finetuned/classifier.json")
    assert meta["pretrained"] is False and meta["full"] is True


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


def test_auto_threshold_is_the_best_on_validation(recipe_runs: dict) -> None:
    evaluation = read_json(recipe_runs["auto-thresh"] / "metrics/eval.json")
    assert evaluation["threshold"] == evaluation["best_val_threshold"]
    assert read_json(recipe_runs["head-only"] / "metrics/eval.json")["threshold"] == 0.5


def test_reference_recipe_keeps_duplicates_and_splits_80_10_10(recipe_runs: dict) -> None:
    split = read_json(recipe_runs["reference"] / "metrics/data.json")
    sizes = {s: sum(split[s].values()) for s in ("train", "val", "test")}
    total = sum(sizes.values())
    assert split["duplicates_removed"] == 0 and total == split["raw_rows"]
    assert sizes["test"] == pytest.approx(0.1 * total, abs=2)
    assert sizes["val"] == pytest.approx(0.1 * total, abs=2)
