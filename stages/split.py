"""split: parse the raw messages strictly, drop duplicate texts, and split train/val/test: at
random, by a split column, or as given in separate files (spamgpt.data.splits)."""

from spamgpt import atomic, contracts, paths, stage
from spamgpt.data import readers, splits
from spamgpt.params import Params


def main(params: Params) -> None:
    frames, report = splits.split_dataset(params.data, params.split)
    # The report written in the block: should it fail, the old split files stay.
    with atomic.replaced_dir(paths.SPLIT_DIR) as folder:
        for name, part in frames.items():
            readers.write_split(part, paths.split_file(name, folder))
        contracts.write_data_report(report)


if __name__ == "__main__":
    stage.run(main)
