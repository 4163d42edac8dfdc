"""Time and memory of the whole pipeline against the number of messages.

    python bench/scale.py [--sizes 10000 100000 500000] [--data SMSSpamCollection]
                          [--tokenizer DIR] [--layers 2 --dim 128 --heads 4] [-S key=value ...]
                          [--tiny]

For each size N: N unique SMS-like messages (bench/workload.py: each takes a real message's
label and word count, its words drawn from the words of that class in --data, the SMS Spam
Collection file, or in a few built-in lines without it), written as a CSV a user would bring
(`id,text,label`); GPT-2 with random weights (spamgpt.random_hub, tiny shapes by default;
--tokenizer: a folder with GPT-2's vocab.json and merges.txt, else the random hub's small BPE)
served on 127.0.0.1 like the hub; this pipeline copied into a fresh git + DVC project reading
the CSV as a local file (data.format csv), train.epochs 1; then `dvc repro` one stage at a
time, each timed with the peak RSS of its processes. Prints a row per size and stage, then

    rss_ratio: the largest peak RSS of trunk, finetune and evaluate at the largest N over that
               at the smallest
    time_ratio: seconds per message of the whole pipeline at the largest N over the smallest

--tiny: 300 messages, 2 blocks 32 wide: that the script runs, in seconds.
"""

import argparse
import csv
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from workload import REVISION, ROOT, make_project, serve, sms_like, start, timed

from spamgpt.random_hub import make_hub

STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # in order
FLAT = ("trunk", "finetune", "evaluate")  # their memory must not grow with N
FULL = {"sizes": [10_000, 100_000, 500_000], "layers": 2, "dim": 128, "heads": 4, "n_ctx": 1024}
TINY = {"sizes": [300], "layers": 2, "dim": 32, "heads": 4, "n_ctx": 64}


def write_csv(path: Path, n: int, source: Path | None) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "text", "label"])
        for number, line in enumerate(sms_like(n, source), start=1):
            label, _, text = line.partition("\t")
            out.writerow([number, text, label])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--tiny", action="store_true", help="300 messages, tiny shapes")
    args, size = start(parser, TINY, FULL)
    # Shared cores (as this project's machine has): OpenMP's threads sleep at a barrier instead
    # of spinning, so the ratios measure the pipeline, not the scheduler (docs/how-it-is-fast.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    results: dict[int, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        make_hub(
            hub, layers=size["layers"], dim=size["dim"], heads=size["heads"],
            n_ctx=size["n_ctx"], revision=REVISION, tokenizer=args.tokenizer,
        )  # fmt: skip
        with serve(hub) as hub_url:
            print(f"{'messages':>9} {'stage':<17} {'seconds':>8} {'peak RSS MB':>12}", flush=True)
            for n in size["sizes"]:
                data = Path(tmp) / f"messages-{n}.csv"
                write_csv(data, n, args.data)
                project = Path(tmp) / f"project-{n}"
                csv_file = {"url": str(data), "mirrors": [], "member": None, "sha256": None,
                            "format": "csv"}  # fmt: skip
                model = {"hub_url": hub_url, "revision": REVISION}
                overrides = ["train.epochs=1", "train.device=cpu", *args.overrides]
                make_project(project, csv_file, model, overrides)
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
