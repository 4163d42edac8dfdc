"""spamgpt: fine-tune GPT-2 as an SMS spam classifier, as a DVC pipeline tracked by MLflow."""

import os

# torch's intra-op threads are OpenMP's, which by default spin at every barrier for a while
# before they sleep. Where other processes share the cores, a spinning thread holds the core
# its partner needs, and small operations wait on the scheduler: on 2 cores at a load of 3 to
# 5, 10-step stretches of GPT-2 124M's one-block tail took a median 40-648 ms a step spinning,
# 49-59 ms sleeping (README, "Threads that sleep while they wait"). OpenMP reads this as torch
# loads, so it is set here, before any module of the package imports torch; a value already
# in the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
