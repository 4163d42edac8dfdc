"""Evaluation: the reports, the TF-IDF baseline, the label audit, token attributions."""
