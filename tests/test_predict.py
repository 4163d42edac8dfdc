"""`spamgpt predict`: every row of a file scored through the one prediction path, in order,
with kept columns, in each format; bad input stops in one line and leaves no output."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO

from spamgpt import params, runtime
from spamgpt.data import tokenizer
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.serve import cli
from spamgpt.serve import predict as predicting

CLASSES = Classes(("billing", "outage", "sales"))
MAX_LENGTH = 12
CPU = runtime.Compute(torch.device("cpu"), "fp32")


pytestmark = pytest.mark.usefixtures("one_core")  # see conftest: mutmut forks

UNAVAILABLE = "mps" if torch.cuda.is_available() else "cuda"  # a device this machine lacks


def model_folder(root: Path, **shapes: int) -> Path:
    """A self-contained model folder (every tensor) of a random GPT-2 of these shapes, three
    classes, its head drawn so that probabilities spread."""
    hub = make_hub(root / "hub", revision="tiny", **shapes)
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(CLASSES))
    torch.nn.init.normal_(model.head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    m = dataclasses.replace(params.load(REPO / "params.yaml").model, pretrained=False)
    eot = tokenizer.load(hub).eot_token
    meta = classifier.classifier_meta(m, CLASSES, [], MAX_LENGTH, eot)
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
