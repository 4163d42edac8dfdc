"""Start-up of the stage scripts: the seconds their imports take in a fresh interpreter, with
the garbage collector as spamgpt sets it in a DVC stage and with CPython's default, interleaved.

    python bench/stage_imports.py [--rounds 5] [--stages finetune evaluate] [--tiny]

Each run imports the script (runpy, not as __main__: main() does not run) and then what the
stage imports later, inside its functions (the optimizer's torch._dynamo, MLflow's SQLite
store, matplotlib, MLflow's pyfunc). Prints each stage's median seconds in both settings and
their ratio. --tiny: one round of the split stage, that the script runs.
"""

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATER = {  # what a stage imports inside its functions, in the order it does
    "finetune": ["mlflow.store.tracking.sqlalchemy_store", "torch._dynamo"],
    "evaluate": ["mlflow.store.tracking.sqlalchemy_store", "matplotlib.figure", "mlflow.pyfunc"],
}
# argv: script, then the later imports. DVC_STAGE set (as DVC sets it) or not chooses the setting.
RUN = """
import importlib, runpy, sys, time
started = time.perf_counter()
runpy.run_path(sys.argv[1], run_name="imported")
for name in sys.argv[2:]:
    importlib.import_module(name)
print(time.perf_counter() - started)
"""


def environment(stage: str, setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    return {**env, "DVC_STAGE": stage} if setting == "stage" else env


def seconds(stage: str, setting: str) -> float:
    script = ROOT / "stages" / f"{stage}.py"
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(script), *LATER.get(stage, [])],
        cwd=ROOT, capture_output=True, text=True, check=True, env=environment(stage, setting),
    )  # fmt: skip
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--stages", nargs="+")
    parser.add_argument("--tiny", action="store_true", help="one round of the split stage")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.tiny else 5)
    args.stages = args.stages or (["split"] if args.tiny else ["finetune", "evaluate"])
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for stage in args.stages:
            for setting in ("stage", "default"):
                times.setdefault((stage, setting), []).append(seconds(stage, setting))
    for stage in args.stages:
        ours, default = (statistics.median(times[stage, s]) for s in ("stage", "default"))
        print(
            f"{stage}: {ours:.2f} s with spamgpt's collector setting, {default:.2f} s with "
            f"CPython's default ({ours / default:.2f}x, median of {args.rounds})"
        )


if __name__ == "__main__":
    main()
