"""`spamgpt predict`: every row of a file scored through the one prediction path, in order,
with kept columns, in each format; bad input stops in one line and leaves no output."""

import csv
import dataclasses
import datetime
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO
from terminal import drawn
from tqdm import tqdm

from spamgpt import params, runtime
from spamgpt.data import tokenizer
from spamgpt.errors import SpamGPTError
from spamgpt.evaluate import explain
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import hub_dir, make_hub
from spamgpt.serve import cli
from spamgpt.serve import predict as predicting
from spamgpt.texts import Truncation

CLASSES = Classes(("billing", "outage", "sales"))
MAX_LENGTH = 12
CPU = runtime.Compute(torch.device("cpu"), "fp32")


pytestmark = pytest.mark.usefixtures("one_core", "tqdm_thread_lock")  # conftest: mutmut forks

UNAVAILABLE = "mps" if torch.cuda.is_available() else "cuda"  # a device this machine lacks


def model_folder(root: Path, classes: Classes = CLASSES, **shapes: int) -> Path:
    """A self-contained model folder (every tensor) of a random GPT-2 of these shapes, three
    classes (or `classes`), its head drawn so that probabilities spread."""
    hub = make_hub(root / "hub", revision="tiny", **shapes)
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(classes))
    torch.nn.init.normal_(model.head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    m = dataclasses.replace(params.load(REPO / "params.yaml").model, pretrained=False)
    eot = tokenizer.load(hub).eot_token
    meta = classifier.classifier_meta(m, classes, [], MAX_LENGTH, eot)
    folder = root / "finetuned"
    folder.mkdir()
    classifier.save(model, folder, meta, hub, full=True)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' tiny random GPT-2."""
    return model_folder(tmp_path_factory.mktemp("predict"), layers=2, dim=32, heads=4, n_ctx=64)


@pytest.fixture(scope="module")
def scorer(model_dir: Path) -> predicting.Scorer:
    return predicting.load_scorer(str(model_dir), model_dir, CPU, None)


def messages(n: int) -> list[dict]:
    words = ["refund", "invoice", "down", "error", "seats", "discount", "please", "now"]
    rows = []
    for i in range(n):
        text = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 9))
        if i % 5 == 0:
            text += ',\n"quoted", and on a second line'
        rows.append({"id": f"t{i}", "message": text, "extra": i})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def expected(scorer: predicting.Scorer, texts: list[str]) -> pd.DataFrame:
    """The answers of the classify path on the texts at once."""
    probs, truncated = classifier.classify_texts(
        scorer.model, scorer.enc, texts, MAX_LENGTH, scorer.compute
    )
    frame = classifier.prediction_frame(probs, CLASSES, None)
    return frame.assign(truncated=truncated)


def test_rows_keep_their_order_and_ids_and_answer_as_classify_does(scorer, tmp_path) -> None:
    rows = messages(23)
    source = write_csv(tmp_path / "in.csv", rows)
    written, skipped = predicting.predict_file(
        source, tmp_path / "out.csv", scorer, "csv", "csv", ["message"], ["id"], chunk_rows=5
    )
    assert (written, skipped) == (23, {})
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    columns = ["id", "label", "probability", "p_billing", "p_outage", "p_sales", "truncated"]
    assert list(out.columns) == columns
    assert out["id"].tolist() == [r["id"] for r in rows]
    want = expected(scorer, [r["message"] for r in rows])
    assert out["label"].tolist() == want["label"].tolist()
    assert out["truncated"].tolist() == want["truncated"].tolist() and any(want["truncated"])
    for column in columns[2:6]:
        np.testing.assert_allclose(out[column], want[column], atol=1e-6)
    assert out["p_billing"].nunique() > 10  # the answers differ, so the order is checked


def test_each_format_in_and_out(scorer, tmp_path) -> None:
    rows = messages(7)
    pd.DataFrame(rows).to_parquet(tmp_path / "in.parquet", index=False)
    predicting.predict_file(
        tmp_path / "in.parquet", tmp_path / "out.jsonl", scorer, "parquet", "jsonl",
        ["message"], ["extra", "id"],
    )  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["extra"] for r in records] == list(range(7))  # Parquet's integers stay integers
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    predicting.predict_file(
        tmp_path / "in.jsonl", tmp_path / "out.parquet", scorer, "jsonl", "parquet",
        ["message"], ["id"],
    )  # fmt: skip
    predicting.predict_file(
        tmp_path / "in.jsonl", tmp_path / "out.tsv", scorer, "jsonl", "tsv", ["message"], ["id"]
    )
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert back["id"].tolist() == [r["id"] for r in rows]
    assert back["label"].tolist() == [r["label"] for r in records]
    assert pd.read_csv(tmp_path / "out.tsv", sep="\t")["id"].tolist() == back["id"].tolist()


def predict_cli(capsys, *args: str) -> tuple[int, str]:
    """Run `spamgpt predict` in this process; (exit code, stderr)."""
    try:
        cli.main(["predict", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_100_000_rows_stream_through_the_cli_keeping_ids_order_and_answers(tmp_path, capsys):
    """`spamgpt predict` of a 100,000-row CSV: one Parquet row group per chunk (each chunk
    scored and written before the next is read), every id in input order, each row the
    classify path's answer. A GPT-2 of one block 16 wide: the rows, not the model, are what
    is tested."""
    model_dir = model_folder(tmp_path, layers=1, dim=16, heads=2, n_ctx=16)
    scorer = predicting.load_scorer(str(model_dir), model_dir, CPU, None)
    n = 100_000
    ids = np.random.default_rng(0).permutation(n).tolist()  # not sorted: order is checked
    rows = [{"id": i, "message": f"{'refund ' * (i % 5)}{i % 97}"} for i in ids]
    source, dest = write_csv(tmp_path / "tickets.csv", rows), tmp_path / "scored.parquet"
    code, err = predict_cli(
        capsys, str(source), "-o", str(dest), "--model", str(model_dir), "--text-column",
        "message", "--keep", "id", "message", "--device", "cpu", "--precision", "fp32",
        "--max-tokens", "16384",  # the tiny model's ops are cheap: fewer, larger batches
    )  # fmt: skip
    assert code == 0 and f"{dest}: {n} rows" in err
    assert pq.ParquetFile(dest).num_row_groups == -(-n // predicting.CHUNK_ROWS)
    out = pd.read_parquet(dest)
    assert out["id"].tolist() == [str(i) for i in ids]  # a CSV field as it was
    texts = sorted(set(out["message"]))  # lengths differ: batches are sorted by length
    want = expected(scorer, texts).set_index(pd.Index(texts))
    for column in ("p_billing", "p_outage", "p_sales"):
        np.testing.assert_allclose(out[column], want.loc[out["message"], column], atol=1e-6)
    assert out["label"].tolist() == want.loc[out["message"], "label"].tolist()


def test_bad_rows_stop_in_one_line_or_are_skipped_and_counted(model_dir, tmp_path, capsys):
    source = tmp_path / "in.csv"
    source.write_text('id,message\n1,hello there\n2,\n3,"a",extra\n')
    out = tmp_path / "out.csv"
    code, err = predict_cli(capsys, str(source), "-o", str(out), "--model", str(model_dir),
                            "--text-column", "message")  # fmt: skip
    assert code == 1 and err.count("\n") == 1
    assert f"{source}:3: empty text; fix the line, or pass --bad-lines skip" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [source]
    code, err = predict_cli(capsys, str(source), "-o", str(out), "--model", str(model_dir),
                            "--text-column", "message", "--bad-lines", "skip")  # fmt: skip
    assert code == 0 and "1 rows; 2 bad rows skipped (empty_text 1, wrong_fields 1)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "in.csv: no column 'text' (it has id, message, extra); set --text-column"),
        (["--text-column", "a", "b"], "--text-column: the model reads 1 field(s) (text); got 2"),
        (["--keep", "label"], "--keep label: clashes with an output column (label, "),
        (["-o", "out.txt"], "out.txt: cannot tell the format from its extension; name the file"),
        (["--device", UNAVAILABLE], f"--device: {UNAVAILABLE} is not available on this machine"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_output(
    model_dir, tmp_path, capsys, monkeypatch, args, message
) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "in.csv", messages(3))
    code, err = predict_cli(capsys, "in.csv", "-o", "out.csv", "--model", str(model_dir), *args)
    assert code != 0 and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_text_columns_no_template_could_name_fill_the_models_fields(
    model_dir, scorer, tmp_path, capsys
) -> None:
    """A model of two fields joined by a template, scored from a file whose columns are
    called what a template could not name ('subject.line', '0'): --text-column maps them to
    the model's fields, and each row's answer is that of the text the template makes."""
    folder = tmp_path / "fields"
    shutil.copytree(model_dir, folder)
    meta_file = folder / classifier.CLASSIFIER_JSON
    meta = json.loads(meta_file.read_text())
    meta |= {"text_columns": ["subject", "body"], "text_template": "Subject: {subject}\n{body}"}
    meta_file.write_text(json.dumps(meta))
    rows = [{"subject.line": f"{m['id']} offer", "0": m["message"]} for m in messages(7)]
    source, dest = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    code, err = predict_cli(capsys, str(source), "-o", str(dest), "--model", str(folder),
                            "--text-column", "subject.line", "0", "--device", "cpu",
                            "--precision", "fp32")  # fmt: skip
    assert code == 0, err
    texts = [f"Subject: {r['subject.line']}\n{r['0']}" for r in rows]
    want = expected(scorer, texts)
    got = pd.read_csv(dest)
    assert got["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(
        got[["p_billing", "p_outage", "p_sales"]],
        want[["p_billing", "p_outage", "p_sales"]],
        atol=1e-6,
    )


@pytest.fixture(scope="module")
def spam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ham or spam, spam the positive class: a threshold applies."""
    root = tmp_path_factory.mktemp("spam")
    return model_folder(root, SPAM, layers=2, dim=32, heads=4, n_ctx=64)


SPAM = Classes(("ham", "spam"), "spam")
TEXTS = ["refund now please", "hi", "seats discount", "error down"]


def test_chunks_of_size_then_the_rest() -> None:
    assert list(predicting._chunks(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(predicting._chunks(iter(range(4)), 2)) == [[0, 1], [2, 3]]
    assert list(predicting._chunks(iter([]), 2)) == []


def test_row_count_of_a_parquet_file_else_unknown(tmp_path: Path) -> None:
    pd.DataFrame({"text": list("abcde")}).to_parquet(tmp_path / "in.parquet")
    (tmp_path / "in.csv").write_text("text\na\n")
    assert predicting._row_count(tmp_path / "in.parquet", "parquet") == 5
    assert predicting._row_count(tmp_path / "in.parquet", "csv") is None
    assert predicting._row_count(tmp_path / "in.csv", "parquet") is None  # not Parquet


def test_format_from_the_flag_else_the_extension() -> None:
    assert predicting.format_of("a.CSV", None, "--format") == "csv"
    assert predicting.format_of("a.jsonl", None, "--format") == "jsonl"
    assert predicting.format_of("a.csv", "tsv", "--format") == "tsv"
    with pytest.raises(SpamGPTError) as caught:
        predicting.format_of("out.txt", None, "--output-format")
    assert str(caught.value) == (
        "out.txt: cannot tell the format from its extension; name the file .csv, .tsv, "
        ".jsonl, .parquet, or pass --output-format csv | tsv | jsonl | parquet"
    )


def test_the_scorer_answers_at_the_evaluated_threshold_unless_given_one(
    spam_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """'auto' (the default): evaluate's threshold (reports/evaluation.json; 0.5 before any
    evaluation); a number or None (the most probable class) as given. Its labels are
    prediction_frame's at that threshold."""
    monkeypatch.chdir(tmp_path)
    assert predicting.load_scorer(str(spam_dir), spam_dir, CPU).threshold == 0.5
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluation.json").write_text('{"threshold": 0.3}')
    assert predicting.load_scorer(str(spam_dir), spam_dir, CPU).threshold == 0.3
    assert predicting.load_scorer(str(spam_dir), spam_dir, CPU, 0.7).threshold == 0.7
    assert predicting.load_scorer(str(spam_dir), spam_dir, CPU, None).threshold is None
    scorer = predicting.load_scorer(str(spam_dir), spam_dir, CPU, "auto")
    probs, _ = classifier.classify_texts(scorer.model, scorer.enc, TEXTS, MAX_LENGTH, CPU)
    low = float(np.quantile(probs[:, 1].numpy(), 0.5))  # half the texts spam, half ham
    scorer.threshold = low
    labels = scorer.score(TEXTS)["label"].tolist()
    assert labels == classifier.prediction_frame(probs, SPAM, low)["label"].tolist()
    assert labels != classifier.prediction_frame(probs, SPAM, None)["label"].tolist()


def test_each_mistake_is_this_line_and_writes_nothing(scorer, tmp_path: Path) -> None:
    source, dest = write_csv(tmp_path / "in.csv", messages(3)), tmp_path / "out.csv"
    cases = [
        (dict(source=tmp_path / "no.csv"), f"{tmp_path / 'no.csv'}: no such file"),
        (dict(keep=["id", "truncated"]), "--keep truncated: clashes with an output column "
         "(label, probability, p_billing, p_outage, p_sales, truncated); keep other columns"),
        (dict(text_columns=["id", "message"]), "--text-column: the model reads 1 field(s) "
         "(text); got 2 (id, message): name one column of the file for each"),
        (dict(text_columns=["body"]), f"{source}: no column 'body' (it has id, message, "
         "extra); set --text-column"),
    ]  # fmt: skip
    for given, line in cases:
        with pytest.raises(SpamGPTError) as caught:
            predicting.predict_file(
                **{"source": source, "dest": dest, "scorer": scorer, "in_format": "csv",
                   "out_format": "csv", "text_columns": ["message"]} | given
            )  # fmt: skip
        assert str(caught.value) == line
    (tmp_path / "empty.csv").write_text("text\n")
    with pytest.raises(SpamGPTError) as caught:
        predicting.predict_file(tmp_path / "empty.csv", dest, scorer, "csv", "csv")
    assert str(caught.value) == (
        f"{tmp_path / 'empty.csv'}: no rows to score (it is empty, or every row is bad)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "in.csv"]


def test_the_progress_bar_counts_rows_of_the_total_a_parquet_file_holds(
    scorer, tmp_path, monkeypatch
) -> None:
    """On a terminal (tqdm draws nothing elsewhere): a bar of the rows a Parquet file's footer
    holds; of a CSV file, the rows so far."""
    # No tqdm monitor thread: mutmut forks its runs from this process (tools/mutate.py), and
    # a fork while the thread holds tqdm's lock leaves the child waiting for it forever.
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    pd.DataFrame(messages(7)).to_parquet(tmp_path / "in.parquet")
    write_csv(tmp_path / "in.csv", messages(5))
    with drawn() as parquet:
        predicting.predict_file(tmp_path / "in.parquet", tmp_path / "o.csv", scorer, "parquet",
                                "csv", ["message"], chunk_rows=3)  # fmt: skip
    with drawn() as csv_file:
        predicting.predict_file(tmp_path / "in.csv", tmp_path / "o.csv", scorer, "csv", "csv",
                                ["message"], chunk_rows=3)  # fmt: skip
    assert re.search(r"predict: 100%\|\S+\| 7/7 \[[\d:<]+, *[\d.?]+ rows/s\]", parquet.text)
    assert re.search(r"predict: 5 rows \[[\d:]+, *[\d.?]+ rows/s\]", csv_file.text)


def test_parquet_output_is_a_row_group_a_chunk_and_no_index(scorer, tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", messages(7))
    predicting.predict_file(tmp_path / "in.csv", tmp_path / "out.parquet", scorer, "csv",
                            "parquet", ["message"], ["id"], chunk_rows=3)  # fmt: skip
    stored = pq.ParquetFile(tmp_path / "out.parquet")
    assert stored.num_row_groups == 3
    assert stored.schema_arrow.names == [
        "id", "label", "probability", "p_billing", "p_outage", "p_sales", "truncated"
    ]  # fmt: skip
    assert json.loads(stored.schema_arrow.metadata[b"pandas"])["index_columns"] == []
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["id"].tolist() == [f"t{i}" for i in range(7)]
    assert out.index.tolist() == list(range(7))


def test_a_kept_column_parquet_cannot_type_is_one_line(scorer, tmp_path: Path) -> None:
    """A --keep column of numbers in the first chunk and text in a later one: Parquet's
    column has one type (the first chunk's), so the run stops saying so."""
    rows = [{"text": f"m {i}", "extra": i if i < 3 else f"x{i}"} for i in range(5)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "out.parquet"
    with pytest.raises(SpamGPTError) as caught:
        predicting.predict_file(tmp_path / "in.jsonl", dest, scorer, "jsonl", "parquet",
                                keep=["extra"], chunk_rows=3)  # fmt: skip
    message = str(caught.value)
    assert message.startswith("a --keep column's values do not fit one Parquet column type (")
    assert message.endswith("); write CSV or JSON Lines instead") and "\n" not in message
    assert not dest.exists()


def test_json_lines_keep_values_as_they_are(scorer, tmp_path: Path) -> None:
    """Kept values as read: integers and null stay so (not floats and NaN), text not ASCII as
    it is, a Parquet timestamp as its text."""
    when = [datetime.datetime(2024, 1, d) for d in (2, 3, 4)]
    frame = pd.DataFrame({"text": ["hi", "café", "x"], "n": [1, 2, 3], "when": when})
    frame.to_parquet(tmp_path / "in.parquet")
    rows = [{"text": "hi", "n": 1}, {"text": "café ☕", "n": None}, {"text": "x", "n": 3}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    predicting.predict_file(tmp_path / "in.jsonl", tmp_path / "a.jsonl", scorer, "jsonl",
                            "jsonl", keep=["n", "text"])  # fmt: skip
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert [line.split(', "label"')[0] for line in lines] == [
        '{"n": 1, "text": "hi"', '{"n": null, "text": "café ☕"', '{"n": 3, "text": "x"'
    ]  # fmt: skip
    predicting.predict_file(tmp_path / "in.parquet", tmp_path / "b.jsonl", scorer, "parquet",
                            "jsonl", keep=["when"])  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["when"] for r in records] == [str(pd.Timestamp(w)) for w in when]


def test_files_are_utf8_whatever_the_locale(scorer, tmp_path: Path, ascii_locale) -> None:
    write_csv(tmp_path / "in.csv", [{"message": "café ☕", "id": "é"}])
    for fmt in ("csv", "jsonl"):
        predicting.predict_file(tmp_path / "in.csv", tmp_path / f"out.{fmt}", scorer, "csv",
                                fmt, ["message"], ["id"])  # fmt: skip
        assert "é" in (tmp_path / f"out.{fmt}").read_text(encoding="utf-8")


def test_explain_top_adds_each_rows_strongest_tokens(scorer, tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", [{"message": t} for t in TEXTS])
    predicting.predict_file(tmp_path / "in.csv", tmp_path / "out.jsonl", scorer, "csv",
                            "jsonl", ["message"], explain_top=2)  # fmt: skip
    scored = scorer.score(TEXTS)
    want = explain.top_tokens(scorer.model, scorer.enc, TEXTS, scored, CLASSES, scorer.meta, 2)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["top_tokens"] for r in records] == want
    assert max(len(json.loads(t)) for t in want) == 2


def test_a_model_keeping_the_tail_scores_the_tail(model_dir: Path, tmp_path: Path) -> None:
    """classifier.json's truncation: tail: the last MAX_LENGTH tokens of a long text."""
    folder = tmp_path / "tail"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / classifier.CLASSIFIER_JSON).read_text())
    (folder / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta | {"truncation": "tail"}))
    scorer = predicting.load_scorer(str(folder), folder, CPU, None)
    texts = [" ".join(["refund"] * 20 + ["seats discount now"]), "hi"]
    got = scorer.score(texts)
    probs, cut = classifier.classify_texts(scorer.model, scorer.enc, texts, MAX_LENGTH, CPU,
                                           Truncation("tail"))  # fmt: skip
    head, _ = classifier.classify_texts(scorer.model, scorer.enc, texts, MAX_LENGTH, CPU)
    np.testing.assert_allclose(got[["p_billing", "p_outage", "p_sales"]], probs.numpy(), atol=1e-6)
    assert cut == [True, False] and not np.allclose(head[0], probs[0], atol=1e-3)


def test_a_light_model_takes_its_base_weights_from_pretrained(
    model_dir: Path, scorer, tmp_path: Path, monkeypatch
) -> None:
    """A folder of the head alone (model.pretrained: its base weights are the hub's, under
    --pretrained/<repo_id>): its answers are the full folder's."""
    monkeypatch.chdir(tmp_path)  # no models/pretrained here: only --pretrained has them
    meta = json.loads((model_dir / classifier.CLASSIFIER_JSON).read_text())
    base = tmp_path / "pretrained" / meta["repo_id"]
    hub = hub_dir(model_dir.parent / "hub", meta["repo_id"], "tiny")
    shutil.copytree(hub, base)
    model, _ = classifier.load(model_dir)
    light = tmp_path / "light"
    classifier.save(model, light, meta | {"trained": ["head.weight", "head.bias"]}, base, False)
    loaded = predicting.load_scorer(str(light), tmp_path / "pretrained", CPU, None)
    got, want = loaded.score(TEXTS), scorer.score(TEXTS)
    assert got["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(got["p_billing"], want["p_billing"], atol=1e-6)


def test_a_models_fields_each_need_one_column_of_their_own(model_dir: Path, tmp_path: Path):
    """A model of two fields: --text-column names one column for each, different ones."""
    folder = tmp_path / "fields"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / classifier.CLASSIFIER_JSON).read_text())
    meta |= {"text_columns": ["subject", "body"], "text_template": "{subject}: {body}"}
    (folder / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta))
    scorer = predicting.load_scorer(str(folder), folder, CPU, None)
    source = write_csv(tmp_path / "in.csv", messages(2))
    for columns, line in (
        (["message"], "--text-column: the model reads 2 field(s) (subject, body); got 1 "
         "(message): name one column of the file for each"),
        (["message", "message"], "--text-column: must name one column or a list of "
         "different columns, got ['message', 'message']"),
    ):  # fmt: skip
        with pytest.raises(SpamGPTError) as caught:
            predicting.predict_file(source, tmp_path / "o.csv", scorer, "csv", "csv", columns)
        assert str(caught.value) == line
