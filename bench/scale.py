"""Time and memory of the whole pipeline against the number of messages.

    python bench/scale.py [--sizes 10000 100000 500000] [--layers 2 --dim 128 --heads 4]
                          [-S key=value ...]

For each size N: N unique synthetic messages whose word counts and class balance follow
../shared/data/SMSSpamCollection (each one's words drawn from its class's words in the real
file), written as a CSV a user would bring (`id,text,label`); GPT-2 with random weights
(../shared/tools/make_gpt2_hub.py, tiny shapes by default) served on 127.0.0.1 like the hub;
this pipeline copied into a fresh git + DVC project reading the CSV as a local file
(data.format csv), train.epochs 1; then `dvc repro` one stage at a time, each timed with the
peak RSS of its processes. Prints a row per size and stage, then

    rss_ratio: the largest peak RSS of trunk, finetune and evaluate at the largest N over that
               at the smallest
    time_ratio: seconds per message of the whole pipeline at the largest N over the smallest
"""

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from pipeline_time import serve

from spamgpt import paths

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SMS = SHARED / "data/SMSSpamCollection"
REVISION = "random-weights"  # not the real revision: its known hashes would not match
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # in order
FLAT = ("trunk", "finetune", "evaluate")  # their memory must not grow with N
# Runs a command and reports the peak RSS of its process tree (ru_maxrss of the children: the
# largest single process among them, in KB).
PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def synthetic_messages(n: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """n (text, label) pairs, every text different: a real message's label and word count,
    its words drawn from the words of that class in the real file."""
    real, words = [], {}
    for line in SMS.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        real.append((label, len(text.split()) or 1))
        words.setdefault(label, []).extend(text.split())
    rng, seen = random.Random(seed), set()
    while len(seen) < n:
        label, count = rng.choice(real)
        text = " ".join(rng.choices(words[label], k=count))
        if text not in seen:
            seen.add(text)
            yield text, label


def write_csv(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "text", "label"])
        for number, (text, label) in enumerate(synthetic_messages(n), start=1):
            out.writerow([number, text, label])


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the project's copy of spamgpt, not another
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds, int(result.stderr.split()[-1]) / 1024


def make_project(path: Path, data: Path, hub_url: str, overrides: list[str]) -> None:
    path.mkdir()
    for name in paths.PIPELINE_FILES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, path / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(url=str(data), mirrors=[], member=None, sha256=None, format="csv")
    params["model"].update(hub_url=hub_url, revision=REVISION)
    params["train"].update(epochs=1, device="cpu")
    for override in overrides:
        key, _, value = override.partition("=")
        section, _, name = key.partition(".")
        params[section][name] = yaml.safe_load(value)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("mlflow.db\nmlflow.db.lock\nmlartifacts/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "project"]):  # fmt: skip
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value")
    args = parser.parse_args()
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
    # Shared cores (as this project's machine has): OpenMP's threads sleep at a barrier instead
    # of spinning, so the ratios measure the pipeline, not the scheduler (README, Speed).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for who in ("AUTHOR", "COMMITTER"):  # git commits: an identity on any machine
        os.environ.update({f"GIT_{who}_NAME": "bench", f"GIT_{who}_EMAIL": "bench@spamgpt.invalid"})
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

    results: dict[int, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        size = ["--layers", str(args.layers), "--dim", str(args.dim), "--heads", str(args.heads)]
        subprocess.run(
            [sys.executable, SHARED / "tools/make_gpt2_hub.py", hub, *size, "--revision", REVISION],
            check=True, capture_output=True,
        )  # fmt: skip
        with serve(hub) as hub_url:
            print(f"{'messages':>9} {'stage':<17} {'seconds':>8} {'peak RSS MB':>12}", flush=True)
            for n in args.sizes:
                data = Path(tmp) / f"messages-{n}.csv"
                write_csv(data, n)
                project = Path(tmp) / f"project-{n}"
                make_project(project, data, hub_url, args.overrides)
                results[n] = {}
                for stage in STAGES:
                    seconds, peak = timed(["dvc", "repro", "--single-item", stage], project)
                    results[n][stage] = seconds, peak
                    print(f"{n:>9} {stage:<17} {seconds:>8.1f} {peak:>12.0f}", flush=True)
                total = sum(s for s, _ in results[n].values())
                print(f"{n:>9} {'all':<17} {total:>8.1f} {'':>12} {1e3 * total / n:.2f} ms/message")
                shutil.rmtree(project)  # the largest trunk caches are GBs
                data.unlink()
    small, large = min(results), max(results)

    def flat_peak(n: int) -> float:
        return max(results[n][stage][1] for stage in FLAT)

    def per_message(n: int) -> float:
        return sum(s for s, _ in results[n].values()) / n

    print(f"sizes: {', '.join(map(str, sorted(results)))}")
    print(f"rss_ratio: {flat_peak(large) / flat_peak(small):.2f}")
    print(f"time_ratio: {per_message(large) / per_message(small):.2f}")


if __name__ == "__main__":
    main()
