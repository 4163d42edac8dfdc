"""The split stage's work: train/val/test from one file split at random (split.val, split.test),
from one file with a split column (data.split_column), or given as files (data.files).

Given splits are read as strictly as one file (spamgpt.data.readers, data.bad_lines per file) and
de-duplicated within each split (split.dedupe). A text in two splits is a leak: counted per
pair of splits and, by split.cross_duplicates, removed from train (drop_from_train), kept, or
an error. A missing val is carved from train, stratified, by split.val. A class in val or test
that train lacks is an error naming the class and the files: every class needs a train example.
"""

import hashlib
import logging
import os
from collections import Counter
from itertools import combinations

import pandas as pd

from spamgpt import paths
from spamgpt.data import readers
from spamgpt.data.download import sha256_file, source_name
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.params import DataParams, SplitParams

log = logging.getLogger(__name__)


def split_dataset(d: DataParams, s: SplitParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """The train, val and test frames the split stage writes, and metrics/data.json."""
    fmt = readers.Format(
        d.format, d.text_column, d.label_column, d.text_template, d.label_format,
        d.label_separator, d.allow_empty_labels,
    )  # fmt: skip
    allowed = None if d.labels is None else tuple(map(str, d.labels))
    if d.files is None and d.split_column is None:
        return random_split(d, s, fmt, allowed)
    if d.files is not None:
        sources = {name: src.url for name, src in d.files.sources().items()}
        files = {name: paths.raw_split_file(name) for name in sources}
        _check_same_columns(files, {name: source_name(url) for name, url in sources.items()}, fmt)
        parsed = {
            name: read_source(files[name], source_name(url), fmt, allowed, d)
            for name, url in sources.items()
        }
        report = {
            "raw_sha256": combined_sha256({name: sha256_file(f) for name, f in files.items()}),
            "sources": {
                name: {
                    "source": sources[name],
                    "sha256": sha256_file(files[name]),
                    "rows": len(parsed[name].frame),
                    "bad_lines": sum(parsed[name].bad_lines.values()),
                }
                for name in sources
            },
        }
    else:
        names = {str(value): name for name, value in vars(d.split_names).items()}
        source = source_name(d.url, d.member)
        whole = read_source(paths.RAW_DATA, source, fmt, allowed, d, names)
        parsed = by_split_column(whole, d)
        sources = dict.fromkeys(parsed, d.url)
        sha256 = sha256_file(paths.RAW_DATA)
        report = {
            "raw_sha256": sha256,
            "sources": {"dataset": {"source": d.url, "sha256": sha256, "rows": len(whole.frame)}},
            "split_column": d.split_column,
        }
    frames, counts = given_splits(parsed, sources, s, d.label_format)
    classes = classes_of(frames, sources, d)
    bad = sum((p.bad_lines for p in parsed.values()), Counter())
    label_format = readers.LABEL_FORMATS[d.label_format]
    report.update(
        raw_rows=sum(len(p.frame) for p in parsed.values()),
        bad_lines=sum(bad.values()),
        bad_lines_by_reason=dict(bad),
        **counts,
        **{n: readers.label_counts(f, classes.names, d.label_format) for n, f in frames.items()},
        **classes.to_dict(),
        **label_format.conflicts([p.frame for p in parsed.values()]),
    )
    return frames, report


def random_split(
    d: DataParams, s: SplitParams, fmt: readers.Format, allowed: tuple[str, ...] | None
) -> tuple[dict[str, pd.DataFrame], dict]:
    """One file, split at random, stratified: split.val and split.test of it."""
    parsed = read_source(paths.RAW_DATA, source_name(d.url, d.member), fmt, allowed, d)
    classes = found_classes(parsed.frame["label"], d)
    frame = readers.dedupe(parsed.frame) if s.dedupe else parsed.frame
    splits = readers.split(frame, s.val, s.test, s.seed, classes.names, d.label_format)
    label_format = readers.LABEL_FORMATS[d.label_format]
    return splits, {
        "raw_sha256": sha256_file(paths.RAW_DATA),
        "raw_rows": len(parsed.frame),
        "bad_lines": sum(parsed.bad_lines.values()),
        "bad_lines_by_reason": dict(parsed.bad_lines),
        "duplicates_removed": len(parsed.frame) - len(frame),
        # multi-label: texts given two different label sets (de-duplication keeps the first)
        **label_format.conflicts([parsed.frame]),
        **{
            n: readers.label_counts(part, classes.names, d.label_format)
            for n, part in splits.items()
        },
        **classes.to_dict(),
    }


def found_classes(found: pd.Series, d: DataParams) -> Classes:
    """The classes of the labels `found` (labels.found); of numbers, the one output named
    after data.label_column."""
    label_format = readers.LABEL_FORMATS[d.label_format]
    return label_format.classes(found, d.labels, d.positive_label, d.label_column)


def read_source(
    path: str | os.PathLike,
    name: str,
    fmt: readers.Format,
    allowed: tuple[str, ...] | None,
    d: DataParams,
    split_names: dict[str, str] | None = None,
) -> readers.ParsedMessages:
    """data.read_messages of the copy at `path` of the file the user calls `name` (its errors
    name that file), saying on the console how many bad rows data.bad_lines: skip dropped.
    With `split_names`, each row's split from data.split_column."""
    split_column = None if split_names is None else d.split_column
    parsed = readers.read_messages(path, fmt, allowed, d.bad_lines, split_column, split_names, name)
    if parsed.bad_lines:
        log.info("%s", readers.skipped_summary(parsed, name))
    return parsed


def _check_same_columns(
    files: dict[str, str | os.PathLike], names: dict[str, str], fmt: readers.Format
) -> None:
    """A given split's file that lacks a column the pipeline reads while another split's file
    has it: that file is what is wrong, not data.text_column or data.label_column, so the error
    names it and the columns the other files have. (A column no file has is the setting's
    error, from data.read_rows.)"""
    needed = [*fmt.fields.columns, fmt.label_column]
    headers = {split: readers.header_columns(f, fmt.name) for split, f in files.items()}
    for split, header in headers.items():
        if header is None:
            continue
        for column in needed:
            having = [s for s, h in headers.items() if h is not None and column in h]
            if column in header or not having:
                continue
            other = having[0]
            raise SpamGPTError(
                f"{names[split]} (data.files.{split}): no column {column!r} (it has "
                f"{', '.join(header[:20])}), though {names[other]} (data.files.{other}) has "
                f"{', '.join(headers[other][:20])}: give {names[split]} the same columns"
            )


def combined_sha256(hashes: dict[str, str]) -> str:
    """One hash of several files (their names and hashes): what the runs are tagged with."""
    text = "".join(f"{name} {sha}\n" for name, sha in hashes.items())
    return hashlib.sha256(text.encode()).hexdigest()


def by_split_column(
    whole: readers.ParsedMessages, d: DataParams
) -> dict[str, readers.ParsedMessages]:
    """The rows of each split named in data.split_column; train and test must have some."""
    frame = whole.frame
    parts = {}
    for name in paths.SPLITS:
        rows = frame[frame["split"] == name].drop(columns="split").reset_index(drop=True)
        if rows.empty and name != "val":
            value = getattr(d.split_names, name)
            raise SpamGPTError(
                f"{d.url}: no row has {d.split_column} {value!r} (data.split_names.{name}); "
                f"{name} needs rows: set data.split_names.{name} to the value naming them"
            )
        if not rows.empty:
            parts[name] = readers.ParsedMessages(rows)
    parts["train"].bad_lines = whole.bad_lines  # counted once, for the file
    return parts


def given_splits(
    parsed: dict[str, readers.ParsedMessages],
    sources: dict[str, str],
    s: SplitParams,
    label_format: str,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """De-duplicated splits with the leaks between them handled, val carved from train if
    not given; and the counts for metrics/data.json."""
    frames = {name: p.frame for name, p in parsed.items()}
    removed = 0
    if s.dedupe:
        deduped = {name: readers.dedupe(frame) for name, frame in frames.items()}
        removed = sum(len(frames[n]) - len(deduped[n]) for n in frames)
        frames = deduped
    texts = {name: set(frame["text"]) for name, frame in frames.items()}
    leaks = {f"{a}-{b}": texts[a] & texts[b] for a, b in combinations(frames, 2)}
    counts = {
        "duplicates_removed": removed,
        "cross_duplicates": {pair: len(shared) for pair, shared in leaks.items()},
    }
    if s.cross_duplicates == "error" and any(leaks.values()):
        pair, shared = next((p, t) for p, t in leaks.items() if t)
        a, b = pair.split("-")
        raise SpamGPTError(
            f"{len(shared)} texts of {a} ({sources[a]}) are also in {b} ({sources[b]}), such "
            f"as {sorted(shared)[0][:40]!r}: a leak; split.cross_duplicates: error stops on "
            f"it; allowed: drop_from_train (remove them from train) or keep"
        )
    if s.cross_duplicates == "drop_from_train":
        elsewhere = set().union(*(texts[n] for n in frames if n != "train"))
        train = frames["train"]
        frames["train"] = train[~train["text"].isin(elsewhere)].reset_index(drop=True)
        counts["cross_duplicates_removed"] = len(train) - len(frames["train"])
    counts["val_carved"] = "val" not in frames
    if "val" not in frames:
        carved = carve_val(frames["train"], s, sources["train"], label_format)
        frames["train"], frames["val"] = carved
    return {name: frames[name] for name in paths.SPLITS}, counts


def carve_val(
    train: pd.DataFrame,
    s: SplitParams,
    source: str,
    label_format: str,
) -> tuple[pd.DataFrame, ...]:
    """split.val of train as val, stratified by label (multi-label: data.stratify_key;
    numbers: data.number_strata), seeded by split.seed."""
    try:
        rest, val = readers.stratified(train, s.val, s.seed, label_format)
    except ValueError as e:  # a class too small to be in both
        counts = train["label"].value_counts().to_dict()
        raise SpamGPTError(
            f"{source}: cannot carve val (split.val {s.val:g}) from train's {len(train)} "
            f"messages {counts} with every class in both ({e}); give a val file "
            f"(data.files.val) or more training data"
        ) from None
    return readers.in_file_order(rest), readers.in_file_order(val)


def classes_of(frames: dict[str, pd.DataFrame], sources: dict[str, str], d: DataParams) -> Classes:
    """The classes (data.labels, or every label found), each of which train must have."""
    classes = found_classes(pd.concat([frame["label"] for frame in frames.values()]), d)
    label_format = readers.LABEL_FORMATS[d.label_format]  # numbers: no classes to find
    in_train = label_format.names_in(frames["train"])
    for name in ("val", "test"):
        lacking = sorted(label_format.names_in(frames[name]) - in_train)
        if lacking:
            raise SpamGPTError(
                f"class {lacking[0]!r} is in {name} ({sources.get(name, sources['train'])}) "
                f"but not in train ({sources['train']}): the model cannot learn it; add train "
                f"examples of it, or leave it out with data.labels"
            )
    for name, count in label_format.class_counts(frames["train"], classes.names).items():
        if not count:
            raise SpamGPTError(
                f"class {name!r} (data.labels) has no example in train ({sources['train']}); "
                f"every class needs one: add some, or leave it out of data.labels"
            )
    return classes
