"""The fine-tuned classifier as an MLflow pyfunc model: `mlflow models serve`, the registry.

models/finetuned holds only the trained tensors and refers to models/pretrained/<repo_id> for
the rest, so log_model() logs a self-contained copy (every tensor, the tokenizer files) and the
spamgpt package as code: serving needs neither folder nor this repository.

    mlflow models serve -m runs:/<run_id>/model --env-manager local -p 5001
    curl -d '{"inputs": ["WIN a prize now", "see you at 7"]}' -H 'Content-Type: application/json' \
        localhost:5001/invocations
    {"predictions": [{"label": "spam", "spam_probability": 0.98}, ...]}
"""

import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pydantic
from mlflow.models import Model
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient

import spamgpt
from spamgpt import classifier, paths, runtime, tokenizer
from spamgpt.errors import SpamGPTError

ARTIFACT = "classifier"
# What spamgpt.classifier imports (sklearn and tqdm by way of spamgpt.data and spamgpt.trunk).
REQUIREMENTS = ("torch", "tiktoken", "safetensors", "numpy", "pandas", "scikit-learn", "tqdm")
INPUT_EXAMPLE = ["FREE entry to win a prize, txt WIN to 80086", "see you at 7"]


class Prediction(pydantic.BaseModel):
    """One message's answer (classifier.answers); MLflow derives the output signature from
    these fields. The positive class's probability, `spam_probability` for SMS, is an extra
    field named after the class; the classes are in the model's metadata."""

    model_config = pydantic.ConfigDict(extra="allow")
    label: str
    probability: float
    probabilities: dict[str, float]


class SpamClassifierModel(PythonModel):
    """Each message's label (at the threshold logged in model_config, where the classes have
    a positive one), its probability and every class's: classifier.answers."""

    def load_context(self, context: PythonModelContext) -> None:
        folder = Path(context.artifacts[ARTIFACT])
        self.model, meta = classifier.load(folder)
        self.classes = classifier.classes_of(meta)
        self.enc = tokenizer.load(folder)
        self.max_length = meta["max_length"]
        self.threshold = context.model_config["threshold"]
        # A GPU where there is one, as `spamgpt classify` does; model_config={"device": "cpu"}
        # (mlflow.pyfunc.load_model) chooses. bf16 or fp16 where the device computes it fast.
        self.device = runtime.resolve_device(context.model_config.get("device", "auto"))
        self.precision = runtime.resolve_precision("auto", self.device)
        self.model.to(self.device)

    def __getstate__(self) -> dict:
        # log_model runs load_context on this instance (to check the input example) before it
        # pickles it: keep a second copy of the weights out of python_model.pkl.
        return {}

    # MLflow infers the signature from these hints and turns a one-column DataFrame into a list.
    def predict(
        self,
        context: PythonModelContext,
        model_input: list[str],
        params: dict[str, Any] | None = None,
    ) -> list[Prediction]:
        if not model_input:  # classify_texts needs at least one message
            return []
        probs, _ = classifier.classify_texts(
            self.model, self.enc, model_input, self.max_length, self.device, self.precision
        )
        return [Prediction(**a) for a in classifier.answers(probs, self.classes, self.threshold)]


def log_model(
    run_id: str,
    finetuned_dir: str | os.PathLike,
    threshold: float | None,
    registered_model_name: str | None = None,
    pretrained_root: str | os.PathLike = paths.PRETRAINED_DIR,
) -> str:
    """Log the classifier in `finetuned_dir` as model "model" of run `run_id` (and register it
    under `registered_model_name`); returns the model's runs:/ URI. The run is named, not
    started: its status stays as it was."""
    if threshold is not None and not 0 < threshold < 1:
        raise SpamGPTError(f"threshold must be between 0 and 1, got {threshold}")
    model, meta = classifier.load(finetuned_dir, pretrained_root)
    # The installed versions, without local labels such as +cpu that PyPI does not serve.
    pins = [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]
    client = MlflowClient()
    run = client.get_run(run_id)
    # Created here in the run's experiment: MLflow would otherwise put a model logged without
    # an active run into its default experiment (./mlruns of the working directory).
    logged = client.create_logged_model(
        run.info.experiment_id, name="model", source_run_id=run_id, params=run.data.params
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ARTIFACT  # the name it keeps inside the model's artifacts
        folder.mkdir()
        classifier.save(model, folder, meta, finetuned_dir, full=True)
        del model  # log_model loads the copy again to check the input example: one at a time
        Model.log(
            artifact_path=None,  # MLflow 3 names a model instead
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=SpamClassifierModel(),
            artifacts={ARTIFACT: str(folder)},
            code_paths=[str(Path(spamgpt.__file__).parent)],
            input_example=INPUT_EXAMPLE,
            metadata=classifier.classes_of(meta).to_dict(),  # the class names, in order
            model_config={"threshold": threshold, "device": "auto"},
            pip_requirements=pins,
            registered_model_name=registered_model_name,
        )
    return f"runs:/{run_id}/model"
