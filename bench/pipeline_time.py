"""Wall time of the real pipeline: `dvc repro` with the default recipe, then an experiment.

    python bench/pipeline_time.py [--data SMSSpamCollection] [--tokenizer DIR]
                                  [--layers 12 --dim 768 --heads 12] [-S key=value ...]
                                  [--keep DIR] [--tiny]

GPT-2 with random weights (spamgpt.random_hub, 124M shapes by default) and the messages zipped
as UCI ships them, both served on 127.0.0.1 like the hub and UCI; this pipeline copied into a
fresh git + DVC project pointed there. It times the data and loaders stages, the trunk stage,
the label audit, finetune, evaluate (params.yaml's recipe) and a `dvc exp run -S
train.lr=1e-4` that reuses the trunk; with each, the peak RSS of its processes. For the
experiment it also reports what an experiment costs beyond its training: its wall time minus
metrics/train.json's train_seconds, and how much it grows the stores (the MLflow artifacts,
mlflow.db and the DVC cache).

--data: the SMS Spam Collection file (label<TAB>text lines); without it, generated SMS-like
messages (bench/workload.py). --tokenizer: a folder with GPT-2's vocab.json and merges.txt
(models/pretrained/openai-community/gpt2 after a `dvc repro` with the real weights), so that
messages split into the real number of tokens; without it, the random hub's small BPE.
--tiny: 2 blocks 32 wide, 300 messages, 1 epoch: that the script runs, in seconds.
"""

import argparse
import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from workload import REVISION, SMS_ROWS, make_project, serve, sms_like, start, timed

from spamgpt.random_hub import make_hub

FULL = {"layers": 12, "dim": 768, "heads": 12, "n_ctx": 1024, "rows": None}
TINY = {"layers": 2, "dim": 32, "heads": 4, "n_ctx": 64, "rows": 300}
STORES = ("mlartifacts", "mlflow.db", ".dvc/cache")


def store_bytes(project: Path) -> int:
    """The bytes of the MLflow artifact store, mlflow.db and the DVC cache together."""
    total = 0
    for name in STORES:
        path = project / name
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        total += sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())
    return total


def step(label: str, cmd: list[str], project: Path) -> float:
    seconds, peak_mb = timed(cmd, project)
    print(f"{label}: {seconds:.0f} s, peak RSS {peak_mb:.0f} MB", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="the first N messages (default: all)")
    parser.add_argument("--keep", type=Path, help="copy the project here at the end")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, 300 rows, 1 epoch")
    args, size = start(parser, TINY, FULL)
    overrides = ["train.epochs=1", *args.overrides] if args.tiny else args.overrides

    with tempfile.TemporaryDirectory() as tmp:
        mirror, project = Path(tmp) / "mirror", Path(tmp) / "project"
        make_hub(
            mirror, layers=size["layers"], dim=size["dim"], heads=size["heads"],
            n_ctx=size["n_ctx"], revision=REVISION, tokenizer=args.tokenizer,
        )  # fmt: skip
        if args.data:
            lines = args.data.read_text(encoding="utf-8").splitlines()[: size["rows"]]
        else:
            lines = sms_like(size["rows"] or SMS_ROWS)
        member = ("\n".join(lines) + "\n").encode()
        with zipfile.ZipFile(mirror / "sms.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("SMSSpamCollection", member)
        with serve(mirror) as url:
            data = {"url": f"{url}/sms.zip", "mirrors": [],
                    "sha256": hashlib.sha256(member).hexdigest()}  # fmt: skip
            make_project(project, data, {"hub_url": url, "revision": REVISION}, overrides)
            step("download, split, baseline, loaders", ["dvc", "repro", "loaders", "baseline"],
                 project)  # fmt: skip
            trunk = step("trunk", ["dvc", "repro", "trunk"], project)
            trunk += step("audit", ["dvc", "repro", "audit"], project)
            train = step("finetune", ["dvc", "repro", "finetune"], project)
            train += step("evaluate", ["dvc", "repro"], project)
            print(f"trunk + audit + finetune + evaluate: {trunk + train:.0f} s")
            before = store_bytes(project)
            experiment = ["dvc", "exp", "run", "-S", "train.lr=1e-4"]
            wall = step("dvc exp run -S train.lr=1e-4", experiment, project)
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
