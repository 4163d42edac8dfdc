"""split: parse the raw messages strictly, drop duplicate texts, split train/val/test."""

from spamgpt import contracts, data, labels, paths, stage
from spamgpt.download import sha256_file
from spamgpt.params import Params


def main(params: Params) -> None:
    d, s = params.data, params.split
    fmt = data.Format(d.format, d.text_column, d.label_column)
    allowed = None if d.labels is None else tuple(map(str, d.labels))
    parsed = data.read_messages(paths.RAW_DATA, fmt, allowed, d.bad_lines)
    classes = labels.found(parsed.frame["label"], d.labels, d.positive_label)
    frame = data.dedupe(parsed.frame) if s.dedupe else parsed.frame
    splits = data.split(frame, s.val, s.test, s.seed, classes.names)
    for name, part in splits.items():
        data.write_split(part, paths.split_file(name))
    contracts.write_data_report(
        {
            "raw_sha256": sha256_file(paths.RAW_DATA),
            "raw_rows": len(parsed.frame),
            "bad_lines": sum(parsed.bad_lines.values()),
            "bad_lines_by_reason": dict(parsed.bad_lines),
            "duplicates_removed": len(parsed.frame) - len(frame),
            **{name: data.label_counts(part, classes.names) for name, part in splits.items()},
            **classes.to_dict(),
        },
    )


if __name__ == "__main__":
    stage.run(main)
