"""spamgpt: fine-tune GPT-2 as an SMS spam classifier, as a DVC pipeline tracked by MLflow."""

__version__ = "0.1.0"
