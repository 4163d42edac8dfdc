"""What every stage script shares: validated params, logging, one-line errors, and a garbage
collector set for processes that import torch and MLflow. A stage script imports this module
before any other (`# isort: split` after it keeps it first), so the setting covers its imports."""

import atexit
import gc
import logging
import sys
from collections.abc import Callable

from spamgpt import interrupts
from spamgpt import params as params_module
from spamgpt.errors import SpamGPTError
from spamgpt.params import Params

log = logging.getLogger("spamgpt")

# Importing torch, MLflow and SQLAlchemy leaves over half a million objects alive. CPython's
# collector runs every 700 new objects by default, and traverses its older generations again
# and again as those objects pile up. Every 10 000 collects the same garbage and took finetune's
# imports from 3.79 s to 3.24 s, evaluate's from 3.32 s to 2.67 s, on a 2-core CPU
# (python bench/stage_imports.py). It stays so for the stage's lifetime.
COLLECT_EVERY = 10_000  # new objects between collections of the youngest generation
gc.set_threshold(COLLECT_EVERY, *gc.get_threshold()[1:])


def skip_exit_collection() -> None:
    """At exit, let the interpreter skip its last garbage collection over every object the
    imports made (torch, MLflow's SQLAlchemy models): it took 1.5 s of each stage's wall time
    on a 2-core CPU, for memory the OS takes back anyway. Outputs are already on disk then
    (atomic writes, fsynced); gc.freeze() only moves objects out of the collector's reach."""
    atexit.register(gc.freeze)


def run(main: Callable[[Params], None]) -> None:
    """Validate params.yaml, then run `main(params)`.

    A SpamGPTError becomes one line on stderr and its exit code (2 for params, 1 otherwise);
    so does an OSError (disk full, permission denied: exit 1), naming the file. Ctrl-C and
    SIGTERM exit 130. Other exceptions keep their traceback: they are bugs, not user errors.
    """
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    interrupts.raise_on_signals()
    skip_exit_collection()
    try:
        main(params_module.load())
    except SpamGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        print(f"interrupted ({str(e) or 'SIGINT'})", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if interrupts.received():
            print(f"interrupted ({interrupts.received()})", file=sys.stderr)
            sys.exit(130)
        if not isinstance(e, OSError):
            raise
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
