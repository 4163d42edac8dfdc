"""params.yaml validation: every wrong value is refused with one line naming its key."""

import copy
import io
import math
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml
from conftest import run_stage

from spamgpt import params, runtime
from spamgpt.data import tokenized
from spamgpt.errors import ParamsError
from spamgpt.model import classifier

REPO = Path(__file__).resolve().parents[1]
REAL_TEXT = (REPO / "params.yaml").read_text(encoding="utf-8")
REAL = yaml.safe_load(REAL_TEXT)


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


DELETE = object()


def modified(**changes: object) -> dict:
    """The real params.yaml with keys set, `section__key=value` (DELETE removes the key)."""
    raw = copy.deepcopy(REAL)
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        node = raw
        for section in sections:
            node = node[section]
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return raw


def test_real_params_load_and_flatten() -> None:
    p = params.load(REPO / "params.yaml")
    flat = params.flatten(p)

    def leaves(node: dict, prefix: str = "") -> set[str]:
        return set().union(*(
            leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
            for k, v in node.items()
        ))  # fmt: skip

    assert set(flat) == leaves(REAL)
    assert flat["train.lr"] == REAL["train"]["lr"] == p.train.lr
    assert flat["data.mirrors"] == REAL["data"]["mirrors"]
    assert flat["model.max_length"] is None
    assert not any(isinstance(v, dict) for v in flat.values())


def test_yaml_12_floats(tmp_path: Path) -> None:
    """DVC's `-S train.lr=1e-3` writes `lr: 1e-3`: a number in YAML 1.2, a string in 1.1."""
    text = REAL_TEXT.replace("lr: 5.0e-5", "lr: 1e-3").replace("dropout: 0.0", "dropout: 2E-1")
    assert "lr: 1e-3" in text and "dropout: 2E-1" in text
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    p = params.load(tmp_path / "params.yaml")
    assert p.train.lr == 0.001 and isinstance(p.train.lr, float)
    assert p.model.dropout == 0.2
    assert p.split.seed == 123 and type(p.split.seed) is int  # integers stay integers


# (id, params.yaml content: a dict to dump or raw text, what the message must start with)
BAD: list[tuple[str, dict | str, str]] = [
    ("yaml-syntax", REAL_TEXT + "train: [unclosed\n", "{path}: line"),
    ("yaml-tab-indent", REAL_TEXT.replace("  lr:", "\tlr:"), "{path}: line"),
    ("empty-file", "", "params.yaml"),
    ("top-level-list", "- data\n- split\n", "params.yaml"),
    ("missing-section", modified(evaluate=DELETE), "evaluate"),
    ("section-null", modified(train=None), "train"),
    ("missing-key", modified(train__lr=DELETE), "train.lr"),
    ("missing-nested-key", modified(data__sha256=DELETE), "data.sha256"),
    ("unknown-top-key", modified(extra={"a": 1}), "extra"),
    ("unknown-section-key", modified(train__learning_rate=0.1), "train.learning_rate"),
    ("string-for-int", modified(train__epochs="5"), "train.epochs"),
    ("float-for-int", modified(train__epochs=2.5), "train.epochs"),
    ("bool-for-int", modified(train__batch_size=True), "train.batch_size"),
    ("bool-for-float", modified(train__lr=True), "train.lr"),
    ("list-for-string", modified(mlflow__experiment=["a"]), "mlflow.experiment"),
    ("string-for-list", modified(data__mirrors="https://example.com/x.zip"), "data.mirrors"),
    ("string-for-bool", modified(split__dedupe="maybe"), "split.dedupe"),
    ("bool-for-max-length", modified(model__max_length=True), "model.max_length"),
    ("negative-lr", modified(train__lr=-1e-4), "train.lr"),
    ("zero-lr", modified(train__lr=0), "train.lr"),
    ("huge-lr", modified(train__lr=5), "train.lr"),
    ("lr-fast", modified(train__lr="fast"), "train.lr"),
    ("nan-lr", REAL_TEXT.replace("lr: 5.0e-5", "lr: .nan"), "train.lr"),
    ("inf-lr", REAL_TEXT.replace("lr: 5.0e-5", "lr: .inf"), "train.lr"),
    ("nan-dropout", modified(model__dropout=math.nan), "model.dropout"),
    ("val-plus-test-1", modified(split__val=0.5, split__test=0.5), "split.val"),
    ("val-plus-test-over-1", modified(split__val=0.4, split__test=0.7), "split.val"),
    ("val-0", modified(split__val=0), "split.val"),
    ("test-1", modified(split__test=1), "split.test"),
    ("negative-seed", modified(split__seed=-1), "split.seed"),
    ("trainable-blocks-negative", modified(model__trainable_blocks=-1), "model.trainable_blocks"),
    ("trainable-blocks-some", modified(model__trainable_blocks="some"), "model.trainable_blocks"),
    ("max-length-1", modified(model__max_length=1), "model.max_length"),
    ("pooling-max", modified(model__pooling="max"), "model.pooling"),
    ("device-tpu", modified(train__device="tpu"), "train.device"),
    ("device-uppercase", modified(train__device="CPU"), "train.device"),
    ("precision-fp8", modified(train__precision="fp8"), "train.precision"),
    ("precision-half", modified(train__precision="half"), "train.precision"),
    ("epochs-0", modified(train__epochs=0), "train.epochs"),
    ("batch-size-0", modified(train__batch_size=0), "train.batch_size"),
    ("patience-0", modified(train__patience=0), "train.patience"),
    ("grad-clip-0", modified(train__grad_clip=0), "train.grad_clip"),
    ("warmup-over-1", modified(train__warmup_ratio=1.5), "train.warmup_ratio"),
    ("class-weights", modified(train__class_weights="auto"), "train.class_weights"),
    ("accumulation-0", modified(train__accumulation_steps=0), "train.accumulation_steps"),
    ("accumulation-float", modified(train__accumulation_steps=2.0), "train.accumulation_steps"),
    ("eval-every-0", modified(train__eval_every=0), "train.eval_every"),
    ("eval-every-epoch", modified(train__eval_every="epoch"), "train.eval_every"),
    ("select-metric-f1", modified(train__select_metric="f1"), "train.select_metric"),
    ("select-metric-class", modified(train__select_metric="phish_f1"), "train.select_metric"),
    ("select-metric-loss", modified(train__select_metric="loss"), "train.select_metric"),
    ("min-delta-negative", modified(train__min_delta=-0.01), "train.min_delta"),
    (
        "policy-precision-0",
        modified(evaluate__threshold={"min_precision": 0}),
        "evaluate.threshold",
    ),
    (
        "policy-precision-2",
        modified(evaluate__threshold={"min_precision": 2}),
        "evaluate.threshold",
    ),
    ("policy-fpr-1", modified(evaluate__threshold={"max_fpr": 1}), "evaluate.threshold"),
    ("policy-fpr-negative", modified(evaluate__threshold={"max_fpr": -0.1}), "evaluate.threshold"),
    ("policy-recall", modified(evaluate__threshold={"min_recall": 0.9}), "evaluate.threshold"),
    ("policy-empty", modified(evaluate__threshold={}), "evaluate.threshold"),
    (
        "policy-two",
        modified(evaluate__threshold={"min_precision": 0.9, "max_fpr": 0.1}),
        "evaluate.threshold",
    ),
    (
        "policy-no-positive",
        modified(evaluate__threshold={"min_precision": 0.9}, data__positive_label=None),
        "evaluate.threshold",
    ),
    ("weights-zero", modified(train__class_weights={"ham": 1, "spam": 0}), "train.class_weights"),
    (
        "weights-negative",
        modified(train__class_weights={"ham": -1, "spam": 2}),
        "train.class_weights",
    ),
    (
        "weights-string",
        modified(train__class_weights={"ham": 1, "spam": "x"}),
        "train.class_weights",
    ),
    ("weights-missing", modified(train__class_weights={"spam": 5}), "train.class_weights"),
    (
        "weights-unknown",
        modified(train__class_weights={"ham": 1, "spam": 5, "x": 1}),
        "train.class_weights",
    ),
    ("weights-list", modified(train__class_weights=[1, 5]), "train.class_weights"),
    ("weights-empty", modified(train__class_weights={}), "train.class_weights"),
    ("dropout-1", modified(model__dropout=1.0), "model.dropout"),
    ("threshold-1", modified(evaluate__threshold=1.0), "evaluate.threshold"),
    ("calibration-isotonic", modified(evaluate__calibration="isotonic"), "evaluate.calibration"),
    ("repo-id-no-owner", modified(model__repo_id="gpt2"), "model.repo_id"),
    ("repo-id-three-parts", modified(model__repo_id="a/b/c"), "model.repo_id"),
    ("revision-slash", modified(model__revision="main/../x"), "model.revision"),
    ("url-ftp", modified(data__url="ftp://example.com/sms.zip"), "data.url"),
    ("url-file", modified(data__url="file:///etc/passwd"), "data.url"),
    ("url-no-host", modified(data__url="https:///sms.zip"), "data.url"),
    ("mirror-file", modified(data__mirrors=["file:///tmp/sms.zip"]), "data.mirrors"),
    (
        "mirror-ftp-second",
        modified(data__mirrors=["https://example.com/a.zip", "ftp://example.com/b.zip"]),
        "data.mirrors",
    ),
    ("mirror-not-string", modified(data__mirrors=[1]), "data.mirrors"),
    ("hub-url-ftp", modified(model__hub_url="ftp://huggingface.co"), "model.hub_url"),
    ("hub-url-file", modified(model__hub_url="file:///srv/hub"), "model.hub_url"),
    ("member-path", modified(data__member="../SMSSpamCollection"), "data.member"),
    ("sha256-short", modified(data__sha256="abc123"), "data.sha256"),
    ("sha256-uppercase", modified(data__sha256=REAL["data"]["sha256"].upper()), "data.sha256"),
    ("sha256-not-hex", modified(data__sha256="g" * 64), "data.sha256"),
    ("sha256-65", modified(data__sha256="a" * 65), "data.sha256"),
    ("bad-lines-ignore", modified(data__bad_lines="ignore"), "data.bad_lines"),
    ("experiment-empty", modified(mlflow__experiment=""), "mlflow.experiment"),
    ("experiment-multiline", modified(mlflow__experiment="a\nb"), "mlflow.experiment"),
    ("log-model-light", modified(mlflow__log_model="light"), "mlflow.log_model"),
    ("label-format-several", modified(data__label_format="several"), "data.label_format"),
    ("label-separator-empty", modified(data__label_separator=""), "data.label_separator"),
    ("allow-empty-labels-yes", modified(data__allow_empty_labels="yes"), "data.allow_empty_labels"),
    (
        "multi-with-positive-label",
        modified(data__label_format="multi"),
        "data.positive_label: multi-label data has no positive class",
    ),
    ("log-model-string-true", modified(mlflow__log_model="true"), "mlflow.log_model"),
    ("log-checkpoints-full", modified(mlflow__log_checkpoints="full"), "mlflow.log_checkpoints"),
    ("export-torchscript", modified(mlflow__export=["torchscript"]), "mlflow.export"),
    ("export-twice", modified(mlflow__export=["onnx", "onnx"]), "mlflow.export"),
    ("serve-tensorrt", modified(mlflow__serve="tensorrt"), "mlflow.serve"),
    (
        "serve-onnx-no-model",
        modified(mlflow__serve="onnx", mlflow__log_model=False),
        "mlflow.serve: onnx is what the logged MLflow model scores with, and mlflow.log_model",
    ),
    (
        "export-transformers-mean",
        modified(mlflow__export=["transformers"], model__pooling="mean"),
        "mlflow.export: transformers' GPT2ForSequenceClassification reads the last token",
    ),
]


@pytest.mark.parametrize(("content", "start"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_params_are_refused_with_one_line(
    tmp_path: Path, content: dict | str, start: str
) -> None:
    path = tmp_path / "params.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        write(path, content)
    with pytest.raises(ParamsError) as info:
        params.load(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(start.format(path=path)), message
    assert info.value.exit_code == 2


def test_table_is_big_enough() -> None:
    assert len(BAD) >= 24
    assert len({c[0] for c in BAD}) == len(BAD)


def test_every_table_dict_differs_from_real_in_one_place() -> None:
    """Guard against a table entry that silently equals the valid params."""
    for name, content, _ in BAD:
        assert content != REAL, name
    params.parse(copy.deepcopy(REAL))  # and the real one is valid


def test_missing_section_says_what_it_must_be() -> None:
    with pytest.raises(ParamsError, match=r"^evaluate: missing; it must be set to a mapping"):
        params.parse(modified(evaluate=DELETE))


def test_optional_values_accept_null_and_all() -> None:
    p = params.parse(modified(model__max_length=None, model__trainable_blocks="all"))
    assert p.model.max_length is None and p.model.trainable_blocks == "all"
    p = params.parse(modified(train__grad_clip=None, model__max_length=2, train__lr=1))
    assert p.train.grad_clip is None and p.model.max_length == 2 and p.train.lr == 1


def test_class_weights_mapping_and_select_metric_of_a_class() -> None:
    p = params.parse(modified(train__class_weights={"spam": 5, "ham": 1}))
    assert p.train.class_weights == {"spam": 5, "ham": 1}
    integers = modified(data__labels=[0, 1], data__positive_label=1, train__select_metric="0_f1")
    integers["train"]["class_weights"] = {0: 1, 1: 2.5}
    p = params.parse(integers)
    assert p.train.class_weights == {0: 1, 1: 2.5} and p.train.select_metric == "0_f1"
    with pytest.raises(
        ParamsError, match=r"^train\.class_weights: no weight for 'ham'; .*: ham, spam$"
    ):
        params.parse(modified(train__class_weights={"spam": 5}))
    # with the classes found in the data (data.labels null), the finetune stage checks
    found = params.parse(modified(data__labels=None, train__class_weights={"x": 1})).train
    with pytest.raises(ParamsError, match=r"^train\.class_weights: 'x' is not a class"):
        params.check_train_classes(found, ("ham", "spam"))


def test_threshold_policies_within_their_bounds() -> None:
    for policy in (
        {"min_precision": 0.99},
        {"min_precision": 1},
        {"max_fpr": 0},
        {"max_fpr": 1e-3},
    ):
        assert params.parse(modified(evaluate__threshold=policy)).evaluate.threshold == policy
        multi = modified(
            evaluate__threshold=policy, data__label_format="multi", data__positive_label=None
        )  # each label's
        assert params.parse(multi).evaluate.threshold == policy


def test_evaluate_threshold_is_checked_against_the_classes_in_one_place() -> None:
    """params.check_threshold: at load with what params.yaml says of the classes, and again
    (evaluate, metrics) once the data's are known."""
    multi = modified(
        evaluate__threshold=None, data__label_format="multi", data__positive_label=None
    )
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: multi-label data needs a thr"):
        params.parse(multi)  # at load, not after training
    for setting in (0.5, "auto", {"max_fpr": 0.1}):
        params.check_threshold(setting, "multi", None, 27)
    params.check_threshold(0.5, "single", None, 3)  # no positive class: none applies, none refused
    params.check_threshold(None, "single", "spam", 3)
    with pytest.raises(ParamsError, match=r"applies to two classes only, the data has 3; "):
        params.check_threshold("auto", "single", "spam", 3)
    params.check_threshold("auto", "single", "spam", None)  # classes not known yet
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: max_fpr must be 0 <= max_fpr"):
        params.check_threshold({"max_fpr": 1.0}, "multi", None)


def test_log_model_is_true_false_or_full() -> None:
    for value in (True, False, "full"):
        assert params.parse(modified(mlflow__log_model=value)).mlflow.log_model == value
    assert params.load(REPO / "params.yaml").mlflow.log_model is True  # light, as committed


def test_every_precision_is_accepted() -> None:
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert params.parse(modified(train__precision=precision)).train.precision == precision


def test_missing_file_is_a_params_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        params.load(tmp_path / "params.yaml")


# --- values that only the machine or the model can refuse ---


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_machine() -> None:
    with pytest.raises(ParamsError) as info:
        runtime.resolve_device("cuda")
    assert str(info.value).startswith("train.device:") and "\n" not in str(info.value)
    assert "cpu" in str(info.value)  # says what is allowed here
    assert runtime.resolve_device("cpu") == torch.device("cpu")


def test_trainable_blocks_beyond_the_model() -> None:
    with pytest.raises(ParamsError, match=r"^model\.trainable_blocks:"):
        classifier.frozen_blocks(2, 3)
    assert classifier.frozen_blocks(2, 2) == 0
    assert classifier.frozen_blocks(2, 0) == 2
    assert classifier.frozen_blocks(2, "all") is None


def test_max_length_beyond_the_context() -> None:
    with pytest.raises(ParamsError, match=r"^model\.max_length:.*1024"):
        tokenized.resolve_max_length(2000, [[1, 2, 3]], 1024)
    assert tokenized.resolve_max_length(1024, [[1, 2, 3]], 1024) == 1024


# --- a real stage refuses bad params before touching any output ---

RAW = "".join(
    f"{'spam' if i % 4 == 0 else 'ham'}\tmessage number {i} with some text\n" for i in range(40)
)
OLD_METRICS = '{"old": true}\n'
OLD_TRAIN = "line,label,text\n1,ham,old\n"


def lay_out(folder: Path, params_text: str) -> None:
    """A DVC workspace for the split stage: params, raw data, and outputs of an earlier run."""
    files = {
        "params.yaml": params_text,
        "data/raw/dataset": RAW,
        "data/split/train.csv": OLD_TRAIN,
        "metrics/data.json": OLD_METRICS,
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def start_split_stage(folder: Path) -> subprocess.Popen:
    return run_stage("split", folder)


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> content)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


STAGE_BAD = [
    ("lr-fast", yaml.safe_dump(modified(train__lr="fast")), "train.lr"),
    ("val-0", yaml.safe_dump(modified(split__val=0)), "split.val"),
    ("yaml-syntax", REAL_TEXT + "train: [unclosed\n", "params.yaml: line"),
]


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory: pytest.TempPathFactory):
    """The split stage started in one workspace per case, all at once (each run is ~1.5 s of
    imports): name -> (workspace, its files before the run, the process)."""
    runs = {}
    for name, text in [*((c[0], c[1]) for c in STAGE_BAD), ("good", REAL_TEXT)]:
        folder = tmp_path_factory.mktemp(f"stage-{name}")
        lay_out(folder, text)
        runs[name] = (folder, listing(folder), start_split_stage(folder))
    yield runs
    for _, _, process in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("name", "key"), [(c[0], c[2]) for c in STAGE_BAD])
def test_stage_exits_2_with_one_line_and_touches_nothing(
    stage_runs: dict, name: str, key: str
) -> None:
    folder, before, process = stage_runs[name]
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and key in lines[0]
    assert listing(folder) == before  # nothing created, changed or removed, no temp files


def test_stage_with_good_params_writes_its_outputs(stage_runs: dict) -> None:
    """The control for the test above: the same workspace with valid params does get written."""
    folder, before, process = stage_runs["good"]
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    after = listing(folder)
    assert after["metrics/data.json"] != before["metrics/data.json"]
    assert after["data/split/train.csv"] != before["data/split/train.csv"]
    assert {"data/split/val.csv", "data/split/test.csv"} <= set(after)


def test_every_key_has_its_line_and_the_reference_page_is_current() -> None:
    """docs/parameters.md is generated from each key's doc= in params.py: a key without one,
    or a page not regenerated since, fails here."""
    undocumented = [key for key, f in params.documented_keys() if not f.metadata.get("doc")]
    assert not undocumented, f"give {undocumented} a doc= in spamgpt/params.py"
    page = (REPO / params.REFERENCE).read_text(encoding="utf-8")
    assert page == params.reference(REPO / "params.yaml"), f"stale: {params.REFERENCE_COMMAND}"
    rows = [line.split(" | ")[0].removeprefix("| ").split(", ") for line in page.splitlines()]
    listed = {key for row in rows for key in row}
    flat = params.flatten(params.load(REPO / "params.yaml"))
    assert set(flat) <= listed, sorted(set(flat) - listed)


def test_the_reference_shows_each_value_as_params_yaml_writes_it(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["data"]["labels"] = ["a|b", "c"]
    raw["train"]["class_weights"] = {"a|b": 2.0, "c": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    rows = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1]
        for line in params.reference(tmp_path / "params.yaml").splitlines()
        if line.startswith("| ") and " | " in line
    }
    assert rows["data.labels"] == "`[a\\|b, c]`"
    assert rows["train.class_weights"] == "`{a\\|b: 2.0, c: 1}`"
    assert rows["train.lr"] == "`5.0e-05`" and rows["data.text_template"] == "`null`"
    assert rows["data.files.train.url, data.files.val.url, data.files.test.url"] == ""


NUMBER = {
    "data__label_format": "number",
    "data__labels": None,
    "data__positive_label": None,
    "evaluate__threshold": None,
    "train__class_weights": "none",
}


def test_number_labels_take_no_class_settings() -> None:
    """data.label_format: number (regression): every key that names or weighs classes, or
    thresholds a probability, is refused at load with the value it must have."""
    assert params.parse(modified(**NUMBER)).data.label_format == "number"
    assert params.parse(modified(**NUMBER, train__select_metric="val_loss"))
    refused = {
        "data__labels": (["a", "b"], r"^data\.labels: number labels have no classes, got "),
        "data__positive_label": ("spam", r"^data\.positive_label: .*'spam'; allowed: null$"),
        "evaluate__threshold": (0.5, r"^evaluate\.threshold: .* got 0\.5; allowed: null$"),
        "train__class_weights": ("balanced", r"^train\.class_weights: .*; allowed: none$"),
        "train__select_metric": ("macro_f1", r"^train\.select_metric: .*: auto or val_loss$"),
    }
    for key, (value, message) in refused.items():
        with pytest.raises(ParamsError, match=message):
            params.parse(modified(**{**NUMBER, key: value}))


FILES = {
    "train": {"url": "a.csv", "sha256": None},
    "val": None,
    "test": {"url": "b.csv", "sha256": None},
}
ONE_CLASS = {"data__labels": ["ham"], "data__positive_label": None}
# (id, the real params.yaml with these keys set, the whole message): each check's own line
MESSAGES: list[tuple[str, dict, str]] = [
    ("tab-text-columns", {"data__text_column": ["a", "b"]},
     "data.text_column: label_tab_text files have no named columns; allowed: data.format csv, "
     "tsv, jsonl or parquet"),
    ("tab-template", {"data__text_template": "{text}"},
     "data.text_template: label_tab_text files have no named columns; allowed: data.format "
     "csv, tsv, jsonl or parquet"),
    ("tab-split-column", {"data__split_column": "split"},
     "data.split_column: label_tab_text files have no named columns; allowed: data.format csv, "
     "tsv, jsonl or parquet"),
    ("url-and-files", {"data__files": FILES},
     "data.url: set exactly one of data.url (one file) and data.files (given train/val/test "
     "files); got both"),
    ("neither", {"data__url": None},
     "data.url: set exactly one of data.url (one file) and data.files (given train/val/test "
     "files); got neither"),
    ("files-and-split-column", {"data__url": None, "data__files": FILES, "data__format": "csv",
                                "data__split_column": "split"},
     "data.split_column: splits one file (data.url); with data.files the splits are given: "
     "set it to null"),
    ("labels-one", ONE_CLASS,
     "data.labels: must list at least two different classes, or be null (the classes found in "
     "the data); got ['ham']"),
    ("labels-twice", {"data__labels": ["ham", "ham"], "data__positive_label": None},
     "data.labels: must list at least two different classes, or be null (the classes found in "
     "the data); got ['ham', 'ham']"),
    ("labels-report-key", {"data__labels": ["ham", "accuracy"], "data__positive_label": None},
     "data.labels: 'accuracy' cannot name a class (reports use it); rename it in the data"),
    ("labels-blank", {"data__labels": ["ham", " "], "data__positive_label": None},
     "data.labels: ' ' cannot name a class (reports use it); rename it in the data"),
    ("multi-positive", {"data__label_format": "multi"},
     "data.positive_label: multi-label data has no positive class (each label has its own "
     "threshold), got 'spam'; allowed: null"),
    ("multi-threshold-null", {"data__label_format": "multi", "data__positive_label": None,
                              "evaluate__threshold": None},
     "evaluate.threshold: multi-label data needs a threshold for each label, not null; "
     "allowed: a number in (0, 1), auto, {min_precision: p} or {max_fpr: f}"),
    ("number-labels", {"data__label_format": "number", "data__positive_label": None},
     "data.labels: number labels have no classes, got ['ham', 'spam']; allowed: null"),
    ("number-positive", {"data__label_format": "number", "data__labels": None},
     "data.positive_label: number labels have no classes, got 'spam'; allowed: null"),
    ("number-threshold", {**NUMBER, "evaluate__threshold": 0.5},
     "evaluate.threshold: number labels (data.label_format: number) have no classes, got 0.5; "
     "allowed: null"),
    ("positive-not-a-label", {"data__positive_label": "phish"},
     "data.positive_label: 'phish' is not one of data.labels ['ham', 'spam']; allowed: one of "
     "them, or null (macro F1 picks the best epoch)"),
    ("split-names-same", {"data__split_names": {"train": "a", "val": "a", "test": "b"}},
     "data.split_names: train, val and test need three different values, got ['a', 'a', 'b']"),
    ("val-plus-test", {"split__val": 0.5, "split__test": 0.5},
     "split.val + split.test: must be < 1 so that data is left to train on, got 0.5 + 0.5 = 1"),
    ("lora-empty", {"lora__targets": []},
     "lora.targets: must list each projection at most once, at least one of c_attn, "
     "attn.c_proj, mlp.c_fc, mlp.c_proj; got []"),
    ("lora-twice", {"lora__targets": ["c_attn", "c_attn"]},
     "lora.targets: must list each projection at most once, at least one of c_attn, "
     "attn.c_proj, mlp.c_fc, mlp.c_proj; got ['c_attn', 'c_attn']"),
    ("weights-zero", {"train__class_weights": {"ham": 1, "spam": 0}},
     "train.class_weights: the weight of 'spam' must be a positive number, got 0"),
    ("weights-missing", {"train__class_weights": {"spam": 5}},
     "train.class_weights: no weight for 'ham'; a mapping gives every class a weight: ham, spam"),
    ("weights-unknown", {"train__class_weights": {"ham": 1, "spam": 5, "x": 1}},
     "train.class_weights: 'x' is not a class of the data; a mapping gives every class a "
     "weight: ham, spam"),
    ("weights-twice", {"data__labels": [1, 2], "data__positive_label": None,
                       "train__class_weights": {1: 1, 2: 5, "2": 1}},
     "train.class_weights: a class is named twice; a mapping gives every class a weight: 1, 2"),
    ("select-metric", {"train__select_metric": "phish_f1"},
     "train.select_metric: 'phish_f1' is not a metric of these classes; allowed: auto, "
     "macro_f1, micro_f1, accuracy, val_loss, ham_f1, spam_f1"),
    ("policy-two", {"evaluate__threshold": {"min_precision": 0.9, "max_fpr": 0.1}},
     "evaluate.threshold: a policy sets one of min_precision, max_fpr; got {'min_precision': "
     "0.9, 'max_fpr': 0.1}"),
    ("policy-fpr-1", {"evaluate__threshold": {"max_fpr": 1}},
     "evaluate.threshold: max_fpr must be 0 <= max_fpr < 1, got 1"),
    ("policy-precision-0", {"evaluate__threshold": {"min_precision": 0}},
     "evaluate.threshold: min_precision must be 0 < min_precision <= 1, got 0"),
    ("policy-no-positive", {"evaluate__threshold": {"min_precision": 0.9},
                            "data__positive_label": None},
     "evaluate.threshold: the policy {'min_precision': 0.9} applies to the positive class; set "
     "data.positive_label, or use null"),
    ("threshold-three-classes", {"data__labels": ["a", "b", "c"], "data__positive_label": "a"},
     "evaluate.threshold: a threshold applies to two classes only, the data has 3; allowed: "
     "null (the most probable class)"),
    ("serve-onnx", {"mlflow__serve": "onnx", "mlflow__log_model": False},
     "mlflow.serve: onnx is what the logged MLflow model scores with, and mlflow.log_model is "
     "false; allowed: mlflow.log_model true or full, or mlflow.serve: pytorch"),
    ("export-twice", {"mlflow__export": ["onnx", "onnx"]},
     "mlflow.export: must list each format at most once, of transformers and onnx; got "
     "['onnx', 'onnx']"),
    ("export-transformers-mean", {"mlflow__export": ["transformers"], "model__pooling": "mean"},
     "mlflow.export: transformers' GPT2ForSequenceClassification reads the last token, "
     "model.pooling is 'mean'; allowed: model.pooling: last, or mlflow.export without "
     "transformers (onnx holds any pooling)"),
    ("missing-key", {"train__lr": DELETE}, "train.lr: missing; it must be set to a number"),
    ("missing-mapping", {"data__split_names": DELETE},
     "data.split_names: missing; it must be set to a mapping of keys"),
    ("not-a-mapping", {"train": [1]}, "train: must be a mapping of keys, got [1]"),
    ("files-val-not-a-mapping", {"data__url": None, "data__files": {**FILES, "val": 3}},
     "data.files.val: must be a mapping of keys, got 3"),
    ("lr-string", {"train__lr": "fast"}, "train.lr: must be a number, got 'fast'"),
    ("lr-0", {"train__lr": 0}, "train.lr: must be > 0, got 0"),
    ("lr-5", {"train__lr": 5}, "train.lr: must be <= 1, got 5"),
    ("seed-negative", {"split__seed": -1}, "split.seed: must be >= 0, got -1"),
    ("dropout-1", {"model__dropout": 1.0}, "model.dropout: must be < 1, got 1"),
    ("sha256-short", {"data__sha256": "abc"},
     "data.sha256: must be 64 lowercase hex digits or null, got 'abc'"),
    ("device", {"train__device": "tpu"},
     "train.device: must be 'auto' or 'cpu' or 'cuda' or 'mps', got 'tpu'"),
    ("max-length-bool", {"model__max_length": True},
     "model.max_length: must be an integer or null, got True"),
    ("threshold-string", {"evaluate__threshold": "best"},
     "evaluate.threshold: must be a number or 'auto' or a mapping {'min_precision' or "
     "'max_fpr': a number} or null, got 'best'"),
    ("class-weights-string", {"train__class_weights": "auto"},
     "train.class_weights: must be 'balanced' or 'none' or a mapping {a string or an integer: "
     "a number}, got 'auto'"),
    ("trainable-blocks", {"model__trainable_blocks": "some"},
     "model.trainable_blocks: must be an integer or 'all', got 'some'"),
    ("lora-targets", {"lora__targets": ["c_fc"]},
     "lora.targets: must be a list of any of 'c_attn', 'attn.c_proj', 'mlp.c_fc' or "
     "'mlp.c_proj', got ['c_fc']"),
    ("labels-numbers", {"data__labels": [1.5]},
     "data.labels: must be a list of strings or integers or null, got [1.5]"),
    ("mirrors-number", {"data__mirrors": [3]},
     "data.mirrors: must be a list of strings, got [3]"),
    ("text-column-numbers", {"data__text_column": [1]},
     "data.text_column: must be a string or a list of strings, got [1]"),
    ("export-pickle", {"mlflow__export": ["pickle"]},
     "mlflow.export: must be a list of any of 'transformers' or 'onnx', got ['pickle']"),
    ("cuda-graphs", {"train__cuda_graphs": "yes"},
     "train.cuda_graphs: must be 'auto' or true/false, got 'yes'"),
    ("experiment-blank", {"mlflow__experiment": " "},
     "mlflow.experiment: must be a non-empty name, got ' '"),
    ("bool-for-string", {"mlflow__experiment": True},
     "mlflow.experiment: must be a string, got True"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("annotation", "words"),
    [
        (str, "a string"),
        (int | None, "an integer or null"),
        (Literal["a", "b", "c"], "'a' or 'b' or 'c'"),
        (list[bool], "a list of true/false values"),
        (list[float], "a list of numbers"),
        (list[int | None], "a list of integers or nulls"),
        (list[Literal["a"]], "a list of 'a'"),
        (list[Literal["a", "b"] | str], "a list of any of 'a' or 'b' or strings"),
        (list[list[str]], "a list of lists of strings"),
        (list[dict[str, float]], "a list of mappings {a string: a number}"),
        (list[params.LoraParams], "a list of mappings of keys"),
        (params.LoraParams | None, "a mapping of keys or null"),
        (dict[str | int, list[float]], "a mapping {a string or an integer: a list of numbers}"),
    ],
)  # fmt: skip
def test_types_are_described_in_words_each_a_list_holds_in_the_plural(annotation, words) -> None:
    assert params._describe(annotation) == words


@pytest.mark.parametrize(
    ("changes", "message"), [c[1:] for c in MESSAGES], ids=[c[0] for c in MESSAGES]
)
def test_each_check_says_what_is_wrong_and_allowed(changes: dict, message: str) -> None:
    with pytest.raises(ParamsError) as raised:
        params.parse(modified(**changes))
    assert str(raised.value) == message


def test_the_top_level_must_be_a_mapping_and_unknown_keys_name_the_allowed() -> None:
    with pytest.raises(ParamsError, match=r"^params\.yaml: must be a mapping of keys, got \[1\]$"):
        params.parse([1])
    with pytest.raises(ParamsError) as raised:
        params.parse(modified(train__learning_rate=0.1))
    assert str(raised.value) == (
        "train.learning_rate: unknown key; allowed: epochs, batch_size, lr, weight_decay, "
        "warmup_ratio, grad_clip, accumulation_steps, eval_every, class_weights, patience, "
        "select_metric, min_delta, seed, device, precision, devices, cuda_graphs"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: b: c\n", "line 1: invalid YAML: mapping values are not allowed here"),
        ("train: [unclosed\n", "line 2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        ("a: 1\n\x00\n", "invalid YAML: unacceptable character #x0000: special characters are "
         "not allowed"),  # a reader's error: no line, its message's first line
    ],
    ids=["line-1", "line-2", "no-line"],
)  # fmt: skip
def test_yaml_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as raised:
        params.load(path)
    assert str(raised.value) == f"{path}: {message}"


def test_params_are_read_as_utf_8_whatever_the_locale(tmp_path: Path, ascii_locale) -> None:
    raw = modified(data__labels=["ham", "sp\u00e5m"], data__positive_label="sp\u00e5m")
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)  # "spåm" as UTF-8 bytes
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    p = params.load(tmp_path / "params.yaml")
    assert p.data.labels == ["ham", "sp\u00e5m"]
    page = params.reference(tmp_path / "params.yaml")
    assert "| data.labels | `[ham, sp\u00e5m]` |" in page  # as written, not escaped ("sp\\xE5m")


def test_the_reference_commands_help(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        params.main(["--help"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "\n\nparams.yaml's schema\n\n" in printed  # the description, a paragraph of its own
    shown = " ".join(printed.split())  # argparse wraps to the terminal
    assert "--markdown print docs/parameters.md" in shown


def test_the_reference_page_is_utf_8_whatever_the_output_encoding(tmp_path, monkeypatch) -> None:
    """`python -m spamgpt.params --markdown > docs/parameters.md` writes non-ASCII values as
    they are, in UTF-8, even where the output's encoding is ASCII."""
    raw = modified(data__labels=["ham", "sp\u00e5m\u2026"], data__positive_label="sp\u00e5m\u2026")
    write(tmp_path / "params.yaml", raw)
    monkeypatch.chdir(tmp_path)  # params.yaml of the working directory
    output = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(output, encoding="ascii"))
    params.main(["--markdown"])
    sys.stdout.flush()
    assert output.getvalue() == params.reference(tmp_path / "params.yaml").encode("utf-8")
    assert "| data.labels | `[ham, sp\u00e5m\u2026]` |".encode() in output.getvalue()
    params.main([])  # no --markdown: nothing more printed
    sys.stdout.flush()
    assert output.getvalue() == params.reference(tmp_path / "params.yaml").encode("utf-8")


def test_the_sections_helpers_give_their_objects() -> None:
    from spamgpt.texts import TextFields, Truncation

    given = {"train": {"url": "a.csv", "sha256": None}, "test": {"url": "b.csv", "sha256": None}}
    p = params.parse(
        modified(
            data__url=None,
            data__files={**given, "val": None},
            data__format="csv",
            data__text_column=["subject", "body"],
            data__text_template="{subject}: {body}",
            model__truncation="head_tail",
            model__head_ratio=0.4,
        )
    )
    assert p.data.text_fields() == TextFields.of(["subject", "body"], "{subject}: {body}")
    assert p.model.truncation_rule() == Truncation("head_tail", 0.4)
    assert list(p.data.files.sources()) == ["train", "test"]  # val null: not given
    assert p.data.files.sources()["test"].url == "b.csv"
    with_val = modified(data__url=None, data__files={**given, "val": given["test"]})
    sources = params.parse(with_val).data.files.sources()
    assert list(sources) == ["train", "val", "test"] and sources["train"].url == "a.csv"


def test_a_value_shows_in_flow_style_on_one_line() -> None:
    assert params._shown({"a": [1, 2]}) == "`{a: [1, 2]}`"
    names = [f"mirror-{i}" for i in range(12)]  # over 80 characters: yaml's default width
    assert params._shown(names) == f"`[{', '.join(names)}]`"


def test_the_reference_row_of_a_shared_field_lists_each_value_once(tmp_path: Path) -> None:
    """data.files' url: train's and test's the same, val's unset (val null): shown once;
    a key params.yaml leaves out shows blank."""
    files = {"train": {"url": "a.csv", "sha256": None}, "val": None}
    raw = modified(data__url=None, data__files={**files, "test": {"url": "a.csv", "sha256": None}})
    del raw["data"]["text_template"]
    page = params.reference(write(tmp_path / "params.yaml", raw))
    table = [line.split(" | ") for line in page.splitlines() if line.startswith("| data.")]
    rows = {cells[0].removeprefix("| "): cells[1] for cells in table}
    assert rows["data.files.train.url, data.files.val.url, data.files.test.url"] == "`a.csv`"
    assert rows["data.text_template"] == ""


def test_settings_that_go_together_load() -> None:
    """Each check refuses only its own combination."""
    assert params.parse(modified(mlflow__export=["transformers"], model__pooling="last"))
    assert params.parse(modified(mlflow__export=["onnx"], model__pooling="mean"))
    split_by_column = modified(data__format="csv", data__split_column="split")
    assert params.parse(split_by_column).data.split_column == "split"
