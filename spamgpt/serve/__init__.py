"""Using a model: the one loader, classify/predict/export/serve, the MLflow model."""
