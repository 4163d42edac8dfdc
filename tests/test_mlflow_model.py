"""spamgpt.serve.mlflow_model: the code MLflow runs to build a logged model ("models from
code") sets the pyfunc model its model_config names. (It has no function for mutmut to
mutate: its one statement runs at import; test_serving.py tests the models it makes.)"""

from pathlib import Path

import mlflow
import pytest
from test_serving import MESSAGES, THRESHOLD, finetuned_folder

from spamgpt.serve import serving
from spamgpt.serve.loader import ARTIFACT


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("mlflow_model")
    finetuned_folder(project)
    return project


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, serving.TextClassifierModel),
        ({"multi_label": True}, serving.MultiLabelClassifierModel),
        ({"label_format": "number", "text_columns": ["a", "b"]}, serving.NumberFieldsModel),
    ],
)
def test_the_model_code_sets_the_model_its_config_names(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict, expected: type
) -> None:
    """Saved as log_model logs it (python_model: the code file) and loaded as a server loads
    it: the model of model_for(model_config), its context loaded."""
    monkeypatch.chdir(project)  # models/pretrained: the fine-tuned folder's base
    mlflow.pyfunc.save_model(
        tmp_path / "model",
        python_model=str(serving.MODEL_CODE),
        artifacts={ARTIFACT: str(project / "models/finetuned")},
        model_config={"threshold": THRESHOLD, "device": "cpu", **config},
        pip_requirements=[],  # nothing inferred: that loads the model in a subprocess
    )
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    assert type(loaded.unwrap_python_model()) is expected
    if expected is serving.TextClassifierModel:
        assert [p.label for p in loaded.predict(MESSAGES)] == ["spam", "ham"]
