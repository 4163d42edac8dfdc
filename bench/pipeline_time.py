"""Wall time of the real pipeline: `dvc repro` with the default recipe, then an experiment.

    python bench/pipeline_time.py [--layers 12 --dim 768 --heads 12] [-S key=value ...]

Lays out GPT-2 with random weights (../shared/tools/make_gpt2_hub.py, 124M shapes by default)
and a zip of ../shared/data/SMSSpamCollection, serves both on 127.0.0.1 like the hub and UCI,
copies this pipeline into a fresh git + DVC project pointed there, and times: the data and
loaders stages, the trunk stage, finetune, evaluate (params.yaml's recipe, 5 epochs), and a
`dvc exp run -S train.lr=1e-4` that reuses the trunk; with each, the peak RSS of its processes.
For the experiment it also reports what an experiment costs beyond its training: its wall time
minus metrics/train.json's train_seconds, and how much it grows the stores (the MLflow
artifacts, mlflow.db and the DVC cache). --keep DIR leaves the project there.
"""

import argparse
import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from spamgpt import paths

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REVISION = "random-weights"  # not the real revision: its known hashes would not match


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    handler = lambda *a: QuietHandler(*a, directory=str(directory))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


# Runs a command and reports the peak RSS of its process tree (ru_maxrss of the children).
PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def timed(label: str, cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd], cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    peak_mb = int(result.stderr.split()[-1]) / 1024
    print(f"{label}: {seconds:.0f} s, peak RSS {peak_mb:.0f} MB", flush=True)
    return seconds


STORES = ("mlartifacts", "mlflow.db", ".dvc/cache")


def store_bytes(project: Path) -> int:
    """The bytes of the MLflow artifact store, mlflow.db and the DVC cache together."""
    total = 0
    for name in STORES:
        path = project / name
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        total += sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--keep", type=Path, help="copy the project here at the end")
    args = parser.parse_args()
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
    for who in ("AUTHOR", "COMMITTER"):  # dvc exp run commits: an identity on any machine
        os.environ.update({f"GIT_{who}_NAME": "bench", f"GIT_{who}_EMAIL": "bench@spamgpt.invalid"})
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

    with tempfile.TemporaryDirectory() as tmp:
        mirror, project = Path(tmp) / "mirror", Path(tmp) / "project"
        size = ["--layers", str(args.layers), "--dim", str(args.dim), "--heads", str(args.heads)]
        subprocess.run(
            [sys.executable, SHARED / "tools/make_gpt2_hub.py", mirror, *size,
             "--revision", REVISION],
            check=True, capture_output=True,
        )  # fmt: skip
        with zipfile.ZipFile(mirror / "sms.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.write(SHARED / "data/SMSSpamCollection", "SMSSpamCollection")
        with serve(mirror) as url:
            project.mkdir()
            for name in paths.PIPELINE_FILES:
                copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
                copy(ROOT / name, project / name)
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            params["data"].update(url=f"{url}/sms.zip", mirrors=[])
            params["model"].update(hub_url=url, revision=REVISION)
            for override in args.overrides:
                key, _, value = override.partition("=")
                section, _, name = key.partition(".")
                params[section][name] = yaml.safe_load(value)
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            # The stages import the copied package, not whichever checkout the venv installed.
            os.environ["PYTHONPATH"] = str(project)
            for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                        ["git", "commit", "-qm", "project"]):  # fmt: skip
                subprocess.run(cmd, cwd=project, check=True, capture_output=True)

            timed(
                "download, split, baseline, loaders",
                ["dvc", "repro", "loaders", "baseline"],
                project,
            )
            trunk = timed("trunk", ["dvc", "repro", "trunk"], project)
            train = timed("finetune", ["dvc", "repro", "finetune"], project)
            train += timed("evaluate", ["dvc", "repro"], project)
            print(f"trunk + finetune + evaluate: {trunk + train:.0f} s")
            before = store_bytes(project)
            wall = timed(
                "dvc exp run -S train.lr=1e-4",
                ["dvc", "exp", "run", "-S", "train.lr=1e-4"],
                project,
            )
            grown = (store_bytes(project) - before) / 1e6
            train = json.loads((project / "metrics/train.json").read_text())
            print(json.dumps(train))
            print(
                f"experiment outside training: {wall - train['train_seconds']:.1f} s "
                f"({wall:.1f} s wall - {train['train_seconds']} s train_seconds)"
            )
            print(f"experiment grows mlartifacts + mlflow.db + .dvc/cache by {grown:.1f} MB")
            if args.keep:
                shutil.copytree(project, args.keep, symlinks=True)


if __name__ == "__main__":
    main()
