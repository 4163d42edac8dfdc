"""spamgpt: fine-tune GPT-2 as an SMS spam classifier, as a DVC pipeline tracked by MLflow."""

import gc
import os

__version__ = "0.1.0"

# New objects between collections of the youngest generation, in a pipeline stage. Importing
# torch, MLflow and SQLAlchemy leaves over half a million objects alive that are never garbage;
# at CPython's default of 700 the collector traverses them again and again as they pile up, a
# cost every stage pays at start-up (python bench/stage_imports.py measures it). DVC
# names the stage it runs in DVC_STAGE; the package is imported before any module of it, so the
# setting covers every import a stage makes through spamgpt. Other programs that import spamgpt
# (a notebook, `spamgpt classify`, the served model) keep their own setting.
COLLECT_EVERY = 10_000
if os.environ.get("DVC_STAGE"):
    gc.set_threshold(COLLECT_EVERY, *gc.get_threshold()[1:])
