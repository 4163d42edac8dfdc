"""What every stage script shares: validated params, logging, one-line errors, an exit
that skips the interpreter's last garbage collection (the collector's threshold during a stage
is spamgpt/__init__.py's), and the timeline of its phases (reports/timelines/<stage>.json)."""

import atexit
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from spamgpt import atomic, interrupts, paths
from spamgpt import params as params_module
from spamgpt.errors import SpamGPTError
from spamgpt.params import Params

log = logging.getLogger("spamgpt")


def process_started() -> float:
    """When this process started, on time.perf_counter()'s clock: from /proc on Linux (the
    interpreter's own start and the imports count), else now (this module's import)."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat", encoding="ascii") as f:  # field 22: start, clock ticks
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return now
    return now - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


STARTED = process_started()
NAME = Path(sys.argv[0]).stem  # the stage: its script's name
# The stage's phases so far: (name, seconds since the process started); the first, imports,
# lasts until run() is called.
PHASES: list[tuple[str, float]] = [("imports", 0.0)]


def phase(name: str) -> None:
    """The current phase ends, `name` begins (load, train, save, log, ...)."""
    PHASES.append((name, time.perf_counter() - STARTED))


def timeline() -> list[dict]:
    """Each phase so far: its name, start and seconds (the current one's until now)."""
    ends = [start for _, start in PHASES[1:]] + [time.perf_counter() - STARTED]
    return [
        {"phase": name, "start_s": round(start, 3), "seconds": round(end - start, 3)}
        for (name, start), end in zip(PHASES, ends, strict=True)
    ]


def timeline_metrics() -> dict[str, float]:
    """The timeline so far as MLflow metrics, timeline/<stage>/<phase>_s (a phase named twice
    adds up): finetune's and evaluate's in the same run."""
    metrics: dict[str, float] = {}
    for entry in timeline():
        key = f"timeline/{NAME}/{entry['phase']}_s"
        metrics[key] = round(metrics.get(key, 0.0) + entry["seconds"], 3)
    return metrics


def write_timeline() -> None:
    """reports/timelines/<stage>.json: the stage's phases, once its main() returned."""
    atomic.write_json(paths.timeline(NAME), {"stage": NAME, "phases": timeline()})


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
    phase("params")
    try:
        loaded = params_module.load()
        phase("main")  # a stage's own phases follow
        main(loaded)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0's (not importing torch)
            write_timeline()
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
