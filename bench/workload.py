"""What the benchmarks run on, made from a clone alone: SMS-like messages, a local server
answering like the hub and UCI (for the random-weights GPT-2 of spamgpt.random_hub), and a
throwaway git + DVC project holding this pipeline.

The messages follow a labelled source: the SMS Spam Collection file where one is given
(`--data`, label<TAB>text lines), else the few lines of SAMPLE below. Each message takes a
source line's label and word count and draws its words from the words of that class.
"""

import argparse
import contextlib
import http.server
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from spamgpt import paths

ROOT = Path(__file__).resolve().parents[1]
REVISION = "random-weights"  # not the real revision: its known hashes would not match
SMS_ROWS = 5574  # the SMS Spam Collection's messages: the default size of generated data

SAMPLE = """\
ham\tOk lar... Joking wif u oni... see you at the station later then
ham\tI'm gonna be home soon and i don't want to talk about this stuff anymore tonight, k?
ham\tSorry, I'll call later, in a meeting till 4. Can you pick up some milk on the way home?
ham\tAre we still on for dinner tomorrow? Thanks for yesterday, it was lovely, talk soon
ham\tNah I don't think he goes to usf, he lives around here though
ham\tRunning ten mins late, traffic is awful. Don't forget mum's party on Saturday
spam\tWINNER!! As a valued network customer you have been selected to receive a £900 prize
spam\tTo claim call 09061701461. Claim code KL341. Valid 12 hours only. Reply STOP to end
spam\tFree entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121
spam\tURGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM
"""

# Runs a command and reports the peak RSS of its process tree (ru_maxrss of the children: the
# largest single process among them, in KB).
PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def sms_like(n: int, source: str | os.PathLike | None = None, seed: int = 0) -> list[str]:
    """n `label<TAB>text` lines, every text different, following `source` (None: SAMPLE)."""
    text = SAMPLE if source is None else Path(source).read_text(encoding="utf-8")
    real, words = [], {}
    for line in text.splitlines():
        label, _, message = line.partition("\t")
        real.append((label, len(message.split()) or 1))
        words.setdefault(label, []).extend(message.split())
    rng, seen, lines = random.Random(seed), set(), []
    while len(lines) < n:
        label, count = rng.choice(real)
        message = " ".join(rng.choices(words[label], k=count))
        if message not in seen:
            seen.add(message)
            lines.append(f"{label}\t{message}")
    return lines


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port); yields its URL."""
    handler = lambda *a: QuietHandler(*a, directory=str(directory))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def bench_environment() -> None:
    """No telemetry, a git identity for the project's commits, this venv's dvc first."""
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
    for who in ("AUTHOR", "COMMITTER"):
        os.environ.update({f"GIT_{who}_NAME": "bench", f"GIT_{who}_EMAIL": "bench@spamgpt.invalid"})
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def start(
    parser: argparse.ArgumentParser, tiny: dict, full: dict
) -> tuple[argparse.Namespace, dict]:
    """What a pipeline benchmark starts with: its command line, with the options they share
    (--data: the source the messages follow, --tokenizer, the random GPT-2's shape, -S
    overrides of params.yaml); its sizes, `tiny` under --tiny else `full`, each one the
    command line gives taking that value; the environment of bench_environment."""
    parser.add_argument("--data", type=Path, help="the SMS Spam Collection file")
    parser.add_argument("--tokenizer", type=Path, help="a folder with vocab.json, merges.txt")
    for name in ("layers", "dim", "heads", "n-ctx"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value")
    args = parser.parse_args()
    defaults = tiny if args.tiny else full
    size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()}
    bench_environment()
    return args, size


def make_project(path: Path, data: dict, model: dict, overrides: list[str]) -> None:
    """This pipeline in a fresh git + DVC project at `path`: params.yaml as committed with
    `data` and `model` updated, then each `section.key=value` override."""
    path.mkdir()
    for name in paths.PIPELINE_FILES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, path / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    params["model"].update(model)
    for override in overrides:
        key, _, value = override.partition("=")
        section, _, name = key.partition(".")
        params[section][name] = yaml.safe_load(value)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("mlflow.db\nmlflow.db.lock\nmlartifacts/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "project"]):  # fmt: skip
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command run in a project, which imports its own copy of
    spamgpt (not whichever checkout the venv installed)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds, int(result.stderr.split()[-1]) / 1024
