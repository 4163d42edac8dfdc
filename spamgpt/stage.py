"""What every stage script shares: validated params, logging, one-line errors, and an exit
that skips the interpreter's last garbage collection (the collector's threshold during a stage
is spamgpt/__init__.py's)."""

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


def skip_exit_collection() -> None:
    """At exit, let the interpreter skip its last garbage collection over every object the
    imports made (torch, MLflow's SQLAlchemy models): a traversal of hundreds of thousands of
    objects, for memory the OS takes back anyway. Outputs are already on disk then (atomic
    writes, fsynced); gc.freeze() only moves objects out of the collector's reach."""
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
