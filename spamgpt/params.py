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
) -> Any:
    """A field whose value, once its type is right, must also satisfy these bounds/regex."""
    return field(
        metadata={"gt": gt, "ge": ge, "lt": lt, "le": le, "pattern": pattern, "what": what}
    )


HTTP_URL = {"pattern": r"https?://[^\s/]+\S*", "what": "an http:// or https:// URL"}
URL_OR_PATH = {
    "pattern": r"https?://[^\s/]+\S*|(?![A-Za-z][\w+.-]*:/)[^\s].*",
    "what": "an http:// or https:// URL, or a local file path",
}
# The projections within a block that LoRA can adapt (spamgpt.lora), by their module names.
LoraTarget = Literal["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
# Names a report uses beside the classes' own: a class may not take one of them.
REPORT_KEYS = (
    "accuracy", "macro_f1", "roc_auc", "pr_auc", "confusion_matrix",
    "micro_f1", "samples_f1", "hamming_loss", "thresholds",
)  # fmt: skip


@dataclass(frozen=True)
class SourceParams:
    """One given split's file: a URL or local path as data.url takes, and its sha256."""

    url: str = _rule(**URL_OR_PATH)
    sha256: str | None = _rule(pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits or null")


@dataclass(frozen=True)
class SplitFilesParams:
    """data.files: the given splits, one file each (val null: carved from train)."""

    train: SourceParams
    val: SourceParams | None
    test: SourceParams

    def sources(self) -> dict[str, SourceParams]:
        """The splits given, in train, val, test order."""
        given = {"train": self.train, "val": self.val, "test": self.test}
        return {name: source for name, source in given.items() if source is not None}


@dataclass(frozen=True)
class SplitNamesParams:
    """data.split_names: the values of data.split_column that name each split."""

    train: str | int = _rule()
    val: str | int = _rule()
    test: str | int = _rule()

    def __post_init__(self) -> None:
        values = [str(v) for v in (self.train, self.val, self.test)]
        if len(set(values)) != 3:
            raise ParamsError(
                f"data.split_names: train, val and test need three different values, got {values}"
            )


@dataclass(frozen=True)
class DataParams:
    url: str | None = _rule(**URL_OR_PATH)
    mirrors: list[str] = _rule(**HTTP_URL)
    member: str | None = _rule(pattern=r"(?!.*\.\.)[^\\]+", what="a file name inside the archive")
    sha256: str | None = _rule(pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits or null")
    format: Literal["label_tab_text", "csv", "tsv", "jsonl", "parquet"] = _rule()
    text_column: str | list[str] = _rule(pattern=r".+", what="a column name")
    text_template: str | None = _rule(pattern=r"(?s).+", what="a template such as '{a}: {b}'")
    label_column: str = _rule(pattern=r".+", what="a column name")
    label_format: Literal["single", "multi"] = _rule()  # multi: a set of labels per row
    label_separator: str = _rule(pattern=r".+", what="a non-empty string such as '|'")
    allow_empty_labels: bool = _rule()  # multi: a row with no label is a real answer
    labels: list[str | int] | None = _rule()
    positive_label: str | int | None = _rule()
    bad_lines: Literal["error", "skip"] = _rule()
    files: SplitFilesParams | None
    split_column: str | None = _rule(pattern=r".+", what="a column name or null")
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
        if names is not None and positive is not None and str(positive) not in names:
            raise ParamsError(
                f"data.positive_label: {positive!r} is not one of data.labels {names}; "
                f"allowed: one of them, or null (macro F1 picks the best epoch)"
            )

    def text_fields(self) -> TextFields:
        return TextFields.of(self.text_column, self.text_template)


@dataclass(frozen=True)
class SplitParams:
    dedupe: bool = _rule()
    val: float = _rule(gt=0, lt=1)
    test: float = _rule(gt=0, lt=1)
    seed: int = _rule(ge=0)
    # a text in two splits: drop_from_train removes it from train, keep keeps it (counted
    # either way in metrics/data.json), error stops
    cross_duplicates: Literal["drop_from_train", "keep", "error"] = _rule()

    def __post_init__(self) -> None:
        if self.val + self.test >= 1:
            raise ParamsError(
                f"split.val + split.test: must be < 1 so that data is left to train on, "
                f"got {self.val:g} + {self.test:g} = {self.val + self.test:g}"
            )


@dataclass(frozen=True)
class BaselineParams:
    max_train_rows: int | None = _rule(ge=1)


@dataclass(frozen=True)
class ModelParams:
    hub_url: str = _rule(**HTTP_URL)
    repo_id: str = _rule(pattern=r"[\w.-]+/[\w.-]+", what="'owner/name' as on the hub")
    revision: str = _rule(pattern=r"[\w.-]+", what="a commit hash or branch name")
    max_length: int | None = _rule(ge=2)
    pretrained: bool = _rule()
    init_seed: int = _rule(ge=0)
    trainable_blocks: int | Literal["all"] = _rule(ge=0)
    pooling: Literal["last", "mean"] = _rule()
    dropout: float = _rule(ge=0, lt=1)
    finetune: Literal["blocks", "lora"] = _rule()
    truncation: Literal["head", "tail", "head_tail"] = _rule()
    head_ratio: float = _rule(ge=0, le=1)  # head_tail: the share of max_length from the start

    def truncation_rule(self) -> Truncation:
        return Truncation(self.truncation, self.head_ratio)


@dataclass(frozen=True)
class LoraParams:
    rank: int = _rule(ge=1)
    alpha: float = _rule(gt=0)
    targets: list[LoraTarget] = _rule()

    def __post_init__(self) -> None:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ParamsError(
                "lora.targets: must list each projection at most once, at least one of "
                f"{', '.join(get_args(LoraTarget))}; got {self.targets}"
            )


@dataclass(frozen=True)
class TrainParams:
    epochs: int = _rule(ge=1)
    batch_size: int = _rule(ge=1)
    lr: float = _rule(gt=0, le=1)
    weight_decay: float = _rule(ge=0)
    warmup_ratio: float = _rule(ge=0, le=1)
    grad_clip: float | None = _rule(gt=0)
    accumulation_steps: int = _rule(ge=1)
    eval_every: int | None = _rule(ge=1)
    class_weights: Literal["balanced", "none"] | dict[str | int, float] = _rule()
    patience: int = _rule(ge=1)
    select_metric: str = _rule(
        pattern=r"auto|macro_f1|micro_f1|accuracy|val_loss|.+_f1",
        what="auto, macro_f1, micro_f1, accuracy, val_loss or <class>_f1",
    )
    min_delta: float = _rule(ge=0)
    seed: int = _rule(ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = _rule()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _rule()
    devices: int = _rule(ge=1)

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
        _rule(gt=0, lt=1)
    )
    calibration: Literal["temperature", "none"] = _rule()  # spamgpt.calibration

    def __post_init__(self) -> None:
        policy = self.threshold
        if not isinstance(policy, dict):
            return
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


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = _rule(pattern=r"\S.*", what="a non-empty name")
    log_model: bool | Literal["full"] = _rule()  # true: light (trained tensors), full: all
    log_checkpoints: bool = _rule()  # the best and last trained tensors as run artifacts
    registered_model: str | None = _rule(pattern=r"[\w.-]+", what="a model name or null")
    export: list[Literal["transformers", "onnx"]] = _rule()  # run artifacts (spamgpt.export)

    def __post_init__(self) -> None:
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
        labels, threshold = self.data.labels, self.evaluate.threshold
        if isinstance(threshold, dict) and self.data.positive_label is None:
            raise ParamsError(
                f"evaluate.threshold: the policy {threshold} applies to the positive class; "
                f"set data.positive_label, or use null"
            )
        if self.data.positive_label is not None and labels is not None:
            check_threshold(threshold, len(labels))
        if labels is not None:
            check_train_classes(self.train, tuple(str(label) for label in labels))


def check_threshold(threshold: float | str | None, classes: int) -> None:
    """evaluate.threshold applies to the positive class of two: with more, it must be null."""
    if threshold is not None and classes != 2:
        raise ParamsError(
            f"evaluate.threshold: a threshold applies to two classes only, the data has "
            f"{classes}; allowed: null (the most probable class)"
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


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if _is_union(tp):
        return " or ".join(_describe(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"a list of {_describe(get_args(tp)[0])}s"
    if get_origin(tp) is dict:
        key, value = get_args(tp)
        return f"a mapping {{{_describe(key)}: {_describe(value)}}}"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "a mapping of keys" if dataclasses.is_dataclass(tp) else "null")


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
