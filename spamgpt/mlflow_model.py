"""The MLflow model's code, logged as a file ("models from code", serving.log_model): MLflow
runs it to get the model instead of unpickling an object."""

import mlflow

from spamgpt.serving import SpamClassifierModel

mlflow.models.set_model(SpamClassifierModel())
