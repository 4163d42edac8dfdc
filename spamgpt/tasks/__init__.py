"""What a model learns and how it is scored: the task interface and its tasks (single-label,
multi-label, regression), metrics, calibration."""
