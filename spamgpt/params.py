"""The schema of params.yaml: one dataclass per section, validated before any stage does work.

Every key is declared once, here, with its type and allowed range; params.yaml holds the
values (so there are no defaults to drift apart). `load()` rejects YAML errors, missing and
unknown keys, wrong types and out-of-range values with a ParamsError whose one-line message
names the key and what is allowed; stages turn it into exit code 2 before touching any output.
"""

import dataclasses
import math
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from spamgpt.errors import ParamsError
from spamgpt.texts import TextFields, Truncation

PARAMS_FILE = Path("params.yaml")


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` is a string; DVC's -S writes YAML 1.2, where it is a
    number. Resolve floats the 1.2 way so `dvc exp run -S train.lr=1e-3` means 0.001."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$"
        r"|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _rule(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    pattern: str | None = None,
    what: str = "",
    doc: str = "",
) -> Any:
    """A field whose value, once its type is right, must also satisfy these bounds/regex;
    `doc`: what the key means, its line in docs/parameters.md (generated: `reference`)."""
    rule = {"gt": gt, "ge": ge, "lt": lt, "le": le, "pattern": pattern, "what": what}
    return field(metadata={**rule, "doc": doc})


HTTP_URL = {"pattern": r"https?://[^\s/]+\S*", "what": "an http:// or https:// URL"}
URL_OR_PATH = {
    "pattern": r"https?://[^\s/]+\S*|(?![A-Za-z][\w+.-]*:/)[^\s].*",
    "what": "an http:// or https:// URL, or a local file path",
}
# The projections within a block that LoRA can adapt (spamgpt.model.lora), by their module names.
LoraTarget = Literal["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
# Names a report uses beside the classes' own: a class may not take one of them.
REPORT_KEYS = (
    "accuracy", "macro_f1", "roc_auc", "pr_auc", "confusion_matrix",
    "micro_f1", "samples_f1", "hamming_loss", "thresholds",
)  # fmt: skip


@dataclass(frozen=True)
class SourceParams:
    """One given split's file: a URL or local path as data.url takes, and its sha256."""

    url: str = _rule(**URL_OR_PATH, doc="the split's file: an http(s) URL or a local path")
    sha256: str | None = _rule(
        pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits or null",
        doc="its sha256; null: accepted, and recorded in metrics/data.json",
    )  # fmt: skip


@dataclass(frozen=True)
class SplitFilesParams:
    """data.files: the given splits, one file each (val null: carved from train)."""

    train: SourceParams
    val: SourceParams | None = _rule(doc="null: val is carved from train (split.val of it)")
    test: SourceParams

    def sources(self) -> dict[str, SourceParams]:
        """The splits given, in train, val, test order."""
        given = {"train": self.train, "val": self.val, "test": self.test}
        return {name: source for name, source in given.items() if source is not None}


@dataclass(frozen=True)
class SplitNamesParams:
    """data.split_names: the values of data.split_column that name each split."""

    train: str | int = _rule(doc="the data.split_column value of a training row")
    val: str | int = _rule(doc="... of a validation row")
    test: str | int = _rule(doc="... of a test row")

    def __post_init__(self) -> None:
        values = [str(v) for v in (self.train, self.val, self.test)]
        if len(set(values)) != 3:
            raise ParamsError(
                f"data.split_names: train, val and test need three different values, got {values}"
            )


@dataclass(frozen=True)
class DataParams:
    url: str | None = _rule(
        **URL_OR_PATH,
        doc="the data: an http(s) URL or a local file (absolute, or relative to the "
        "repository); null: the splits are given as files (data.files). "
        "[your-data.md](your-data.md)",
    )
    mirrors: list[str] = _rule(**HTTP_URL, doc="URLs tried, in order, when data.url fails")
    member: str | None = _rule(
        pattern=r"(?!.*\.\.)[^\\]+", what="a file name inside the archive",
        doc="the file inside a zip or tar archive; null: the download is the file",
    )  # fmt: skip
    sha256: str | None = _rule(
        pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits or null",
        doc="of the file (the member); null: accepted, and recorded in metrics/data.json",
    )  # fmt: skip
    format: Literal["label_tab_text", "csv", "tsv", "jsonl", "parquet"] = _rule(
        doc="label_tab_text (`label<TAB>text` lines, no header), csv, tsv, jsonl or parquet"
    )
    text_column: str | list[str] = _rule(
        pattern=r".+", what="a column name",
        doc="the text's column, or a list of columns (fields) joined into the text",
    )  # fmt: skip
    text_template: str | None = _rule(
        pattern=r"(?s).+", what="a template such as '{a}: {b}'",
        doc="how the fields make the text, e.g. `Subject: {subject}` and `{body}`; null: "
        "joined by a blank line",
    )  # fmt: skip
    label_column: str = _rule(pattern=r".+", what="a column name", doc="the label's column")
    label_format: Literal["single", "multi", "number"] = _rule(
        doc="single: one class per row; multi: a set of labels per row, a sigmoid and a "
        "threshold per label: [multi-label.md](multi-label.md); number: a number per row (a "
        "rating, a score), regression: [regression.md](regression.md)"
    )
    label_separator: str = _rule(
        pattern=r".+", what="a non-empty string such as '|'",
        doc="multi, CSV/TSV: between a row's labels",
    )  # fmt: skip
    allow_empty_labels: bool = _rule(doc="multi: a row with no label is a real answer")
    labels: list[str | int] | None = _rule(
        doc="exactly these classes, in this order (others are bad rows); null: every class "
        "found, sorted"
    )
    positive_label: str | int | None = _rule(
        doc="its F1 picks the best epoch, the threshold applies to its probability; null: "
        "macro F1 picks, the most probable class is the label"
    )
    bad_lines: Literal["error", "skip"] = _rule(
        doc="a bad row stops the stage naming its line (error), or is dropped and counted in "
        "metrics/data.json (skip)"
    )
    files: SplitFilesParams | None = _rule(
        doc="given splits instead of data.url: {train: {url, sha256}, val: {..} or null, "
        "test: {..}}"
    )
    split_column: str | None = _rule(
        pattern=r".+", what="a column name or null",
        doc="a column of data.url's file naming each row's split; null: a random split",
    )  # fmt: skip
    split_names: SplitNamesParams

    def __post_init__(self) -> None:
        self.text_fields()  # data.text_column and data.text_template agree
        if self.format == "label_tab_text":
            named = {
                "data.text_column": None if isinstance(self.text_column, str) else "a list",
                "data.text_template": self.text_template,
                "data.split_column": self.split_column,
            }
            for key, value in named.items():
                if value is not None:
                    raise ParamsError(
                        f"{key}: label_tab_text files have no named columns; allowed: "
                        f"data.format csv, tsv, jsonl or parquet"
                    )
        if (self.url is None) == (self.files is None):
            raise ParamsError(
                "data.url: set exactly one of data.url (one file) and data.files (given "
                f"train/val/test files); got {'both' if self.url else 'neither'}"
            )
        if self.files is not None and self.split_column is not None:
            raise ParamsError(
                "data.split_column: splits one file (data.url); with data.files the splits "
                "are given: set it to null"
            )
        names = None if self.labels is None else [str(label) for label in self.labels]
        if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
            raise ParamsError(
                f"data.labels: must list at least two different classes, or be null (the "
                f"classes found in the data); got {self.labels}"
            )
        for name in names or []:
            if name in REPORT_KEYS or not name.strip():
                raise ParamsError(
                    f"data.labels: {name!r} cannot name a class (reports use it); "
                    f"rename it in the data"
                )
        positive = self.positive_label
        if self.label_format == "multi" and positive is not None:
            raise ParamsError(
                f"data.positive_label: multi-label data has no positive class (each label has "
                f"its own threshold), got {positive!r}; allowed: null"
            )
        if self.label_format == "number":
            for key, value in {"labels": names, "positive_label": positive}.items():
                if value is not None:
                    raise ParamsError(
                        f"data.{key}: number labels have no classes, got {value!r}; allowed: null"
                    )
        if names is not None and positive is not None and str(positive) not in names:
            raise ParamsError(
                f"data.positive_label: {positive!r} is not one of data.labels {names}; "
                f"allowed: one of them, or null (macro F1 picks the best epoch)"
            )

    def text_fields(self) -> TextFields:
        return TextFields.of(self.text_column, self.text_template)


@dataclass(frozen=True)
class SplitParams:
    dedupe: bool = _rule(doc="duplicate texts removed (the first kept) before splitting")
    val: float = _rule(gt=0, lt=1, doc="the share of the data in val (stratified by class)")
    test: float = _rule(gt=0, lt=1, doc="the share of the data in test")
    seed: int = _rule(ge=0, doc="seeds the split")
    cross_duplicates: Literal["drop_from_train", "keep", "error"] = _rule(
        doc="a text in two given splits: removed from train, kept (counted either way in "
        "metrics/data.json), or an error"
    )

    def __post_init__(self) -> None:
        if self.val + self.test >= 1:
            raise ParamsError(
                f"split.val + split.test: must be < 1 so that data is left to train on, "
                f"got {self.val:g} + {self.test:g} = {self.val + self.test:g}"
            )


@dataclass(frozen=True)
class BaselineParams:
    max_train_rows: int | None = _rule(
        ge=1,
        doc="the TF-IDF baseline fits on at most this many training messages, a seeded "
        "sample (its matrix grows with them: about 1 GB at 100k); null: all",
    )


@dataclass(frozen=True)
class AuditParams:
    """The label audit (spamgpt.evaluate.audit): on or off, and its k of k-fold."""

    enabled: bool = _rule(
        doc="find likely label errors in train and val (reports/label_issues.csv, never fixed: "
        "[label-issues.md](label-issues.md)); false: the stage writes an empty table"
    )
    folds: int = _rule(
        ge=2, le=20, doc="k of the k-fold that gives every audited row a held-out probability"
    )


@dataclass(frozen=True)
class ModelParams:
    hub_url: str = _rule(
        **HTTP_URL,
        doc="the hub GPT-2's files come from: `{hub_url}/{repo_id}/resolve/{revision}/{file}`; "
        "$HF_ENDPOINT wins where set",
    )
    repo_id: str = _rule(
        pattern=r"[\w.-]+/[\w.-]+", what="'owner/name' as on the hub",
        doc="any GPT-2 size: openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl",
    )  # fmt: skip
    revision: str = _rule(
        pattern=r"[\w.-]+", what="a commit hash or branch name",
        doc="the commit of the weights, pinned",
    )  # fmt: skip
    max_length: int | None = _rule(
        ge=2, doc="tokens kept per message; null: the longest training message's, capped at "
        "the model's context",
    )  # fmt: skip
    pretrained: bool = _rule(doc="false: the same architecture randomly initialised")
    init_seed: int = _rule(ge=0, doc="seeds that random initialisation (and nothing else)")
    trainable_blocks: int | Literal["all"] = _rule(
        ge=0, doc="the last N blocks + final norm + head train; 0: the head only; all: everything"
    )
    pooling: Literal["last", "mean"] = _rule(
        doc="the last real token's state, or the mean over real tokens"
    )
    dropout: float = _rule(ge=0, lt=1, doc="dropout in the trainable blocks")
    finetune: Literal["blocks", "lora"] = _rule(
        doc="blocks: train those blocks' weights; lora: low-rank adapters in them"
    )
    truncation: Literal["head", "tail", "head_tail"] = _rule(
        doc="which tokens of a message longer than max_length are kept: the first, the last, "
        "or both ends"
    )
    head_ratio: float = _rule(
        ge=0, le=1, doc="head_tail: the share of max_length from the start, the rest from the end"
    )

    def truncation_rule(self) -> Truncation:
        return Truncation(self.truncation, self.head_ratio)


@dataclass(frozen=True)
class LoraParams:
    rank: int = _rule(ge=1, doc="the adapters' rank")
    alpha: float = _rule(gt=0, doc="their scale is alpha / rank")
    targets: list[LoraTarget] = _rule(
        doc="the projections they wrap: any of c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"
    )

    def __post_init__(self) -> None:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ParamsError(
                "lora.targets: must list each projection at most once, at least one of "
                f"{', '.join(get_args(LoraTarget))}; got {self.targets}"
            )


@dataclass(frozen=True)
class TrainParams:
    epochs: int = _rule(ge=1, doc="passes over the training data at most")
    batch_size: int = _rule(ge=1, doc="messages per batch")
    lr: float = _rule(gt=0, le=1, doc="AdamW's peak learning rate")
    weight_decay: float = _rule(ge=0, doc="AdamW's weight decay")
    warmup_ratio: float = _rule(
        ge=0, le=1, doc="the share of updates warming the rate up linearly; then linear decay"
    )
    grad_clip: float | None = _rule(gt=0, doc="the gradients' largest norm; null: no clipping")
    accumulation_steps: int = _rule(
        ge=1, doc="batches whose gradients make one update (of batch_size x this messages)"
    )
    eval_every: int | None = _rule(
        ge=1, doc="updates between evaluations (and checkpoints); null: once an epoch"
    )
    class_weights: Literal["balanced", "none"] | dict[str | int, float] = _rule(
        doc="the loss's class weights: balanced (n / (classes x n_c)), none, or {class: "
        "weight} naming every class"
    )
    patience: int = _rule(
        ge=1, doc="early stopping: evaluations without a better select_metric; the best is kept"
    )
    select_metric: str = _rule(
        pattern=r"auto|macro_f1|micro_f1|accuracy|val_loss|.+_f1",
        what="auto, macro_f1, micro_f1, accuracy, val_loss or <class>_f1",
        doc="picks the best evaluation: auto (the positive class's F1, else macro_f1), "
        "macro_f1, micro_f1, accuracy, val_loss or <class>_f1",
    )
    min_delta: float = _rule(
        ge=0, doc="an improvement of select_metric smaller than this does not count"
    )
    seed: int = _rule(ge=0, doc="seeds training: the head, the batch order, dropout")
    device: Literal["auto", "cpu", "cuda", "mps"] = _rule(doc="auto: cuda, mps, else cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _rule(
        doc="auto: bf16 where the hardware computes it natively, else fp16 (with loss "
        "scaling) on a CUDA card with fast fp16, else fp32"
    )
    devices: int = _rule(
        ge=1,
        doc="processes under torchrun (one GPU each on CUDA): "
        "[beyond-one-machine.md](beyond-one-machine.md#more-processes-more-gpus)",
    )
    cuda_graphs: Literal["auto"] | bool = _rule(
        doc="the training step as CUDA graphs, one per padded width (auto: on CUDA); true "
        "elsewhere: the same fixed-shape step, run eagerly ([gpu.md](gpu.md))"
    )

    def __post_init__(self) -> None:
        weights = self.class_weights
        if isinstance(weights, dict):
            for name, weight in weights.items():
                if not (math.isfinite(weight) and weight > 0):
                    raise ParamsError(
                        f"train.class_weights: the weight of {name!r} must be a positive "
                        f"number, got {weight!r}"
                    )


# evaluate.threshold's cost policies: the threshold of highest validation recall whose
# precision is at least min_precision, or whose false-positive rate is at most max_fpr.
THRESHOLD_POLICIES = {"min_precision": "0 < min_precision <= 1", "max_fpr": "0 <= max_fpr < 1"}


@dataclass(frozen=True)
class EvaluateParams:
    threshold: float | Literal["auto"] | dict[Literal["min_precision", "max_fpr"], float] | None = (
        _rule(
            gt=0,
            lt=1,
            doc="on the positive class's probability; auto: the one maximising its val F1; "
            "{min_precision: p}: the highest val recall at that precision; {max_fpr: f}: ... "
            "at that false-positive rate; null: the most probable class (beyond two classes)",
        )
    )
    min_support: int = _rule(
        ge=1,
        doc="multi-label auto and policies: a label with fewer validation positives keeps the "
        "default threshold (0.5), listed in reports/evaluation.json",
    )
    calibration: Literal["temperature", "platt", "none"] = _rule(
        doc="temperature: the logits divided by one T (one per label) fitted on val by log "
        "loss: calibrated probabilities, the same decisions at 0.5 and rankings "
        "([calibration.md](calibration.md)); platt: a T and a shift per class (per label) "
        "fitted together, logits / T + c: it also corrects a bias (class weights), and moves "
        "the decisions at 0.5 (the rankings stay); none: the raw probabilities"
    )

    def __post_init__(self) -> None:
        if isinstance(self.threshold, dict):  # its bound; against the classes: Params
            _check_policy(self.threshold)


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = _rule(
        pattern=r"\S.*", what="a non-empty name", doc="the MLflow experiment runs go to"
    )
    log_model: bool | Literal["full"] = _rule(
        doc="the MLflow model: true light (trained tensors + the base weights' identity), "
        "full (every weight), false none"
    )
    log_checkpoints: bool = _rule(
        doc="the best and last trained tensors as run artifacts (where the model lacks them)"
    )
    registered_model: str | None = _rule(
        pattern=r"[\w.-]+", what="a model name or null",
        doc="a name: also register each model in the MLflow registry (always full)",
    )  # fmt: skip
    export: list[Literal["transformers", "onnx"]] = _rule(
        doc="also log the model for other runtimes as run artifacts: transformers, onnx "
        "([huggingface.md](huggingface.md))"
    )
    serve: Literal["pytorch", "onnx", "onnx-int8"] = _rule(
        doc="what the logged MLflow model scores with: pytorch, or onnx / onnx-int8 (it carries "
        "the ONNX graph and scores with onnxruntime; int8 only past the accuracy gate)"
    )

    def __post_init__(self) -> None:
        if self.serve != "pytorch" and not self.log_model:
            raise ParamsError(
                f"mlflow.serve: {self.serve} is what the logged MLflow model scores with, and "
                f"mlflow.log_model is false; allowed: mlflow.log_model true or full, or "
                f"mlflow.serve: pytorch"
            )
        if len(set(self.export)) != len(self.export):
            raise ParamsError(
                f"mlflow.export: must list each format at most once, of transformers and onnx; "
                f"got {self.export}"
            )


@dataclass(frozen=True)
class Params:
    data: DataParams
    split: SplitParams
    baseline: BaselineParams
    audit: AuditParams
    model: ModelParams
    lora: LoraParams
    train: TrainParams
    evaluate: EvaluateParams
    mlflow: MlflowParams

    def __post_init__(self) -> None:
        if "transformers" in self.mlflow.export and self.model.pooling != "last":
            raise ParamsError(
                f"mlflow.export: transformers' GPT2ForSequenceClassification reads the last "
                f"token, model.pooling is {self.model.pooling!r}; allowed: model.pooling: last, "
                f"or mlflow.export without transformers (onnx holds any pooling)"
            )
        if self.data.label_format == "number":
            check_number_settings(self.train, self.evaluate)
            return
        labels = self.data.labels
        classes = None if labels is None else len(labels)  # else known once the data is read
        check_threshold(
            self.evaluate.threshold, self.data.label_format, self.data.positive_label, classes
        )
        if labels is not None:
            check_train_classes(self.train, tuple(str(label) for label in labels))


def check_threshold(
    setting: float | str | dict | None,
    label_format: str,
    positive: str | int | None,
    classes: int | None = None,
) -> None:
    """evaluate.threshold against the classes (data.label_format single or multi), the one
    rule (params, and evaluate once the data's classes are known): multi-label data needs a
    threshold for each label (anything but null; a policy applies to each label); otherwise a
    policy needs a positive class, and a threshold applies to a positive class of two: with
    `classes` more, it must be null. A policy's bound: _check_policy."""
    if isinstance(setting, dict):
        _check_policy(setting)
    if label_format == "multi":
        if setting is None:
            raise ParamsError(
                "evaluate.threshold: multi-label data needs a threshold for each label, not "
                "null; allowed: a number in (0, 1), auto, {min_precision: p} or {max_fpr: f}"
            )
        return
    if isinstance(setting, dict) and positive is None:
        raise ParamsError(
            f"evaluate.threshold: the policy {setting} applies to the positive class; "
            f"set data.positive_label, or use null"
        )
    if positive is not None and classes is not None and classes != 2 and setting is not None:
        raise ParamsError(
            f"evaluate.threshold: a threshold applies to two classes only, the data has "
            f"{classes}; allowed: null (the most probable class)"
        )


def check_number_settings(train: TrainParams, evaluate: EvaluateParams) -> None:
    """Number labels (regression) have no classes: no threshold, no class weights, and the
    best evaluation is the one of lowest validation loss (mean squared error)."""
    settings = {
        "evaluate.threshold": (evaluate.threshold, (None,), "null"),
        "train.class_weights": (train.class_weights, ("none",), "none"),
        "train.select_metric": (train.select_metric, ("auto", "val_loss"), "auto or val_loss"),
    }
    for key, (value, allowed, said) in settings.items():
        if value not in allowed:
            raise ParamsError(
                f"{key}: number labels (data.label_format: number) have no classes, got "
                f"{value!r}; allowed: {said}"
            )


def _check_policy(policy: dict) -> None:
    """A cost policy names one of THRESHOLD_POLICIES with its bound within range."""
    if len(policy) != 1:
        raise ParamsError(
            f"evaluate.threshold: a policy sets one of min_precision, max_fpr; got {policy}"
        )
    ((name, bound),) = policy.items()
    within = 0 <= bound < 1 if name == "max_fpr" else 0 < bound <= 1
    if not (math.isfinite(bound) and within):
        raise ParamsError(
            f"evaluate.threshold: {name} must be {THRESHOLD_POLICIES[name]}, got {bound:g}"
        )


SELECT_METRICS = ("auto", "macro_f1", "micro_f1", "accuracy", "val_loss")


def check_train_classes(train: TrainParams, classes: tuple[str, ...]) -> None:
    """The train keys that name classes name these (data.labels, or the classes found):
    train.select_metric one of SELECT_METRICS or a class's F1; a train.class_weights mapping
    every class, and nothing else."""
    weights = train.class_weights
    if isinstance(weights, dict):
        named = {str(name) for name in weights}
        unknown = sorted(named - set(classes))
        missing = [name for name in classes if name not in named]
        if unknown or missing or len(named) != len(weights):
            problem = (
                f"{unknown[0]!r} is not a class of the data" if unknown
                else f"no weight for {missing[0]!r}" if missing
                else "a class is named twice"
            )  # fmt: skip
            raise ParamsError(
                f"train.class_weights: {problem}; a mapping gives every class a weight: "
                f"{', '.join(classes)}"
            )
    allowed = [*SELECT_METRICS, *(f"{name}_f1" for name in classes)]
    if train.select_metric not in allowed:
        raise ParamsError(
            f"train.select_metric: {train.select_metric!r} is not a metric of these classes; "
            f"allowed: {', '.join(allowed)}"
        )


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (a section, or a mapping that may be null), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in get_args(tp) if dataclasses.is_dataclass(a)), None)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


_ONE = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_MANY = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _describe(tp: Any, plural: bool = False) -> str:
    """What a value of the annotation is, in words ("a string or null"); plural: what the
    items of a list are ("strings or integers", "any of 'a' or 'b'")."""
    if get_origin(tp) is Literal:
        values = [repr(a) for a in get_args(tp)]
        if plural and len(values) > 1:  # "any of 'a', 'b' or 'c'"
            return f"any of {', '.join(values[:-1])} or {values[-1]}"
        return " or ".join(values)
    if _is_union(tp):
        return " or ".join(_describe(a, plural) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"{'lists' if plural else 'a list'} of {_describe(get_args(tp)[0], plural=True)}"
    if get_origin(tp) is dict:
        key, value = get_args(tp)
        return f"{'mappings' if plural else 'a mapping'} {{{_describe(key)}: {_describe(value)}}}"
    if dataclasses.is_dataclass(tp):
        return "mappings of keys" if plural else "a mapping of keys"
    if tp is type(None):
        return "nulls" if plural else "null"
    return (_MANY if plural else _ONE)[tp]


def _fits(value: Any, tp: Any) -> bool:
    """Does a YAML value fit the annotation? (true is no integer here; an integer is a number.)"""
    if get_origin(tp) is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if _is_union(tp):
        return any(_fits(value, a) for a in get_args(tp))
    if get_origin(tp) is list:
        return isinstance(value, list) and all(_fits(v, get_args(tp)[0]) for v in value)
    if get_origin(tp) is dict:
        key, item = get_args(tp)
        return isinstance(value, dict) and all(
            _fits(k, key) and _fits(v, item) for k, v in value.items()
        )
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, type(None) if tp is None else tp)


def _rule_broken(value: Any, rule: dict) -> str | None:
    """What is wrong with a value of the right type, or None."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v):
                return f"must be a finite number, got {v}"
            for name, word, holds in (
                ("gt", ">", v.__gt__),
                ("ge", ">=", v.__ge__),
                ("lt", "<", v.__lt__),
                ("le", "<=", v.__le__),
            ):
                if rule.get(name) is not None and not holds(rule[name]):
                    return f"must be {word} {rule[name]:g}, got {v:g}"
        if isinstance(v, str) and rule.get("pattern") and not re.fullmatch(rule["pattern"], v):
            return f"must be {rule['what']}, got {v!r}"
    return None


def _build(cls: type, prefix: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "params.yaml"
        raise ParamsError(f"{where}: must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            shown = str(key).encode("unicode_escape").decode()  # keep the message one line
            raise ParamsError(f"{prefix}{shown}: unknown key; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            raise ParamsError(f"{key}: missing; it must be set to {_describe(f.type)}")
        value = raw[name]
        nested = _dataclass_in(f.type)
        if nested is not None and not (value is None and _is_union(f.type)):
            values[name] = _build(nested, f"{key}.", value)
            continue
        if not _fits(value, f.type):
            raise ParamsError(f"{key}: must be {_describe(f.type)}, got {value!r}")
        problem = _rule_broken(value, dict(f.metadata))
        if problem:
            raise ParamsError(f"{key}: {problem}")
        values[name] = value
    return cls(**values)


def parse(raw: Any) -> Params:
    """Validate a parsed params.yaml document."""
    return _build(Params, "", raw)


def load(path: str | os.PathLike = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError with a one-line message."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{path}:{where} invalid YAML: {problem}") from None
    return parse(raw)


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """{'train.lr': 5e-05, ...}: every key of params.yaml, flat, as MLflow params."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


REFERENCE = Path("docs/parameters.md")
REFERENCE_COMMAND = "python -m spamgpt.params --markdown > docs/parameters.md"
REFERENCE_INTRO = f"""\
# Parameters

<!-- Generated from spamgpt/params.py (each key's doc=) by `{REFERENCE_COMMAND}`:
edit the docs there. tests/test_params.py fails when this page is stale. -->

`params.yaml` holds every setting; `spamgpt/params.py` declares each key's type and range and
is checked before a stage does any work (a wrong value: exit code 2, one line naming the key
and what is allowed, no output touched). Each stage in `dvc.yaml` lists exactly the keys it
reads, so `dvc exp run -S train.lr=1e-4` re-runs only finetune and evaluate. The default is
the committed params.yaml's value (blank: not set there).

| key | default | meaning |
|---|---|---|
"""
REFERENCE_END = """
Two `dvc repro -f` runs on a CPU give identical metrics files and models, timing fields aside
(train_seconds, samples_per_second in metrics/train.json).
"""


def documented_keys(cls: type = Params, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every key of params.yaml with the field declaring it, in params.yaml's order: each
    value, and each mapping that may be null (data.files), then its keys."""
    keys = []
    for f in dataclasses.fields(cls):
        nested = _dataclass_in(f.type)
        if nested is None or _is_union(f.type):
            keys.append((f"{prefix}{f.name}", f))
        if nested is not None:
            keys.extend(documented_keys(nested, f"{prefix}{f.name}."))
    return keys


_UNSET = object()  # a key params.yaml does not set (under a mapping that is null)


def _cell(text: str) -> str:
    """Text in a Markdown table cell: a | would end it."""
    return text.replace("|", "\\|")


def _shown(value: Any) -> str:
    """A value as params.yaml writes it (blank: not set)."""
    if value is _UNSET:
        return ""
    if isinstance(value, str):
        return f"`{value}`"
    flow = yaml.safe_dump(value, default_flow_style=True, width=1000, allow_unicode=True)
    return f"`{flow.strip().removesuffix('...').strip()}`"


def reference(params_file: str | os.PathLike = PARAMS_FILE) -> str:
    """docs/parameters.md: each key's value in `params_file` and its doc, a row per field (a
    field under several mappings, as data.files' url, is one row naming each key)."""
    raw = yaml.load(Path(params_file).read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    rows: dict[int, tuple[list[str], list[str], str]] = {}
    for key, f in documented_keys():
        value: Any = raw
        for part in key.split("."):
            value = value.get(part, _UNSET) if isinstance(value, dict) else _UNSET
        keys, values, _ = rows.setdefault(id(f), ([], [], f.metadata.get("doc", "")))
        keys.append(key)
        if _shown(value) and _shown(value) not in values:
            values.append(_shown(value))
    lines = [
        "| " + " | ".join(_cell(", ".join(cell)) for cell in (keys, values, [doc])) + " |"
        for keys, values, doc in rows.values()
    ]
    return REFERENCE_INTRO + "\n".join(lines) + "\n" + REFERENCE_END


def main(argv: list[str] | None = None) -> None:
    """`python -m spamgpt.params --markdown`: print docs/parameters.md, in UTF-8 whatever the
    locale's encoding (a value such as a label is written as it is, not escaped)."""
    import argparse

    parser = argparse.ArgumentParser(description="params.yaml's schema")
    parser.add_argument("--markdown", action="store_true", help=f"print {REFERENCE}")
    if parser.parse_args(argv).markdown:
        sys.stdout.reconfigure(encoding="utf-8")
        print(reference(), end="")


if __name__ == "__main__":
    main()
