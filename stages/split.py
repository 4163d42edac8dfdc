"""split: parse the raw messages strictly, drop duplicate texts, and split train/val/test: at
random, by a split column, or as given in separate files (spamgpt.splits)."""

from spamgpt import contracts, data, paths, splits, stage
from spamgpt.params import Params


def main(params: Params) -> None:
    frames, report = splits.split_dataset(params.data, params.split)
    for name, part in frames.items():
        data.write_split(part, paths.split_file(name))
    contracts.write_data_report(report)


if __name__ == "__main__":
    stage.run(main)
