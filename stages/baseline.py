"""baseline: TF-IDF + linear SVM on the same splits, for comparison with the fine-tuned GPT-2."""

from spamgpt import contracts, paths, stage
from spamgpt.data import readers
from spamgpt.evaluate import baseline
from spamgpt.params import Params


def main(params: Params) -> None:
    train, val, test = (readers.read_split(paths.split_file(s)) for s in paths.SPLITS)
    classes = contracts.read_classes()
    cap = params.baseline.max_train_rows
    fitted_on = baseline.sample(train, cap)
    result = baseline.evaluate(fitted_on, val, test, classes)
    stage.log.info("baseline fitted in %.2f s", result.pop("seconds"))  # a time is no metric
    contracts.write_baseline(
        {
            "threshold": baseline.threshold_for(classes),
            "train_rows": len(fitted_on),
            "max_train_rows": cap,
            **result,
        }
    )


if __name__ == "__main__":
    stage.run(main)
