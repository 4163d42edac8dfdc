"""The fine-tuned classifier as an MLflow pyfunc model: `mlflow models serve`, the registry.

Two forms (params.yaml's mlflow.log_model):

- light (`true`, the default): the model holds what was trained (models/finetuned as it is:
  the trained tensors, classifier.json, the tokenizer files) and the identity of the base
  weights (repo id, revision, hub URL, sha256 of model.safetensors). Loading it finds the base
  in the workspace's models/pretrained/<repo_id> (under the current directory or the
  repository root) if its hash matches, else puts it into a cache folder ($SPAMGPT_CACHE,
  default ~/.cache/spamgpt) as download_weights does (spamgpt.data.hub.fetch_file: the Hugging
  Face cache, else the hub with $HF_TOKEN; $HF_HUB_OFFLINE honoured) and verifies it
  (spamgpt.serve.loader, which loads every model). A few MB per experiment.
- full (`full`, or whenever the model is registered): every tensor; serving needs neither
  the workspace nor the hub.

The model is logged as code (python_model is spamgpt/serve/mlflow_model.py, which sets a
TextClassifierModel): nothing is pickled. The spamgpt package goes with it. With mlflow.serve
onnx or onnx-int8 it also carries the ONNX graph (spamgpt.serve.export) and scores with
onnxruntime: the same input, fields, cut, threshold and answers, no base weights needed.

    mlflow models serve -m runs:/<run_id>/model --env-manager local -p 5001
    curl -d '{"inputs": ["WIN a prize now", "see you at 7"]}' -H 'Content-Type: application/json' \
        localhost:5001/invocations
    {"predictions": [{"label": "spam", "spam_probability": 0.98}, ...]}
"""

import dataclasses
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import pydantic
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array, Map, Object, Property
from mlflow.types.type_hints import TypeFromExample

import spamgpt
from spamgpt import labels, paths, runtime
from spamgpt.data import tokenized, tokenizer
from spamgpt.data.batching import ModelInputs, inference_tokens, sorted_order
from spamgpt.errors import SpamGPTError
from spamgpt.model import classifier
from spamgpt.serve import loader
from spamgpt.serve.loader import ARTIFACT, BASE_JSON, BaseWeights
from spamgpt.tasks.registry import task_for
from spamgpt.texts import TextFields, Truncation

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

CPU = torch.device("cpu")
# mlflow.serve: what the logged model scores with. onnx, onnx-int8: the model also carries the
# ONNX graph (spamgpt.serve.export) as this artifact and scores with onnxruntime; the classifier
# folder then gives the tokenizer, fields, cut and classes, not weights.
RUNTIMES = ("pytorch", "onnx", "onnx-int8")
ONNX_ARTIFACT = "onnx"
# The file MLflow runs to build the model (models from code): it calls mlflow.models.set_model.
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# What the served model's code imports besides MLflow and MLflow's own requirements (pydantic,
# pyyaml): the classifier's, and tqdm by way of spamgpt.data.download (tests/test_serving.py).
REQUIREMENTS = ("torch", "tiktoken", "safetensors", "numpy", "pandas", "tqdm")
ONNX_REQUIREMENTS = ("onnxruntime",)  # a model logged with an ONNX graph, besides
INPUT_EXAMPLE = ["FREE entry to win a prize, txt WIN to 80086", "see you at 7"]


class Prediction(pydantic.BaseModel):
    """One message's answer (classifier.answers); MLflow derives the output signature from
    these fields. The positive class's probability, `spam_probability` for SMS, is an extra
    field named after the class; the classes are in the model's metadata."""

    model_config = pydantic.ConfigDict(extra="allow")
    label: str
    probability: float
    probabilities: dict[str, float]


class MultiLabelPrediction(pydantic.BaseModel):
    """One message's answer of a multi-label model (multilabel.answers): the labels at or over
    their thresholds, and every label's probability."""

    labels: list[str]
    probabilities: dict[str, float]


class NumberPrediction(pydantic.BaseModel):
    """One text's answer of a regression model (data.label_format: number): its number."""

    prediction: float


class TextClassifierModel(PythonModel):
    """Each message's label (at the threshold logged in model_config, where the classes have
    a positive one), its probability and every class's: classifier.answers."""

    answer_type: type[pydantic.BaseModel] = Prediction

    def load_context(self, context: PythonModelContext) -> None:
        folder = Path(context.artifacts[ARTIFACT])
        self.session = None
        if ONNX_ARTIFACT in context.artifacts:  # onnxruntime scores: no PyTorch weights
            import onnxruntime

            meta = json.loads((folder / classifier.CLASSIFIER_JSON).read_text(encoding="utf-8"))
            self.enc = tokenizer.load(folder)
            self.session = onnxruntime.InferenceSession(context.artifacts[ONNX_ARTIFACT])
        else:
            loaded = loader.load_artifact(folder)
            self.model, meta, self.enc = loaded.model, loaded.meta, loaded.enc
        self.classes = classifier.classes_of(meta)
        self.max_length = meta["max_length"]
        self.fields = TextFields.from_dict(meta)
        self.truncation = Truncation.from_dict(meta)
        self.threshold = context.model_config["threshold"]
        # A GPU where there is one, as `spamgpt classify` does; model_config={"device": "cpu"}
        # (mlflow.pyfunc.load_model) chooses. bf16 or fp16 where the device computes it fast.
        asked = context.model_config.get("device", "auto")
        device = runtime.resolve_device(asked, "model_config device")
        self.compute = runtime.Compute(device, runtime.resolve_precision("auto", device))
        if self.session is None:
            self.model.to(device)

    # MLflow infers the signature from these hints and turns a one-column DataFrame into a list.
    def predict(
        self,
        context: PythonModelContext,
        model_input: list[str],
        params: dict[str, Any] | None = None,
    ) -> list[Prediction]:
        column = self.fields.columns[0]
        return self._answers([self.fields.join({column: text}) for text in model_input])

    def _answers(self, texts: list[str]) -> list:
        if not texts:  # classify_texts needs at least one message
            return []
        if self.session is not None:
            ids = tokenized.pack_ids(
                tokenized.encode(self.enc, texts), self.max_length, self.truncation
            )
            probs = torch.from_numpy(onnx_probabilities(self.session, ModelInputs(ids, None)))
            answers = classifier.answers(probs, self.classes, self.threshold)
            return [self.answer_type(**a) for a in answers]
        probs, _ = classifier.classify_texts(
            self.model, self.enc, texts, self.max_length, self.compute, self.truncation
        )
        answers = classifier.answers(probs, self.classes, self.threshold)
        return [self.answer_type(**a) for a in answers]


class FieldsClassifierModel(TextClassifierModel):
    """The same for a model whose text is made of several fields (data.text_column a list):
    a DataFrame with those columns, or one JSON object per message; the signature names
    them, and each row's fields are joined by the model's template."""

    def predict(
        self,
        context: PythonModelContext,
        model_input: TypeFromExample,  # a DataFrame, as the input example is
        params: dict[str, Any] | None = None,
    ) -> list[Prediction]:
        frame = pd.DataFrame(model_input)
        missing = [c for c in self.fields.columns if c not in frame.columns]
        if missing:
            raise SpamGPTError(
                f"each message needs the fields {', '.join(self.fields.columns)}; "
                f"{missing[0]!r} is missing"
            )
        rows = frame[list(self.fields.columns)].astype(str).to_dict(orient="records")
        return self._answers([self.fields.join(row) for row in rows])


class MultiLabelClassifierModel(TextClassifierModel):
    """A multi-label model's: each message's labels and every label's probability."""

    answer_type = MultiLabelPrediction

    def predict(
        self,
        context: PythonModelContext,
        model_input: list[str],
        params: dict[str, Any] | None = None,
    ) -> list[MultiLabelPrediction]:
        return super().predict(context, model_input, params)


class MultiLabelFieldsClassifierModel(FieldsClassifierModel):
    """A multi-label model of several text fields."""

    answer_type = MultiLabelPrediction

    def predict(
        self,
        context: PythonModelContext,
        model_input: TypeFromExample,
        params: dict[str, Any] | None = None,
    ) -> list[MultiLabelPrediction]:
        return super().predict(context, model_input, params)


class NumberModel(TextClassifierModel):
    """A regression model's: each text's number."""

    answer_type = NumberPrediction

    def predict(
        self,
        context: PythonModelContext,
        model_input: list[str],
        params: dict[str, Any] | None = None,
    ) -> list[NumberPrediction]:
        return super().predict(context, model_input, params)


class NumberFieldsModel(FieldsClassifierModel):
    """A regression model of several text fields."""

    answer_type = NumberPrediction

    def predict(
        self,
        context: PythonModelContext,
        model_input: TypeFromExample,
        params: dict[str, Any] | None = None,
    ) -> list[NumberPrediction]:
        return super().predict(context, model_input, params)


# Each task's pyfunc models (one text, several fields), by the data.label_format its
# model_config names (Task.serving_config); one without it: single-label, or multi-label
# where it says multi_label (as every multi-label model logged so far does)
MODELS: dict[str, tuple[type[TextClassifierModel], type[FieldsClassifierModel]]] = {
    "single": (TextClassifierModel, FieldsClassifierModel),
    "multi": (MultiLabelClassifierModel, MultiLabelFieldsClassifierModel),
    "number": (NumberModel, NumberFieldsModel),
}


def model_for(config: dict) -> TextClassifierModel:
    """The pyfunc model of a logged model_config: several text fields take a DataFrame; a
    multi-label model answers label sets, a regression model numbers."""
    kind = config.get("label_format") or ("multi" if config.get("multi_label") else "single")
    one_text, fields = MODELS[kind]
    return fields() if config.get("text_columns") else one_text()


# The signature types of the answers' fields (Prediction and its kin), as MLflow infers them
# from a one-text model's predict hints.
ANSWER_FIELD_TYPES = {
    str: DataType.string,
    float: DataType.double,
    dict[str, float]: Map(DataType.double),
    list[str]: Array(DataType.string),
}


def answers_schema(answer_type: type[pydantic.BaseModel]) -> Schema:
    """A signature's outputs for a list of `answer_type`: one object column of its fields, as
    MLflow infers a one-text model's from predict's hints (a fields model's input hint is the
    example's DataFrame, from which MLflow infers no outputs)."""
    properties = [
        Property(name, ANSWER_FIELD_TYPES[field.annotation])
        for name, field in answer_type.model_fields.items()
    ]
    return Schema([ColSpec(Object(properties))])


def onnx_probabilities(session: "InferenceSession", inputs: ModelInputs) -> np.ndarray:
    """Class probabilities (N, classes) of token-id messages from an ONNX graph of
    spamgpt.serve.export, batched as classifier.class_probabilities batches them on a CPU but
    each batch of one padded width (no message padded past its own: onnxruntime spent more
    on padding to a batch's longest than on the calls it saved, docs/serving.md). A
    message's probabilities are its own whatever its batch-mates: an fp32 graph's to float
    rounding, an int8 graph's too (export.per_row_activations)."""
    out = np.empty((len(inputs), session.get_outputs()[0].shape[1]), dtype=np.float32)
    for indices in sorted_order(inputs.sequences.lengths, inference_tokens(CPU), one_width=True):
        ids, lengths = inputs.batch(indices)
        feed = {"input_ids": ids.numpy(), "lengths": lengths.numpy()}
        out[indices.numpy()] = session.run(None, feed)[0]
    return out


def log_model(
    run_id: str,
    finetuned_dir: str | os.PathLike,
    threshold: float | dict[str, float] | None,
    registered_model_name: str | None = None,
    pretrained_root: str | os.PathLike = paths.PRETRAINED_DIR,
    base: BaseWeights | None = None,
    full: bool = False,
    loaded: tuple[classifier.GPT2Classifier, dict] | None = None,
    onnx_file: str | os.PathLike | None = None,
    temperature: float | dict[str, float] | None = None,
    shift: dict[str, float] | None = None,
) -> str:
    """Log the classifier in `finetuned_dir` as model "model" of run `run_id` (and register it
    under `registered_model_name`); returns the model's runs:/ URI. Light (the trained
    tensors and `base`, the identity of the weights under them) unless `full` or registered,
    or the folder already holds every tensor. `loaded`: classifier.load(finetuned_dir), if
    the caller has it, saves loading it again to write the full form. `onnx_file`: the
    model's ONNX graph (spamgpt.serve.export, float or int8), carried and scored with onnxruntime
    (mlflow.serve: onnx, onnx-int8). `temperature` (and platt's `shift`): evaluate's, written
    into the model's classifier.json, which classifier.load folds into the head (the served
    probabilities are the calibrated ones). The run's status stays as it was."""
    labels.check_threshold_values(threshold, "threshold")
    finetuned_dir = Path(finetuned_dir)
    full = full or registered_model_name is not None
    # The installed versions, without local labels such as +cpu that PyPI does not serve.
    packages = REQUIREMENTS + (ONNX_REQUIREMENTS if onnx_file is not None else ())
    pins = [f"{name}=={metadata.version(name).split('+')[0]}" for name in packages]
    artifacts = {} if onnx_file is None else {ONNX_ARTIFACT: str(onnx_file)}
    status = MlflowClient().get_run(run_id).info.status
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ARTIFACT  # the name it keeps inside the model's artifacts
        meta = json.loads((finetuned_dir / classifier.CLASSIFIER_JSON).read_text(encoding="utf-8"))
        fields = TextFields.from_dict(meta)
        several = len(fields.columns) > 1
        task = task_for(classifier.classes_of(meta))
        config = {
            "threshold": threshold,
            "device": "auto",
            **({"text_columns": list(fields.columns)} if several else {}),
            **task.serving_config(),
        }
        if several:  # each field a string column in, the answers out; the example a DataFrame
            example = pd.DataFrame({c: INPUT_EXAMPLE for c in fields.columns})
            columns = Schema([ColSpec(DataType.string, c) for c in fields.columns])
            signature = ModelSignature(columns, answers_schema(model_for(config).answer_type))
        else:  # from predict's type hints (list[str] in, list[Prediction] out), and no
            # example: MLflow would load the model twice to run it (the output against the
            # hints, then as a server), seconds of evaluate for a schema the hints already give
            example, signature = None, None
        _model_folder(finetuned_dir, meta, folder, pretrained_root, base, full, loaded)
        if temperature is not None:  # the tensors stay models/finetuned's own
            config_file = folder / classifier.CLASSIFIER_JSON
            written = json.loads(config_file.read_text(encoding="utf-8"))
            written[classifier.TEMPERATURE] = temperature
            if shift is not None:
                written[classifier.SHIFT] = shift
            config_file.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
        # MLflow logs a model into the active run (and its experiment); the run is left in
        # the status it had: a finished one stays finished, evaluate's running one running.
        mlflow.start_run(run_id=run_id)
        try:
            # With fields, MLflow runs the input example through the model loaded as a server
            # loads it (load_context on the artifacts): a check that the DataFrame serves.
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={ARTIFACT: str(folder), **artifacts},
                code_paths=[str(Path(spamgpt.__file__).parent)],
                input_example=example,
                signature=signature,
                metadata=classifier.classes_of(meta).to_dict(),  # the class names, in order
                model_config=config,
                pip_requirements=pins,
                registered_model_name=registered_model_name,
            )
        finally:
            mlflow.end_run(status)
    return f"runs:/{run_id}/model"


def _model_folder(
    finetuned_dir: Path,
    meta: dict,
    dest: Path,
    pretrained_root: str | os.PathLike,
    base: BaseWeights | None,
    full: bool,
    loaded: tuple[classifier.GPT2Classifier, dict] | None,
) -> None:
    """Write the model's artifact folder: models/finetuned as it is plus base.json (light),
    or a self-contained copy with every tensor (full); `meta` is its classifier.json."""
    if meta["full"]:  # a randomly initialised base: the folder already holds everything
        full, base = False, None
    if full:
        dest.mkdir()
        loaded = loaded or classifier.load(finetuned_dir, pretrained_root)
        classifier.save(loaded[0], dest, loaded[1], finetuned_dir, full=True)
        return
    if base is None and not meta["full"]:
        raise SpamGPTError("a light model needs the identity of its base weights")
    shutil.copytree(finetuned_dir, dest)
    if base is not None:
        (dest / BASE_JSON).write_text(json.dumps(dataclasses.asdict(base), indent=2) + "\n")
