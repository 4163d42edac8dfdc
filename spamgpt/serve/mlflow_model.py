"""The MLflow model's code, logged as a file ("models from code", serving.log_model): MLflow
runs it to get the model instead of unpickling an object."""

import mlflow
from mlflow.models import ModelConfig

from spamgpt.serve.serving import model_for

# The model_config logged with the model (serving.log_model) says which input it takes.
mlflow.models.set_model(model_for(ModelConfig().to_dict()))
