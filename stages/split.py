"""split: parse the raw messages strictly, drop duplicate texts, split train/val/test."""

from spamgpt import contracts, data, paths, stage
from spamgpt.download import sha256_file
from spamgpt.params import Params


def main(params: Params) -> None:
    parsed = data.parse_messages(paths.RAW_DATA, params.data.bad_lines)
    frame = data.dedupe(parsed.frame) if params.split.dedupe else parsed.frame
    s = params.split
    splits = data.split(frame, s.val, s.test, s.seed)
    for name, part in splits.items():
        data.write_split(part, paths.split_file(name))
    contracts.write_data_report(
        {
            "raw_sha256": sha256_file(paths.RAW_DATA),
            "raw_rows": len(parsed.frame),
            "bad_lines": sum(parsed.bad_lines.values()),
            "bad_lines_by_reason": dict(parsed.bad_lines),
            "duplicates_removed": len(parsed.frame) - len(frame),
            **{name: data.label_counts(part) for name, part in splits.items()},
        },
    )


if __name__ == "__main__":
    stage.run(main)
