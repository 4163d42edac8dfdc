"""Labelled texts: strict readers for each format, de-duplication and a stratified split.

Formats: `label_tab_text` (the SMS Spam Collection: one `label<TAB>text` per line, no header,
split at the first tab), `csv` (RFC 4180: quoted fields may hold commas, quotes and line
breaks), `tsv` (the same with tabs), `jsonl` (one JSON object per line) and `parquet`. Text is
UTF-8 (a byte-order mark is tolerated). A row that does not parse, or lacks its text or label,
or has a label outside the classes asked for, is never merged into a neighbour nor dropped in
silence: it stops the run with its line (row, for Parquet) and what is wrong, or is skipped
and counted by kind.

Why not pandas' CSV reader for the SMS file: its texts contain unbalanced double quotes, so
default quoting merges neighbouring messages (5572 rows instead of 5574).
"""

import csv
import functools
import json
import math
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, TypeVar

import pandas as pd

from spamgpt import atomic
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.labels import found as found_classes
from spamgpt.texts import TextFields


@dataclass
class ParsedMessages:
    frame: pd.DataFrame  # columns: line (1-based line, or row, in the raw file), label, text
    # (and split, with a split column)
    bad_lines: Counter = field(default_factory=Counter)  # kind -> count (policy 'skip')
    unit: str = "line"  # what `line` counts: "row" for Parquet


# How messages call each data.format
FORMAT_NAMES = {
    "label_tab_text": "label<TAB>text lines",
    "csv": "CSV",
    "tsv": "TSV",
    "jsonl": "JSON Lines",
    "parquet": "Parquet",
}
# A first row bad in these ways may be a file of another format
_STRUCTURE = ("unparseable", "no_tab", "wrong_fields")


class _BadLine(ValueError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # the key counted in metrics/data.json under bad_lines


@dataclass(frozen=True)
class Format:
    """How to read a raw file: data.format, data.text_column (one column or several),
    data.label_column, data.text_template."""

    name: str = "label_tab_text"
    text_column: str | list[str] | tuple[str, ...] = "text"
    label_column: str = "label"
    text_template: str | None = None
    label_format: str = "single"  # data.label_format: single, multi or number (LABEL_FORMATS)
    label_separator: str = "|"  # multi: between labels in a text field (CSV, TSV)
    allow_empty_labels: bool = False  # multi: a row may have no label

    @property
    def fields(self) -> TextFields:
        return TextFields.of(self.text_column, self.text_template)


# The pipeline's settings, named in its messages (spamgpt predict names its options instead).
PIPELINE_SETTINGS = {"text": "data.text_column", "label": "data.label_column"}
PIPELINE_SKIP = "set data.bad_lines: skip to drop such {where}s and count them"


def read_messages(
    path: str | os.PathLike,
    fmt: Format,
    labels: tuple[str, ...] | None,
    bad_lines: str = "error",
    split_column: str | None = None,
    split_names: dict[str, str] | None = None,
    name: str | None = None,
) -> ParsedMessages:
    """Every (line, label, text) of the raw file; `labels`: the allowed classes (None: any).
    `bad_lines` is 'error' (raise at the first bad row) or 'skip' (count them by kind).
    With `split_column`, each row's split too, from `split_names` ({value: split}): a value
    outside them is a bad row ('unknown_split'). `name`: the file as messages call it, the
    user's own (download.source_name) rather than the copy at `path` that is read; `path`
    itself by default. A file whose first row does not parse, but reads as another format, is
    refused as such whatever `bad_lines` says."""
    path = Path(path)
    name = str(path) if name is None else name
    if fmt.name == "label_tab_text":  # no header: the columns are label and text
        fmt = replace(fmt, text_column="text", label_column="label", text_template=None)
    fields = fmt.fields
    columns = {c: PIPELINE_SETTINGS["text"] for c in fields.columns}
    columns[fmt.label_column] = PIPELINE_SETTINGS["label"]
    if split_column is not None:
        columns[split_column] = "data.split_column"
    known: set[str] = set()  # multi: every label found
    written: dict[str, int] = {}  # multi: each label written in a text field, its first line
    if fmt.name != "parquet":
        _refuse_binary(path, fmt.name, name)
    label_format = LABEL_FORMATS[fmt.label_format]

    def message(parsed: dict[str, object]) -> tuple[tuple, list[str], bool]:
        """The row, and (multi-label) its labels and whether they were written as text."""
        text = _joined(parsed, fields)
        label = parsed[fmt.label_column]
        label_text, row_labels = label_format.row(label, text, fmt, labels)
        row: tuple = label_text
        if split_column is not None:
            row = (*row, _split_of(parsed[split_column], split_column, split_names or {}))
        return row, row_labels, isinstance(label, str)

    skipped: Counter = Counter()
    sniff = functools.partial(_refuse_other_format, path, fmt.name, name)
    good = _good_rows(
        path, fmt.name, columns, message, bad_lines, skipped, PIPELINE_SKIP, name, sniff
    )
    rows = []
    for number, (row, row_labels, from_text) in good:
        rows.append((number, *row))
        known.update(row_labels)
        for label_name in row_labels if from_text else ():
            written.setdefault(label_name, number)
    if labels is None:  # known labels: those found anywhere in the file
        for label_name, number in sorted(written.items(), key=lambda item: item[1]):
            mistake = _misjoined(label_name, known, fmt.label_separator)
            if mistake is not None:
                raise SpamGPTError(f"{_place(name, fmt.name, number)}: {mistake}")
    where = _where(fmt.name)
    if not rows:
        raise SpamGPTError(f"{name}: no messages (the file is empty or every {where} is bad)")
    names = ["line", "label", "text", *(["split"] if split_column is not None else [])]
    return ParsedMessages(pd.DataFrame(rows, columns=names), skipped, where)


def skipped_summary(parsed: ParsedMessages, name: str) -> str:
    """One line for the console: how many rows data.bad_lines: skip dropped, by kind."""
    total, unit = sum(parsed.bad_lines.values()), parsed.unit
    kinds = ", ".join(f"{count} {kind}" for kind, count in parsed.bad_lines.most_common())
    return (
        f"{name}: skipped {total} bad {unit}{'s' * (total != 1)} (data.bad_lines: skip): "
        f"{kinds}; kept {len(parsed.frame)}"
    )


def _refuse_binary(path: Path, fmt_name: str, name: str) -> None:
    """A text format given a Parquet file or an archive: say so before parsing bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith((b"PAR1", b"PK\x03\x04", b"\x1f\x8b")):
        _refuse_other_format(path, fmt_name, name)


def _refuse_other_format(path: Path, fmt_name: str, name: str) -> None:
    """Raise that the file is not in data.format if its beginning reads like another format."""
    looks = _looks_like(path)
    if looks is None or looks[0] == fmt_name:
        return
    other, description = looks
    advice = f"; set data.format: {other}" if other in FORMAT_NAMES else ""
    raise SpamGPTError(
        f"{name} does not look like {FORMAT_NAMES[fmt_name]} (data.format: {fmt_name}): "
        f"{description}{advice}"
    )


def _looks_like(path: Path) -> tuple[str, str] | None:
    """(the format the file's beginning reads as, how to say so), or None if none does."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"PAR1"):
        return "parquet", "it is a Parquet file"
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b")):
        return "archive", "it is an archive (zip or gzip); data.member names the file in it"
    line = head.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].removesuffix(b"\r")
    line = line.decode("utf-8", errors="replace")
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return "jsonl", f"its first line reads like JSON Lines with keys {_listed(record)}"
    fields = line.split("\t")
    if len(fields) == 2:
        return "label_tab_text", "its first line reads like label<TAB>text"
    if len(fields) > 2 and _header_like(fields):
        return "tsv", f"its first line reads like TSV with columns {_listed(fields)}"
    fields = next(csv.reader([line]), [])
    if len(fields) > 1 and _header_like(fields) and not line.startswith(("{", "[")):
        return "csv", f"its first line reads like CSV with columns {_listed(fields)}"
    return None


def _header_like(fields: list[str]) -> bool:
    """Column names, not a sentence with a comma in it: short, no space around them."""
    return all(field and field == field.strip() and len(field) <= 64 for field in fields)


def _listed(names) -> str:
    shown = [str(n)[:30] for n in list(names)[:10]]
    return ", ".join(shown) + (", ..." if len(names) > 10 else "")


def read_texts(
    path: str | os.PathLike,
    fmt_name: str,
    fields: TextFields,
    keep: tuple[str, ...],
    bad_lines: str,
    skipped: Counter,
    settings: dict[str, str],
    skip_hint: str,
) -> Iterator[tuple[str, list[object]]]:
    """(text, the `keep` columns' values) of each row, in order, as the pipeline reads them
    (spamgpt predict: no label). Bad rows raise, or (`bad_lines` 'skip') are counted by kind
    into `skipped`. `settings` names the option of each column for a missing-column error:
    {'text': ..., 'keep': ...}; `skip_hint` says how to skip bad rows."""
    columns = {c: settings["text"] for c in fields.columns}
    columns.update({c: settings["keep"] for c in keep if c not in columns})

    def text_and_kept(parsed: dict[str, object]) -> tuple[str, list[object]]:
        return _text(_joined(parsed, fields)), [parsed[c] for c in keep]

    good = _good_rows(path, fmt_name, columns, text_and_kept, bad_lines, skipped, skip_hint)
    for _, row in good:
        yield row


def _where(fmt_name: str) -> str:
    return "row" if fmt_name == "parquet" else "line"


def bad_line_error(
    path: str | os.PathLike, fmt_name: str, number: int, bad: ValueError, skip_hint: str
) -> SpamGPTError:
    """The one-line error of a bad row: where it is, what is wrong, how to go on."""
    where = _where(fmt_name)
    place = _place(path, fmt_name, number)
    return SpamGPTError(f"{place}: {bad}; fix the {where}, or {skip_hint.format(where=where)}")


def _place(path: str | os.PathLike, fmt_name: str, number: int) -> str:
    """Where a row is, as errors begin: `file:line`, or `file: row n` (Parquet)."""
    return f"{path}:{number}" if _where(fmt_name) == "line" else f"{path}: row {number}"


def _joined(row: dict[str, object], fields: TextFields) -> object:
    """The row's text from its fields; with several, a missing one is a bad row."""
    if len(fields.columns) == 1 and fields.template is None:
        return row[fields.columns[0]]
    for column in fields.columns:
        value = row[column]
        if not isinstance(value, str):
            what = "missing" if value is None else "not text"
            raise _BadLine("missing_text", f"text field {column!r} is {what}")
    return fields.join(row)


def _split_of(value: object, column: str, names: dict[str, str]) -> str:
    split = names.get(str(value)) if value is not None else None
    if split is None:
        raise _BadLine(
            "unknown_split",
            f"{column} is {str(value)[:20]!r}, not a split; allowed: {', '.join(names)} "
            f"(data.split_names)",
        )
    return split


def _text(text: object) -> str:
    """A text as the classifier takes it (no label to check), or _BadLine."""
    if not isinstance(text, str):
        raise _BadLine("missing_text", "text is missing" if text is None else "text is not text")
    _check_decoded(text)
    if not text.strip():
        raise _BadLine("empty_text", "empty text")
    return text


UNDECODED = re.compile("[\udc80-\udcff]")  # surrogateescape's stand-ins for bytes not UTF-8


def _check_decoded(value: str) -> None:
    bad = UNDECODED.search(value)
    if bad is not None:
        detail = f"undecodable bytes at character {bad.start() + 1} of a field (not UTF-8)"
        raise _BadLine("undecodable", detail)


# What a multi-label text field may join its labels with instead of data.label_separator
# (" ": any run of whitespace).
OTHER_SEPARATORS = (";", ",", "/", "|", " ")


class _Misjoined(ValueError):
    """A label that is several known labels joined by another separator than the one set."""

    def __init__(self, value: str, joiner: str, parts: list[str], separator: str) -> None:
        super().__init__(
            f"{json.dumps(value, ensure_ascii=False)} looks like the labels {', '.join(parts)} "
            f"joined by {json.dumps(joiner)}, not by data.label_separator {json.dumps(separator)}; "
            f"set data.label_separator: {json.dumps(joiner)}"
        )


def _misjoined(value: str, known: Collection[str], separator: str) -> _Misjoined | None:
    """The mistake, when `value` is two or more `known` labels joined by one of
    OTHER_SEPARATORS (other than `separator`), else None."""
    for joiner in OTHER_SEPARATORS:
        if joiner == separator:
            continue
        parts = value.split() if joiner == " " else [part.strip() for part in value.split(joiner)]
        if len(parts) > 1 and all(part in known for part in parts):
            return _Misjoined(value, joiner, parts, separator)
    return None


def _label_set(
    value: object, separator: str, allow_empty: bool, labels: tuple[str, ...] | None
) -> list[str]:
    """A multi-label row's labels as its split file holds them (as a JSON list): each label
    once, sorted; from a list (JSON Lines, Parquet) or a text split on `separator`. Raises
    _BadLine, or _Misjoined for an unknown label that is `labels` joined by another separator."""
    from_text = isinstance(value, str)
    if from_text:
        value = [part.strip() for part in value.split(separator)]
    elif value is None:
        value = []
    if not isinstance(value, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, (str, int)) for v in value
    ):
        raise _BadLine("missing_label", f"labels are {type(value).__name__}, not a list of text")
    names = sorted({str(v) for v in value if str(v) != ""})
    for name in names:
        _check_decoded(name)
        if labels is not None and name not in labels:
            mistake = _misjoined(name, labels, separator) if from_text else None
            if mistake is not None:
                raise mistake
            raise _BadLine(
                "unknown_label", f"unknown label {name[:20]!r}; allowed: {', '.join(labels)}"
            )
    if not names and not allow_empty:
        raise _BadLine(
            "missing_label",
            "no label; set data.allow_empty_labels: true where a row may have none",
        )
    return names


def _number(value: object) -> str:
    """A number label as its split file holds it (Python's repr of the float: it reads back
    exactly), or _BadLine: an int or float, or text that reads as a finite one."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        what = "missing" if value is None else type(value).__name__
        raise _BadLine("bad_number", f"label is {what}, not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise _BadLine(
            "bad_number", f"label {str(value)[:20]!r} is not a number (data.label_format: number)"
        )
    return repr(number)


def _checked(label: object, text: object, labels: tuple[str, ...] | None) -> tuple[str, str]:
    """(label, text) of a row as the classifier takes it, or _BadLine; `labels`: the classes
    allowed (None: any)."""
    if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
        what = "missing" if label in (None, "") else f"{type(label).__name__}, not text"
        raise _BadLine("missing_label", f"label is {what}")
    if not isinstance(text, str):
        raise _BadLine("missing_text", "text is missing" if text is None else "text is not text")
    label = str(label)
    for value in (label, text):
        _check_decoded(value)
    if labels is not None and label not in labels:
        raise _BadLine(
            "unknown_label", f"unknown label {label[:20]!r}; allowed: {', '.join(labels)}"
        )
    if not text.strip():
        raise _BadLine("empty_text", "empty text")
    return label, text


# Each row of a raw file: its line (row) number, and {column: value} of the columns asked
# for, or the _BadLine it is.
Rows = Iterator[tuple[int, dict[str, object] | _BadLine]]
Sniff = Callable[[], None]  # raises if the file reads as another format than the one given
T = TypeVar("T")  # what a reader loop makes of each good row


def read_rows(
    path: str | os.PathLike,
    fmt_name: str,
    columns: dict[str, str],
    name: str | None = None,
    sniff: Sniff | None = None,
) -> Rows:
    """The rows of a raw file with these columns ({name: the setting naming it, for the
    error when the file lacks it}); label_tab_text has the columns label and text. `name`:
    the file as messages call it (`path` by default); `sniff`, called before a missing column
    or an unreadable Parquet file is reported, may raise that the file is of another format."""
    path = Path(path)
    name = str(path) if name is None else name
    return _READERS[fmt_name](path, columns, name, sniff or (lambda: None))


def _good_rows(
    path: str | os.PathLike,
    fmt_name: str,
    columns: dict[str, str],
    parse: Callable[[dict[str, object]], T],
    bad_lines: str,
    skipped: Counter,
    skip_hint: str,
    name: str | None = None,
    sniff: Sniff | None = None,
) -> Iterator[tuple[int, T]]:
    """The one reader loop: (line or row number, parse(row)) of each good row of the raw
    file, in order. A bad row (as read_rows reads it, or as `parse` raises _BadLine) raises
    one line (bad_line_error, naming `name`, `path` by default, and saying `skip_hint`), or
    with `bad_lines` 'skip' is counted by kind into `skipped`. `sniff`: see read_rows; also
    called when the file's first row is bad in structure (it may be of another format)."""
    name = str(Path(path)) if name is None else name
    good = 0
    for number, parsed in read_rows(path, fmt_name, columns, name, sniff):
        try:
            if isinstance(parsed, _BadLine):
                if sniff is not None and not good and not skipped and parsed.kind in _STRUCTURE:
                    sniff()
                raise parsed
            row = parse(parsed)
        except _BadLine as bad:
            if bad_lines != "skip":
                raise bad_line_error(name, fmt_name, number, bad, skip_hint) from None
            skipped[bad.kind] += 1
            continue
        except _Misjoined as mistake:  # the setting is wrong, not the row: never skipped
            raise SpamGPTError(f"{_place(name, fmt_name, number)}: {mistake}") from None
        good += 1
        yield number, row


def _label_tab_text(path: Path, columns: dict[str, str], name: str, sniff: Sniff) -> Rows:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark
            try:
                label, tab, text = line.decode("utf-8").partition("\t")
            except UnicodeDecodeError as e:
                detail = f"undecodable bytes at column {e.start + 1} (not UTF-8)"
                yield number, _BadLine("undecodable", detail)
                continue
            if not tab:
                yield number, _BadLine("no_tab", "no tab between label and text")
                continue
            yield number, {"label": label, "text": text}


def _delimited(
    path: Path, columns: dict[str, str], name: str, sniff: Sniff, delimiter: str
) -> Rows:
    kind = "CSV" if delimiter == "," else "TSV"
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        header = next(reader, None)
        if header is None:
            return
        positions = _columns(header, columns, name, sniff)
        while True:
            start = reader.line_num + 1  # a row's first line: quoted line breaks span more
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, _BadLine("unparseable", f"does not parse as {kind}: {e}")
                continue
            if not row:
                continue  # a blank line holds no row
            if len(row) != len(header):
                detail = f"{len(row)} fields where the header has {len(header)}"
                yield start, _BadLine("wrong_fields", detail)
                continue
            yield start, {c: row[i] for c, i in positions.items()}


def _columns(header: list, columns: dict[str, str], name: str, sniff: Sniff) -> dict[str, int]:
    """The position of each column asked for in `header`."""
    for column, setting in columns.items():
        if column not in header:
            sniff()
            shown = ", ".join(map(str, header[:20]))
            raise SpamGPTError(f"{name}: no column {column!r} (it has {shown}); set {setting}")
    return {column: header.index(column) for column in columns}


def _jsonl(path: Path, columns: dict[str, str], name: str, sniff: Sniff) -> Rows:
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield number, _BadLine("unparseable", f"not a JSON object: {e.msg}")
                continue
            if not isinstance(row, dict):
                yield number, _BadLine("unparseable", "not a JSON object")
                continue
            yield number, {c: row.get(c) for c in columns}


def _parquet(path: Path, columns: dict[str, str], name: str, sniff: Sniff) -> Rows:
    import pyarrow.parquet as pq  # pandas' engine, installed with MLflow

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's own error types: not a Parquet file
        sniff()
        raise SpamGPTError(f"{name}: not a Parquet file ({e})") from None
    _columns(table.schema_arrow.names, columns, name, sniff)
    number = 0
    names = list(columns)
    for batch in table.iter_batches(columns=names):
        values = [batch.column(name).to_pylist() for name in names]
        for row in zip(*values, strict=True):
            number += 1
            yield number, dict(zip(names, row, strict=True))


def header_columns(path: str | os.PathLike, fmt_name: str) -> list[str] | None:
    """The column names a CSV, TSV or Parquet file declares (its header, its schema); None for
    formats without one (JSON Lines names its fields per row, label_tab_text has none) or a
    file that does not read as its format (reading it reports that)."""
    path = Path(path)
    try:
        if fmt_name in ("csv", "tsv"):
            delimiter = "," if fmt_name == "csv" else "\t"
            with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                return next(csv.reader(f, delimiter=delimiter, strict=True), [])
        if fmt_name == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception:  # csv.Error, pyarrow's errors: read_rows says what is wrong
        return None
    return None


_READERS = {
    "label_tab_text": _label_tab_text,
    "csv": lambda path, columns, name, sniff: _delimited(path, columns, name, sniff, ","),
    "tsv": lambda path, columns, name, sniff: _delimited(path, columns, name, sniff, "\t"),
    "jsonl": _jsonl,
    "parquet": _parquet,
}


def dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first occurrence of each exact text: a copy in train and in test leaks."""
    return frame.drop_duplicates(subset="text", keep="first").reset_index(drop=True)


def split(
    frame: pd.DataFrame,
    val: float,
    test: float,
    seed: int,
    labels: tuple[str, ...],
    label_format: str = "single",
) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split by label (multi-label: by each row's rarest label,
    stratify_key; numbers: by their quantile bins, number_strata); fractions are of the
    whole frame."""
    counts = LABEL_FORMATS[label_format].class_counts(frame, labels)
    for label, count in counts.items():
        if count < 3:
            raise SpamGPTError(
                f"class {label!r} has {count} messages after dedupe: a split needs at least 3 "
                f"messages of each label (one each in train, val and test); add data, or "
                f"leave the class out with data.labels"
            )
    try:
        rest, test_part = stratified(frame, test, seed, label_format)
        train_part, val_part = stratified(rest, val / (1 - test), seed, label_format)
    except ValueError as e:  # a split too small to hold every class
        raise SpamGPTError(
            f"cannot split {len(frame)} messages {counts} into val {val:g} / test "
            f"{test:g} with every class in each: {e}"
        ) from None
    parts = (("train", train_part), ("val", val_part), ("test", test_part))
    return {name: in_file_order(part) for name, part in parts}


def stratified(
    frame: pd.DataFrame,
    fraction: float,
    seed: int,
    label_format: str = "single",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The one stratified splitter: (the rest, `fraction` of `frame`), each class in the same
    proportion in both (multi-label: each row's stratify_key; numbers: number_strata), drawn
    from `seed`. Raises scikit-learn's ValueError when a class is too small to be in both."""
    # Here, not at the top: finetune and evaluate read splits and need no scikit-learn.
    from sklearn.model_selection import train_test_split

    key = LABEL_FORMATS[label_format].stratify_key(frame)
    rest, part = train_test_split(frame, test_size=fraction, stratify=key, random_state=seed)
    return rest, part


def in_file_order(part: pd.DataFrame) -> pd.DataFrame:
    """A split's rows in the raw file's order (by line), numbered from 0."""
    return part.sort_values("line").reset_index(drop=True)


def label_sets(frame: pd.DataFrame) -> list[list[str]]:
    """Each row's labels, of a multi-label frame (its label column holds JSON lists)."""
    return [json.loads(value) for value in frame["label"]]


def stratify_key(frame: pd.DataFrame) -> pd.Series:
    """Multi-label: the rarest label of each row (in this frame), what a split is stratified
    on; a key held by fewer than 3 rows joins the rows with no label ('')."""
    rows = label_sets(frame)
    counts = Counter(name for row in rows for name in row)
    keys = [min(row, key=lambda name: (counts[name], name)) if row else "" for row in rows]
    key = pd.Series(keys, index=frame.index)
    sizes = key.value_counts()
    key = key.where(key.map(sizes) >= 3, "")
    if 0 < (key == "").sum() < 2:  # too few to stand alone: with the most common key
        key = key.replace("", key.value_counts().index[0])
    return key


STRATA = 5  # quantile bins numbers are stratified on: each split sees low and high ones
MIN_PER_STRATUM = 6  # fewer rows a bin than this: fewer bins (each must reach every split)


def number_strata(values: pd.Series) -> pd.Series:
    """Numbers' stratification key: each row's quantile bin (ranked first, so ties cannot
    empty a bin), as many bins as STRATA and the rows allow."""
    numbers = values.astype(float)
    bins = max(1, min(STRATA, len(numbers) // MIN_PER_STRATUM))
    ranks = numbers.rank(method="first").to_numpy()
    return pd.Series(((ranks - 1) * bins // len(numbers)).astype(int), index=values.index)


def number_summary(values: pd.Series) -> dict[str, float | int]:
    """A split's numbers as metrics/data.json records them: count, mean, std, min, max."""
    numbers = values.astype(float)
    return {
        "count": len(numbers),
        "mean": float(numbers.mean()),
        "std": float(numbers.std(ddof=0)),
        "min": float(numbers.min()),
        "max": float(numbers.max()),
    }


def label_counts(
    frame: pd.DataFrame, labels: tuple[str, ...], label_format: str = "single"
) -> dict[str, int | float]:
    """A split as metrics/data.json counts it: rows of each class (multi-label: rows carrying
    each label; numbers: number_summary)."""
    return LABEL_FORMATS[label_format].counts(frame, labels)


def label_conflicts(frame: pd.DataFrame) -> int:
    """Texts that occur with two different labels (label sets): de-duplication keeps the
    first, so the others' labels are lost; counted in metrics/data.json."""
    return int((frame.groupby("text")["label"].nunique() > 1).sum())


class LabelFormat(ABC):
    """What one data.label_format makes of the label column (LABEL_FORMATS: one of each, by
    name), decided once: how a row's label is checked and written in its split file, what a
    split is stratified on, what metrics/data.json records, and the classes found."""

    name: ClassVar[str]  # data.label_format, and Classes.label_format

    @abstractmethod
    def row(
        self, label: object, text: object, fmt: Format, labels: tuple[str, ...] | None
    ) -> tuple[tuple[str, str], list[str]]:
        """((label as its split file holds it, text), the row's labels where it has a set of
        them) of a raw row, or _BadLine; `labels`: the classes allowed (None: any)."""

    @abstractmethod
    def stratify_key(self, frame: pd.DataFrame) -> pd.Series:
        """What a split is stratified on, a value per row."""

    @abstractmethod
    def class_counts(self, frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int]:
        """The rows of each class, of which a split needs some: none where there are no
        classes."""

    def counts(self, frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int | float]:
        """A split as metrics/data.json records it."""
        return self.class_counts(frame, names)

    @abstractmethod
    def names_in(self, frame: pd.DataFrame) -> set[str]:
        """The classes the rows of `frame` carry."""

    def conflicts(self, frames: list[pd.DataFrame]) -> dict[str, int]:
        """What metrics/data.json records of texts given different labels in the raw rows."""
        return {}

    def classes(
        self,
        found: pd.Series,
        requested: list | None,
        positive: str | int | None,
        label_column: str,
    ) -> Classes:
        """The classes of the labels `found`: data.labels (`requested`) in order, or those
        found (labels.found)."""
        return found_classes(found, requested, positive, self.name)


class SingleLabels(LabelFormat):
    """data.label_format: single, a class per row."""

    name = "single"

    def row(
        self, label: object, text: object, fmt: Format, labels: tuple[str, ...] | None
    ) -> tuple[tuple[str, str], list[str]]:
        return _checked(label, text, labels), []

    def stratify_key(self, frame: pd.DataFrame) -> pd.Series:
        return frame["label"]

    def class_counts(self, frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int]:
        counts = frame["label"].value_counts()
        return {name: int(counts.get(name, 0)) for name in names}

    def names_in(self, frame: pd.DataFrame) -> set[str]:
        return set(frame["label"])


class MultiLabels(LabelFormat):
    """data.label_format: multi, a set of labels per row, held as a JSON list in its split
    file (_label_set), stratified by each row's rarest label (stratify_key)."""

    name = "multi"

    def row(
        self, label: object, text: object, fmt: Format, labels: tuple[str, ...] | None
    ) -> tuple[tuple[str, str], list[str]]:
        names = _label_set(label, fmt.label_separator, fmt.allow_empty_labels, labels)
        return _checked(json.dumps(names, ensure_ascii=False), text, None), names

    def stratify_key(self, frame: pd.DataFrame) -> pd.Series:
        return stratify_key(frame)

    def class_counts(self, frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int]:
        counted = Counter(name for row in label_sets(frame) for name in row)
        return {name: counted[name] for name in names}

    def names_in(self, frame: pd.DataFrame) -> set[str]:
        return set().union(*label_sets(frame))

    def conflicts(self, frames: list[pd.DataFrame]) -> dict[str, int]:
        return {"label_conflicts": sum(label_conflicts(frame) for frame in frames)}


class Numbers(LabelFormat):
    """data.label_format: number, a number per row (regression; _number): no classes, one
    output named after data.label_column; stratified by quantile bins (number_strata),
    summarized by number_summary."""

    name = "number"

    def row(
        self, label: object, text: object, fmt: Format, labels: tuple[str, ...] | None
    ) -> tuple[tuple[str, str], list[str]]:
        return _checked(_number(label), text, None), []

    def stratify_key(self, frame: pd.DataFrame) -> pd.Series:
        return number_strata(frame["label"])

    def class_counts(self, frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int]:
        return {}

    def counts(self, frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int | float]:
        return number_summary(frame["label"])

    def names_in(self, frame: pd.DataFrame) -> set[str]:
        return set()

    def classes(
        self,
        found: pd.Series,
        requested: list | None,
        positive: str | int | None,
        label_column: str,
    ) -> Classes:
        return Classes((label_column,), label_format=self.name)


LABEL_FORMATS: dict[str, LabelFormat] = {
    kind.name: kind for kind in (SingleLabels(), MultiLabels(), Numbers())
}


def write_split(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """CSV with every text quoted: a bare carriage return or a quote inside a message cannot
    end or merge rows when the file is read back."""
    with atomic.atomic_open(path, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, index=False, quoting=csv.QUOTE_NONNUMERIC)


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """A split file as written by write_split, every text exactly as parsed."""
    return pd.read_csv(
        path, dtype={"line": "int64", "label": "str", "text": "str"}, keep_default_na=False
    )
