"""`spamgpt predict INPUT --output OUTPUT`: every row of a CSV, TSV, JSON Lines or Parquet
file scored by the fine-tuned model, into a file of the same formats.

The input is read by the pipeline's strict readers (spamgpt.data.readers: quoted multi-line fields
stay one row; a bad row stops the run, or with --bad-lines skip is dropped and counted) a
chunk of rows at a time, scored through the one prediction path (classifier.classify_texts,
then classifier.prediction_frame) and written out before the next chunk is read: memory stays
flat in the number of rows. Output rows follow input rows: the --keep columns, `label`, its
`probability`, `p_<class>` for every class and `truncated`. The output appears under its name
only once complete (a temporary name beside it until then).
"""

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd
import tiktoken
from tqdm import tqdm

from spamgpt import atomic, runtime
from spamgpt.data import readers
from spamgpt.errors import SpamGPTError
from spamgpt.evaluate import explain
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2Classifier
from spamgpt.serve import loader
from spamgpt.tasks.registry import task_for
from spamgpt.texts import TextFields, Truncation

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
CHUNK_ROWS = 8192  # rows read, scored and written at a time
SETTINGS = {"text": "--text-column", "keep": "--keep"}
SKIP_HINT = "pass --bad-lines skip to drop such {where}s and count them"


def format_of(path: str | os.PathLike, given: str | None, option: str) -> str:
    """The file's format: `given`, else from its extension."""
    if given is not None:
        return given
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SpamGPTError(
            f"{path}: cannot tell the format from its extension; name the file "
            f"{', '.join(EXTENSIONS)}, or pass {option} {' | '.join(FORMATS)}"
        )
    return fmt


@dataclass
class Scorer:
    """A fine-tuned model ready to score texts, and how it reads them."""

    model: GPT2Classifier
    meta: dict  # its classifier.json
    enc: tiktoken.Encoding
    compute: runtime.Compute
    threshold: float | dict[str, float] | None

    def __post_init__(self) -> None:
        self.classes: Classes = classifier.classes_of(self.meta)
        self.fields = TextFields.from_dict(self.meta)
        self.truncation = Truncation.from_dict(self.meta)
        self.model.to(self.compute.device)

    def score(self, texts: list[str]) -> pd.DataFrame:
        """label, probability, p_<class>..., truncated of each text, in order."""
        probs, truncated = classifier.classify_texts(
            self.model, self.enc, texts, self.meta["max_length"], self.compute, self.truncation,
            full_last=True,  # one chunk of many: no new shape
        )  # fmt: skip
        frame = classifier.prediction_frame(probs, self.classes, self.threshold)
        frame["truncated"] = truncated
        return frame


def output_columns(classes: Classes) -> list[str]:
    """The columns predict writes of each row (Task.answer_columns, then `truncated`)."""
    return [*task_for(classes).answer_columns(), "truncated"]


def predict_file(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    scorer: Scorer,
    in_format: str,
    out_format: str,
    text_columns: list[str] | None = None,
    keep: list[str] | None = None,
    bad_lines: str = "error",
    chunk_rows: int = CHUNK_ROWS,
    explain_top: int | None = None,
) -> tuple[int, Counter]:
    """Score every row of `source` into `dest`; (rows written, bad rows skipped by kind).
    `text_columns`: the file's columns of the model's text fields, in the model's order
    (None: the model's own names). `explain_top`: a `top_tokens` column, each row's that many
    strongest tokens (spamgpt.evaluate.explain)."""
    source, keep = Path(source), list(keep or [])
    if not source.is_file():
        raise SpamGPTError(f"{source}: no such file")
    fields = scorer.fields
    if text_columns:
        if len(text_columns) != len(fields.columns):
            raise SpamGPTError(
                f"--text-column: the model reads {len(fields.columns)} field(s) "
                f"({', '.join(fields.columns)}); got {len(text_columns)} "
                f"({', '.join(text_columns)}): name one column of the file for each"
            )
        fields = fields.renamed(tuple(text_columns), SETTINGS["text"])
    clash = [c for c in keep if c in output_columns(scorer.classes)]
    if clash:
        raise SpamGPTError(
            f"--keep {clash[0]}: clashes with an output column "
            f"({', '.join(output_columns(scorer.classes))}); keep other columns"
        )
    skipped: Counter = Counter()
    rows = readers.read_texts(
        source, in_format, fields, tuple(keep), bad_lines, skipped, SETTINGS, SKIP_HINT
    )
    written = 0
    with atomic.atomic_path(dest) as tmp, _writer(tmp, out_format) as write:
        bar = tqdm(total=_row_count(source, in_format), unit=" rows", desc="predict", disable=None)
        with bar:
            for chunk in _chunks(rows, chunk_rows):
                texts = [text for text, _ in chunk]
                kept = pd.DataFrame([values for _, values in chunk], columns=keep, dtype=object)
                scored = scorer.score(texts)
                if explain_top:
                    scored["top_tokens"] = explain.top_tokens(
                        scorer.model, scorer.enc, texts, scored, scorer.classes, scorer.meta,
                        explain_top,
                    )  # fmt: skip
                write(pd.concat([kept, scored], axis=1))
                written += len(chunk)
                bar.update(len(chunk))
        if written == 0:
            raise SpamGPTError(f"{source}: no rows to score (it is empty, or every row is bad)")
    return written, skipped


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _row_count(path: Path, fmt: str) -> int | None:
    """The rows a Parquet file holds (its footer says), for the progress bar; else unknown."""
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # not Parquet: the reader says so, in its words
        return None


class _writer:
    """A context manager giving write(frame) for chunks of one output file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.first = path, fmt, True
        self.file: IO | None = None
        self.parquet = None

    def __enter__(self) -> "_writer":
        if self.fmt != "parquet":
            self.file = open(self.path, "w", encoding="utf-8", newline="")
        return self

    def __call__(self, frame: pd.DataFrame) -> None:
        if self.fmt in ("csv", "tsv"):
            frame.to_csv(
                self.file, sep="," if self.fmt == "csv" else "\t", index=False,
                header=self.first, quoting=csv.QUOTE_MINIMAL,
            )  # fmt: skip
        elif self.fmt == "jsonl":
            for record in frame.to_dict(orient="records"):
                self.file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        else:
            self._write_parquet(frame)
        self.first = False

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if self.parquet is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                self.parquet = pq.ParquetWriter(self.path, table.schema)
            else:
                schema = self.parquet.schema
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SpamGPTError(
                f"a --keep column's values do not fit one Parquet column type ({e}); write "
                f"CSV or JSON Lines instead"
            ) from None
        self.parquet.write_table(table)

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()
        if self.parquet is not None:
            self.parquet.close()


def load_scorer(
    model: str,
    pretrained: str | os.PathLike,
    compute: runtime.Compute,
    threshold: float | str | None = "auto",
) -> Scorer:
    """The model to score with: any source loader.load_model takes, run as `compute` says
    (runtime.setup). `threshold` 'auto': the one the model was evaluated with
    (reports/evaluation.json for a folder, its logged config for an MLflow model); a folder's
    head takes evaluate's temperature (models/calibration.json), an MLflow model's its own."""
    loaded = loader.load_model(model, pretrained)
    if threshold == "auto":
        threshold = loaded.threshold
    return Scorer(loaded.model, loaded.meta, loaded.enc, compute, threshold)
