"""`spamgpt predict` against the classify path, on synthetic messages and random weights.

    python bench/predict.py [--device auto] [--tiny] [--cases NAME ...] [--repeat N] [--json OUT]

Cases (each a fresh model folder of random weights, self-contained):
  tiny-10k, tiny-1M: the tests' tiny GPT-2 (2 blocks, width 32) over 10 000 and 1 000 000
      messages of 3 to 20 words; 124M-10k: GPT-2 124M shapes over 10 000 short messages (2 to
      6 words: a 2-core CPU scores them in minutes). `--tiny`: 500 messages of the tiny
      model, predict and classify (what tests/test_bench.py runs).
Each case runs `spamgpt predict messages.csv -o scored.csv --keep id` as its own process, and
where a classify run is named, `spamgpt classify --file messages.txt --json` over the same
messages on the same model; both are timed from start to exit (imports, model load, reading,
scoring, writing), their CPU seconds and peak RSS read from the kernel (wait4). With
--repeat N, the cases that compare the two run them in turn N times and each keeps its
fastest run (a shared machine's load only ever slows a run) and its largest peak RSS.
The scored file is checked: every row, in input order, its id kept. Targets: predict's
messages/s at least classify's; predict's peak RSS at 1 000 000 rows within 1.5x of 10 000's.
"""

import argparse
import csv
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from spamgpt import params
from spamgpt.data import tokenizer
from spamgpt.labels import SMS
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny": {"layers": 2, "dim": 32, "heads": 4, "n_ctx": 64},
    "124M": {"layers": 12, "dim": 768, "heads": 12, "n_ctx": 1024},
}
WORDS = ["free", "prize", "call", "now", "see", "you", "at", "the", "station", "win", "txt"]
# (name, shapes, messages, words per message, also run classify)
FULL = [("tiny-10k", "tiny", 10_000, (3, 20), True), ("tiny-1M", "tiny", 1_000_000, (3, 20), False)]
FULL += [("124M-10k", "124M", 10_000, (2, 6), True)]
TINY = [("tiny-500", "tiny", 500, (3, 20), True)]


def model_folder(root: Path, shapes: str) -> Path:
    """A self-contained fine-tuned folder (every tensor) of random weights, SMS classes."""
    hub = make_hub(root / "hub", revision="bench", **SHAPES[shapes])
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(SMS))
    m = dataclasses.replace(params.load(ROOT / "params.yaml").model, pretrained=False)
    meta = classifier.classifier_meta(m, SMS, [], 64, tokenizer.load(hub).eot_token)
    folder = root / "finetuned"
    folder.mkdir()
    classifier.save(model, folder, meta, hub, full=True)
    return folder


def write_messages(root: Path, n: int, words: tuple[int, int]) -> tuple[Path, Path]:
    """The same n messages of words[0] to words[1] words as a CSV (id, text) and one per line
    (classify --file)."""
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(n)]
    table, lines = root / "messages.csv", root / "messages.txt"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts))
    lines.write_text("\n".join(texts) + "\n")
    return table, lines


# Runs a command and prints its [seconds, CPU seconds, peak RSS in KiB, exit code]. A child's
# peak RSS counts what it held between fork and exec, a copy of its parent's pages: forked
# from this process (torch, a million messages), every command would seem to hold those too.
# A fresh interpreter of a few MB forks it instead.
LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
print(json.dumps([seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, code]))
"""


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """(seconds, CPU seconds, peak RSS in MB) of a command run to its end, its output thrown
    away, as the kernel counts them (wait4)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds, cpu_seconds, rss_kib, code = json.loads(out.stdout)
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return seconds, cpu_seconds, rss_kib / 1024  # ru_maxrss is in KiB on Linux


def run_case(
    name: str,
    shapes: str,
    n: int,
    words: tuple[int, int],
    with_classify: bool,
    device: str,
    repeat: int,
) -> dict:
    spamgpt = [sys.executable, "-c", "from spamgpt.serve.cli import main; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = model_folder(root, shapes)
        table, lines = write_messages(root, n, words)
        common = ["--model", str(folder), "--device", device]
        commands = {"predict": ["predict", str(table), "-o", "scored.csv", "--keep", "id"]}
        if with_classify:
            commands["classify"] = ["classify", "--file", str(lines), "--json"]
        runs = {command: [] for command in commands}
        for _ in range(repeat if with_classify else 1):  # in turn: load falls on both alike
            for command, args in commands.items():
                runs[command].append(timed([*spamgpt, *args, *common], root))
        ids = pd.read_csv(root / "scored.csv", usecols=["id"])["id"]
        if ids.tolist() != list(range(n)):  # every row, in input order, its id kept
            sys.exit(f"{name}: scored.csv holds {len(ids)} rows, not ids 0 to {n - 1} in order")
        result = {"case": name, "messages": n, "words": list(words), "runs": len(runs["predict"])}
        for command, timings in runs.items():
            seconds, cpu_seconds, rss = zip(*timings, strict=True)
            result[f"{command}_per_s"] = round(n / min(seconds), 1)
            result[f"{command}_cpu_s"] = round(min(cpu_seconds), 2)
            result[f"{command}_rss_mb"] = round(max(rss))
        if with_classify:
            result["speed_ratio"] = round(result["predict_per_s"] / result["classify_per_s"], 2)
            # messages per CPU second: what load on other cores changes less than wall time
            result["cpu_ratio"] = round(result["classify_cpu_s"] / result["predict_cpu_s"], 2)
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--tiny", action="store_true", help="500 tiny-model messages only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cases", nargs="+", help="run only these (tiny-10k tiny-1M 124M-10k)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command, in turn")
    args = parser.parse_args(argv)
    cases = TINY if args.tiny else [c for c in FULL if args.cases is None or c[0] in args.cases]
    results = [run_case(*case, args.device, args.repeat) for case in cases]
    summary = {"speed_ratios": {r["case"]: r["speed_ratio"] for r in results if "speed_ratio" in r}}
    if len(results) >= 2 and results[1]["case"].startswith("tiny"):  # rows x10 or x100
        summary["rss_ratio"] = round(results[1]["predict_rss_mb"] / results[0]["predict_rss_mb"], 2)
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"cases": results, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
