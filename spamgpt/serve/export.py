"""The fine-tuned classifier for other runtimes: a Hugging Face transformers folder, or ONNX.

`spamgpt export --to transformers DIR` writes what GPT2ForSequenceClassification and
pipeline("text-classification") load with no spamgpt installed: config.json (the classes as
id2label/label2id, pad_token_id, problem_type), model.safetensors and the tokenizer files.
That class computes what spamgpt's classifier does but for two things, handled exactly:

- its score layer has no bias. The head's bias b is folded into ln_f's bias, which feeds only
  the head: logits = W (g * n + beta) + b = W (g * n + beta + d) for any d with W d = b; the
  least-norm d = W^T (W W^T)^-1 b, solved in float64, exists when W's rows (one per class,
  each n_embd wide) are independent, and is refused otherwise.
- it pools the rightmost token that is not pad_token_id. The pad token is <|endoftext|>,
  which spamgpt's tokenization gives a message only as its sole token (an empty message), and
  then position 0 is both that token and the last real one.

Mean pooling has no counterpart there and is refused, naming model.pooling. A head_tail
model's tokenizer cuts on the right, as no tokenizer cuts both ends: config.json's "spamgpt"
records the cut (and the text fields and their template) for the few lines in
docs/huggingface.md that cut the ids as spamgpt does. Everything else
(LoRA adapters are merged when finetune writes the folder; a partly trained model is
completed from its base weights) is plain GPT-2 weights.

`spamgpt export --to onnx FILE` writes the classifier (any pooling) as an ONNX graph from
token ids (batch, sequence) int64 and lengths (batch,) int64 to class probabilities (batch,
classes) float32, both axes dynamic, the same record in its metadata; it needs the onnx and
onnxscript packages (spamgpt's requirements). What loads the exports (onnxruntime,
transformers) is the `export` extra: pip install "spamgpt[export]".
"""

import argparse
import ast
import copy
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from spamgpt import atomic, contracts, paths, runtime
from spamgpt.data import tokenized
from spamgpt.data.batching import ModelInputs
from spamgpt.data.tokenizer import EOT
from spamgpt.errors import SpamGPTError
from spamgpt.model import classifier
from spamgpt.model.gpt2 import TRANSPOSED, GPT2Classifier
from spamgpt.serve import loader
from spamgpt.tasks.registry import TASKS, task_for
from spamgpt.texts import TextFields, Truncation

if TYPE_CHECKING:
    import onnx

    from spamgpt import tracking

FORMATS = ("transformers", "onnx")
QUANTIZATIONS = ("int8",)
MAX_DROP = 0.005  # --max-drop's default: of the selected test metric, int8 against fp32
CPU = torch.device("cpu")
ONNX_INPUTS, ONNX_OUTPUT = ("input_ids", "lengths"), "probabilities"
# A bias whose fold leaves more than this between W d and b (in float64) is refused.
FOLD_TOLERANCE = 1e-6
# Weights above this go to <file>.data beside the graph, as torch's exporter puts them
# itself (an ONNX file, a protobuf, stops at 2 GB).
ONNX_FILE_LIMIT = 1536 * 2**20


# model.truncation (classifier.json's "truncation", "head" where absent) as a transformers
# tokenizer's truncation_side; head_tail keeps both ends, which no tokenizer setting does: its
# tokenizer cuts on the right, and RECORDED's truncation says how spamgpt cuts the ids
# (docs/huggingface.md has the few lines).
TRUNCATION_SIDES = {"head": "right", "tail": "left", "head_tail": "right"}
# The key, in a transformers config.json and in an ONNX graph's metadata (a JSON string), of
# what spamgpt does to a message before the model reads it (`recorded`).
RECORDED = "spamgpt"


def recorded(meta: dict) -> dict:
    """How a message becomes the model's input, for users of an export: its text fields and
    the template joining them (texts.TextFields: null joins fields by a blank line), then
    the cut of its ids to max_length (texts.Truncation), and the classes in output order."""
    return {
        **TextFields.from_dict(meta).to_dict(),
        "max_length": meta["max_length"],
        **Truncation.from_dict(meta).to_dict(),
        "labels": list(meta["labels"]),
    }


def check_representable(meta: dict) -> None:
    """Refuse, in one line, a classifier GPT2ForSequenceClassification cannot compute."""
    if meta["pooling"] != "last":
        raise SpamGPTError(
            f"model.pooling is {meta['pooling']!r}: transformers' GPT2ForSequenceClassification "
            "reads the last real token only; train with model.pooling: last, or export --to onnx"
        )


def folded_head(model: GPT2Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """(score weight, ln_f bias) that give the head's logits, bias included, with no bias:
    ln_f.bias + d where head.weight @ d = head.bias (float64 least-norm solution)."""
    w = model.head.weight.detach().double()
    b = model.head.bias.detach().double()
    d = w.T @ torch.linalg.lstsq(w @ w.T, b[:, None]).solution[:, 0]
    residual = float((w @ d - b).abs().max())
    if not residual <= FOLD_TOLERANCE:  # also NaN
        raise SpamGPTError(
            f"head.weight's rows are linearly dependent: its bias cannot be folded into ln_f "
            f"(residual {residual:.2g}), so transformers' bias-free score layer cannot hold it"
        )
    beta = (model.gpt.ln_f.bias.detach().double() + d).float()
    return model.head.weight.detach().float().cpu(), beta.cpu()


def transformers_state(model: GPT2Classifier) -> dict[str, torch.Tensor]:
    """GPT2ForSequenceClassification's tensors: transformer.* in Conv1D's (in, out) layout,
    score.weight, the head's bias folded into transformer.ln_f.bias."""
    state = {}
    for name, tensor in model.gpt.state_dict().items():
        t = tensor.detach().float().cpu()
        state[f"transformer.{name}"] = t.T if name.endswith(TRANSPOSED) else t
    state["score.weight"], state["transformer.ln_f.bias"] = folded_head(model)
    return {n: t.contiguous() for n, t in state.items()}


def transformers_config(model: GPT2Classifier, meta: dict) -> dict:
    """config.json of a GPT2ForSequenceClassification with these shapes and classes."""
    c, labels = model.gpt.config, meta["labels"]
    pad = meta["pad_id"]
    return {
        "architectures": ["GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.n_embd,
        "n_positions": c.n_ctx,
        "n_ctx": c.n_ctx,
        "n_inner": None,
        "vocab_size": c.vocab_size,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "attn_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "resid_pdrop": c.dropout,
        "scale_attn_weights": True,
        "bos_token_id": pad,
        "eos_token_id": pad,
        "pad_token_id": pad,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": task_for(classifier.classes_of(meta)).problem_type,
        "dtype": "float32",
        RECORDED: recorded(meta),
    }


def tokenizer_files(meta: dict, tokenizer_dir: str | os.PathLike) -> dict[str, dict]:
    """tokenizer.json (for the `tokenizers` library and the servers built on it),
    tokenizer_config.json and special_tokens_map.json of GPT-2's byte-level BPE in
    `tokenizer_dir`: <|endoftext|> pads, and a message is cut on the right to the model's
    max_length, as spamgpt cuts it."""
    tokenizer_dir = Path(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    fast = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": vocab[EOT],
                "content": EOT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {**byte_level, "trim_offsets": True},
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": {**byte_level, "trim_offsets": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [line.split(" ") for line in lines if line],
        },
    }
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **special,
        "add_prefix_space": False,
        "add_bos_token": False,
        "model_max_length": meta["max_length"],
        "padding_side": "right",
        "truncation_side": TRUNCATION_SIDES[meta.get("truncation", "head")],
        "clean_up_tokenization_spaces": False,
    }
    return {
        "tokenizer.json": fast,
        "tokenizer_config.json": config,
        "special_tokens_map.json": special,
    }


def to_transformers(
    model: GPT2Classifier, meta: dict, tokenizer_dir: str | os.PathLike, dest: str | os.PathLike
) -> None:
    """Write the transformers folder `dest` (created, or its files replaced)."""
    from safetensors.torch import save_file

    check_representable(meta)
    dest, tokenizer_dir = Path(dest), Path(tokenizer_dir)
    state = transformers_state(model)
    with atomic.atomic_path(dest / classifier.WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic.write_json(dest / "config.json", transformers_config(model, meta))
    for name, content in tokenizer_files(meta, tokenizer_dir).items():
        atomic.write_json(dest / name, content)
    for name in classifier.TOKENIZER_FILES:
        with atomic.atomic_path(dest / name) as tmp:
            shutil.copyfile(tokenizer_dir / name, tmp)


class _UpstreamNotice(logging.Filter):
    """Drops one logger's records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """torch.onnx.export without two notices of torch's own that say nothing of this model:
    each torchvision operator it skips registering (torchvision is not a dependency), and
    the FutureWarning of torch.export's own use of the deprecated pytree LeafSpec. Only those
    exact messages; any other warning is shown."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _UpstreamNotice("torchvision is not installed. Skipping torchvision::")
    registration.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                category=FutureWarning,
            )
            yield
    finally:
        registration.removeFilter(notice)


class ProbabilityGraph(nn.Module):
    """What the ONNX graph computes: class probabilities of right-padded token ids (a
    multi-label model's: each label's sigmoid, as classifier.class_probabilities)."""

    def __init__(self, model: GPT2Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids, lengths).float()
        return TASKS[self.model.label_format].probabilities(logits)


def to_onnx(model: GPT2Classifier, meta: dict, dest: str | os.PathLike) -> None:
    """Write the ONNX graph of `model` to `dest` (weights inside it up to 1.5 GB, else in
    <dest>.data beside it: gpt2-large and xl), `recorded(meta)` in its metadata."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it and onnx)
    except ImportError:
        raise SpamGPTError(
            "export --to onnx needs the onnx and onnxscript packages: "
            'pip install onnx onnxscript, or pip install "spamgpt[export]"'
        ) from None
    dest = Path(dest)
    graph = ProbabilityGraph(model.float().cpu()).eval()
    n_ctx = model.gpt.config.n_ctx
    example = (torch.zeros(2, min(8, n_ctx), dtype=torch.int64), torch.tensor([3, 1]))
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=n_ctx)
    # lengths' axis is input_ids' batch, which the exporter infers from the graph: naming the
    # Dim `batch` twice would make it warn that the second name is not used.
    dynamic_shapes = {
        "input_ids": {0: batch, 1: sequence},
        "lengths": {0: torch.export.Dim.DYNAMIC},
    }
    with quiet_exporter():
        program = torch.onnx.export(
            graph,
            example,
            input_names=list(ONNX_INPUTS),
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props[RECORDED] = json.dumps(recorded(meta))
    dest.parent.mkdir(parents=True, exist_ok=True)
    if sum(p.numel() * 4 for p in model.parameters()) > ONNX_FILE_LIMIT:
        program.save(str(dest), external_data=True)  # it names the data file after dest
        return
    with atomic.atomic_path(dest) as tmp:
        program.save(str(tmp), external_data=False)


def _onnxruntime():
    """onnxruntime, or one line naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise SpamGPTError(
            'export --quantize int8 needs onnxruntime: pip install "spamgpt[export]"'
        ) from None
    return onnxruntime


# What --quantize int8 keeps in float32: the first block's attention projections (c_attn,
# c_proj), the MatMuls whose int8 rounding moved an SMS-trained model's answers most when
# each block's were quantized alone (docs/serving.md, "The gate on an SMS-trained model").
# Projections that ONNX Runtime's graph optimisation makes Gemm nodes (the head's, and the
# last block's that read its one pooled position) stay float32: dynamic quantization does not
# quantize Gemm.
FLOAT_MODULES = ("gpt.h.0.attn.c_attn", "gpt.h.0.attn.c_proj")
# torch's exporter records each node's module path under this metadata key.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def nodes_of_modules(graph: "onnx.ModelProto", modules: tuple[str, ...]) -> list[str]:
    """The names of `graph`'s nodes computed inside any of `modules` (GPT2Classifier's
    submodule paths, as "gpt.h.0.attn.c_attn"), from the name scopes torch's exporter
    recorded on each node. A module that the exporter did not record (one called through
    a method other than forward, as the last block's forward_at) names no node."""
    scopes = {f"model.{m}" for m in modules}
    names = []
    for node in graph.graph.node:
        within = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), "[]")
        if scopes & set(ast.literal_eval(within)):
            names.append(node.name)
    return names


def quantize_int8(
    fp32_file: str | os.PathLike,
    dest: str | os.PathLike,
    per_channel: bool = True,
    float_modules: tuple[str, ...] = FLOAT_MODULES,
) -> dict:
    """ONNX Runtime's dynamic quantization of `fp32_file` into `dest`, after its
    pre-processing (shape inference, graph optimisation): int8 weights of the MatMuls with a
    constant weight and of the embeddings (Gather), activations quantized at run time with
    one scale per row, each token's own (per_row_activations: not the batch's); weights with
    one scale per output channel (`per_channel`) or per tensor. The nodes of `float_modules`
    stay float32, as do the Gemm nodes (the head's, the pooled last block's). Returns how,
    for the report."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(fp32_file), load_external_data=False)
    float_nodes = nodes_of_modules(graph, float_modules)
    prepared = Path(dest).with_name(Path(dest).name + ".prepared.onnx")
    quant_pre_process(str(fp32_file), str(prepared))
    quantize_dynamic(
        prepared,
        dest,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        nodes_to_exclude=float_nodes,
    )
    prepared.unlink()
    graph = onnx.load(str(dest))
    per_row_activations(graph)  # so that a message's answer is not its batch-mates'
    with atomic.atomic_path(dest) as tmp:
        onnx.save(graph, str(tmp))
    return {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": per_channel,
        "activations": "per row",
        "float_modules": list(float_modules),
        "float_nodes": float_nodes,
    }


# Per-row activation quantization, as DynamicQuantizeLinear quantizes a whole tensor but for
# each row on its own: scale = (max(row, 0) - min(row, 0)) / 255 (an all-zero row: the
# smallest normal float32, not 0), zero = round(-min(row, 0) / scale), codes uint8
# round(x / scale) + zero. ONNX Runtime's MatMulIntegerToFloat (com.microsoft) takes one zero
# point for its input, not one a row, so it multiplies the codes as they are (zero point 0),
# scaling its output by each weight column's scale in the same pass; the rows' zero points
# come off that output (zero x the column sums of the weight's codes less their zero points,
# scaled), then the rows' scales. ONNX Runtime fuses no such chain after a MatMulInteger:
# written as MatMulInteger, Cast and Muls, it took 5 passes over each MatMul's output, 3 now.
ROW_LEVELS = 255.0
ROW_CONSTANTS = "per_row_quantization"


def per_row_activations(graph: "onnx.ModelProto") -> int:
    """Make each DynamicQuantizeLinear of `graph` (dynamic quantization's: one scale and zero
    point for its whole input, that is for a whole batch) quantize each row of its input on
    its own: one scale and zero point per row of the last axis (a token of a message). The
    node's scale output becomes (..., rows, 1); each MatMulInteger reading its codes, with
    the Cast and the Muls that rescaled its output, becomes a MatMulIntegerToFloat scaled by
    the weight's columns, less the rows' zero points, times the rows' scales (the graph
    imports com.microsoft already: quantize_dynamic's own ops are there). So a message's
    activations get the same codes whatever else is in its batch. Returns how many nodes it
    rewrote."""
    from onnx import helper, numpy_helper

    constants = {
        "axes": np.array([1], dtype=np.int64),
        "one": np.array([1], dtype=np.int64),
        "levels": np.array(ROW_LEVELS, dtype=np.float32),
        "floor": np.array(np.finfo(np.float32).tiny, dtype=np.float32),
        "nought": np.array(0.0, dtype=np.float32),
        "unscaled": np.array(1.0, dtype=np.float32),
    }
    shared = {key: f"{ROW_CONSTANTS}_{key}" for key in constants}
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    weights = {t.name: t for t in graph.graph.initializer}
    producer = {out: node for node in graph.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rows_of = {}  # the codes' name -> their rows' (scales, zero points)
    replaced, products = set(), set()  # outputs of the nodes dropped; of the scales' products
    nodes, rewritten = [], 0
    for node in graph.graph.node:
        if node.output[0] in replaced:
            continue
        if node.op_type == "DynamicQuantizeLinear":
            (x,), (codes, scale, zero) = node.input, node.output
            nodes.extend(_row_quantization(x, codes, scale, shared, opset))
            rows_of[codes] = (scale, f"{codes}_zero")
            graph.graph.initializer.append(
                numpy_helper.from_array(np.array(0, dtype=np.uint8), zero)
            )
            rewritten += 1
            continue
        if node.op_type == "MatMulInteger" and node.input[0] in rows_of:
            # quantize_dynamic's pattern: Cast(MatMulInteger) * Mul(input's, weight's scale)
            codes, weight, zero, weight_zero = node.input
            row_scales, row_zeros = rows_of[codes]
            (cast,) = consumers[node.output[0]]
            (rescale,) = consumers[cast.output[0]]
            (both,) = [producer[n] for n in rescale.input if n != cast.output[0]]
            (weight_scale,) = [n for n in both.input if n != row_scales]
            replaced.update((cast.output[0], rescale.output[0]))
            products.add(both.output[0])
            b, b_zero, b_scale = (numpy_helper.to_array(weights[n])
                                  for n in (weight, weight_zero, weight_scale))  # fmt: skip
            out = node.output[0]
            sums = f"{out}_column_sums"
            graph.graph.initializer.append(numpy_helper.from_array(
                ((b.astype(np.int64) - b_zero).sum(axis=0) * b_scale).astype(np.float32), sums
            ))  # fmt: skip
            scaled, zeros, centred = (f"{out}_{k}" for k in ("scaled", "zeros", "centred"))
            nodes += [  # named after the nodes they replace: quantize_dynamic names every node
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [codes, weight, shared["unscaled"], weight_scale, zero, weight_zero],
                    [scaled], name=node.name, domain="com.microsoft",
                ),
                helper.make_node("Mul", [row_zeros, sums], [zeros], name=zeros),
                helper.make_node("Sub", [scaled, zeros], [centred], name=centred),
                helper.make_node("Mul", [centred, row_scales], rescale.output, name=rescale.name),
            ]  # fmt: skip
            continue
        nodes.append(node)
    if rewritten:
        graph.graph.initializer.extend(
            numpy_helper.from_array(value, shared[key]) for key, value in constants.items()
        )
    del graph.graph.node[:]
    # a product of scales may come before its MatMulInteger: dropped once all are seen
    graph.graph.node.extend(n for n in nodes if n.output[0] not in products)
    return rewritten


def _row_quantization(x: str, codes: str, scale: str, shared: dict[str, str], opset: int) -> list:
    """The nodes computing `codes` (uint8, x's shape), `scale` and `codes`_zero (float, x's
    shape but 1 on the last axis) of the float tensor `x`, on its rows flattened to 2-D so
    that one QuantizeLinear (per axis 0) rounds, shifts and saturates every row at once."""
    from onnx import TensorProto, helper

    rows = f"{codes}_rows"
    # ReduceMin/Max take their axes as an input from opset 18, an attribute before it
    axes, axis = ([shared["axes"]], {}) if opset >= 18 else ([], {"axes": [1]})
    steps = [  # (op, inputs, output, attributes)
        ("Flatten", [x], rows, {"axis": -1}),
        ("ReduceMin", [rows, *axes], f"{codes}_min", {"keepdims": 0, **axis}),
        ("ReduceMax", [rows, *axes], f"{codes}_max", {"keepdims": 0, **axis}),
        ("Min", [f"{codes}_min", shared["nought"]], f"{codes}_low", {}),
        ("Max", [f"{codes}_max", shared["nought"]], f"{codes}_high", {}),
        ("Sub", [f"{codes}_high", f"{codes}_low"], f"{codes}_span", {}),
        ("Max", [f"{codes}_span", shared["floor"]], f"{codes}_range", {}),
        ("Div", [f"{codes}_range", shared["levels"]], f"{codes}_row_scale", {}),
        ("Div", [f"{codes}_low", f"{codes}_row_scale"], f"{codes}_low_codes", {}),
        ("Neg", [f"{codes}_low_codes"], f"{codes}_zero_unrounded", {}),
        ("Round", [f"{codes}_zero_unrounded"], f"{codes}_row_zero", {}),
        ("Cast", [f"{codes}_row_zero"], f"{codes}_row_zero_point", {"to": TensorProto.UINT8}),
        ("QuantizeLinear", [rows, f"{codes}_row_scale", f"{codes}_row_zero_point"],
         f"{codes}_row_codes", {"axis": 0}),
        ("Shape", [x], f"{codes}_shape", {}),
        ("Reshape", [f"{codes}_row_codes", f"{codes}_shape"], codes, {}),
        # x's shape with 1 for its last axis: a row's scale and zero point broadcast over it
        ("Shape", [x], f"{codes}_leading", {"end": -1}),
        ("Concat", [f"{codes}_leading", shared["one"]], f"{codes}_per_row", {"axis": 0}),
        ("Reshape", [f"{codes}_row_scale", f"{codes}_per_row"], scale, {}),
        ("Reshape", [f"{codes}_row_zero", f"{codes}_per_row"], f"{codes}_zero", {}),
    ]  # fmt: skip
    return [helper.make_node(op, i, [out], name=out, **attrs) for op, i, out, attrs in steps]


def split_report(
    probabilities: np.ndarray,
    split: tokenized.TokenizedSplit,
    meta: dict,
    threshold: float | dict[str, float] | None,
) -> dict:
    """The test split's report at `threshold` (evaluate's), as evaluate computes it."""
    task = task_for(classifier.classes_of(meta))
    return task.report(split.labels.numpy(), probabilities, threshold)


def selected_metric(meta: dict) -> str:
    """The figure the gate compares: the positive class's F1 where there is one, else macro
    F1 (train.select_metric's auto)."""
    return task_for(classifier.classes_of(meta)).auto_metric()


def gated_int8(
    model: GPT2Classifier,
    meta: dict,
    dest: str | os.PathLike,
    max_drop: float,
    source: str,
    report: str | os.PathLike | None = paths.EXPORT_ONNX_INT8_REPORT,
) -> dict:
    """Write the int8 ONNX graph of `model` to `dest` if its selected test figure is within
    `max_drop` of the PyTorch fp32 model's on the same ids (data/tokens/test.safetensors, at
    evaluate's threshold), with that comparison in `report` (None: none); else refuse, with
    nothing written. Returns the comparison."""
    _onnxruntime()  # before any work
    test_file = paths.tokens_file("test")
    if not test_file.is_file():
        raise SpamGPTError(
            f"export --quantize int8 scores the model on the test split: {test_file} not "
            f"found; run the pipeline (dvc repro) in this folder first"
        )
    test = tokenized.load(test_file)
    metric = selected_metric(meta)
    dest = Path(dest)
    created = next((p for p in reversed(dest.parents) if not p.exists()), None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        comparison = _gated_int8(model, meta, dest, max_drop, source, test, metric)
    except BaseException:
        if created is not None:  # refused or failed: no folder of ours is left behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    if report is not None:
        atomic.write_json(report, comparison)
    return comparison


def _gated_int8(
    model: GPT2Classifier,
    meta: dict,
    dest: Path,
    max_drop: float,
    source: str,
    test: tokenized.TokenizedSplit,
    metric: str,
) -> dict:
    from spamgpt.serve.serving import onnx_probabilities  # mlflow: only where it scores

    onnxruntime = _onnxruntime()
    inputs = ModelInputs(test.tokens, frozen_blocks=None)
    classes = classifier.classes_of(meta)
    threshold = contracts.read_threshold()  # evaluate's: both models are reported at it
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        to_onnx(model, meta, Path(tmp) / "fp32.onnx")
        quantized = Path(tmp) / "int8.onnx"
        how = quantize_int8(Path(tmp) / "fp32.onnx", quantized)
        session = onnxruntime.InferenceSession(str(quantized))
        figures, fp32 = {}, runtime.Compute(CPU, "fp32")
        for name, probabilities in [
            ("pytorch_fp32", classifier.class_probabilities(model, inputs, fp32).numpy()),
            ("onnx_int8", onnx_probabilities(session, inputs)),
        ]:
            report = split_report(probabilities, test, meta, threshold)
            figures[name] = {
                metric: task_for(classes).selection_score(report, 0.0, metric),
                "report": report,
            }
        drop = figures["pytorch_fp32"][metric] - figures["onnx_int8"][metric]
        comparison = {
            "model": source, "split": "test", "messages": len(test), "metric": metric,
            "threshold": threshold, "max_drop": max_drop, "drop": drop,
            "quantization": how, **figures,
        }  # fmt: skip
        if not drop <= max_drop:
            raise SpamGPTError(
                f"--max-drop {max_drop:g}: the int8 ONNX model's test {metric} is "
                f"{figures['onnx_int8'][metric]:.4f}, the PyTorch model's "
                f"{figures['pytorch_fp32'][metric]:.4f} (a drop of {drop:.4f}); nothing written"
            )
        os.replace(quantized, dest)
    return comparison


def log_gate(comparison: dict, run_id: str) -> str | None:
    """The int8 export's figures into MLflow run `run_id` (its status left as it is); a
    line saying why not where the store does not hold that run, else None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from spamgpt import tracking

    tracking.connect()
    client, metric = MlflowClient(), comparison["metric"]
    try:
        client.get_run(run_id)
    except MlflowException as e:
        return f"not logged to MLflow run {run_id}: {str(e).splitlines()[0]}"
    for name in ("pytorch_fp32", "onnx_int8"):
        client.log_metric(run_id, f"export/{name}/test_{metric}", comparison[name][metric])
    client.log_metric(run_id, "export/onnx_int8/drop", comparison["drop"])
    client.log_artifact(run_id, str(paths.EXPORT_ONNX_INT8_REPORT), "export")
    return None


def run_of(source: str) -> str | None:
    """The MLflow run a model belongs to: runs:/<id>/..., or the workspace's model's run
    (models/mlflow_run.json); None for another folder or a registered model."""
    if source.startswith("runs:/"):
        return source.removeprefix("runs:/").split("/")[0]
    if Path(source).resolve() == paths.FINETUNED_DIR.resolve() and paths.MLFLOW_RUN.is_file():
        return contracts.read_mlflow_run()
    return None


@contextmanager
def served_onnx(
    model: GPT2Classifier,
    meta: dict,
    runtime: str,
    run: "tracking.Run",
    temperature: float | dict[str, float] | None = None,
    shift: dict[str, float] | None = None,
) -> Iterator[Path | None]:
    """mlflow.serve's ONNX graph of `model` for the logged model to carry, for the block's
    duration: None for pytorch; onnx-int8 only through the accuracy gate (gated_int8, the
    default --max-drop), its comparison logged into `run`. `temperature` (and platt's `shift`,
    evaluate's) are folded into the graph's head, on a copy: the graph gives the calibrated
    probabilities."""
    if runtime == "pytorch":
        yield None
        return
    if temperature is not None:
        model = copy.deepcopy(model)
        classifier.fold_temperature(model, temperature, classifier.classes_of(meta), shift)
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "model.onnx"
        if runtime == "onnx":
            to_onnx(model, meta, graph)
        else:
            comparison = gated_int8(model, meta, graph, MAX_DROP, "mlflow.serve", report=None)
            run.log_dict(comparison, "export/served_onnx_int8.json")
        yield graph


def log_exports(
    run: "tracking.Run",
    model: GPT2Classifier,
    meta: dict,
    tokenizer_dir: str | os.PathLike,
    formats: list[str],
) -> None:
    """mlflow.export: each format as artifacts of `run`, under transformers/ (the folder)
    and onnx/model.onnx."""
    with tempfile.TemporaryDirectory() as tmp:
        if "transformers" in formats:
            folder = Path(tmp) / "transformers"
            to_transformers(model, meta, tokenizer_dir, folder)
            for file in sorted(folder.iterdir()):
                run.log_artifact(file, "transformers")
        if "onnx" in formats:
            to_onnx(model, meta, Path(tmp) / "model.onnx")
            run.log_artifact(Path(tmp) / "model.onnx", "onnx")


def command(args: argparse.Namespace) -> None:
    quantize = getattr(args, "quantize", None)
    if quantize and args.to != "onnx":
        raise SpamGPTError(f"--quantize {quantize}: only with --to onnx")
    if quantize and not args.max_drop >= 0:
        raise SpamGPTError(f"--max-drop must be 0 or more, got {args.max_drop}")
    with loader.opened(args.model, args.pretrained) as source:
        model, meta, folder = source.model, source.meta, source.folder
        if args.to == "transformers":
            to_transformers(model, meta, folder, args.dest)
        elif quantize:
            comparison = gated_int8(model, meta, args.dest, args.max_drop, str(args.model))
        else:
            to_onnx(model, meta, args.dest)
    if quantize:
        run_id = run_of(str(args.model))
        unlogged = None if run_id is None else log_gate(comparison, run_id)
        if unlogged is not None:
            print(f"spamgpt: {unlogged}", file=sys.stderr)
        metric = comparison["metric"]
        print(
            f"{args.dest}: int8 onnx export of {args.model}; test {metric} "
            f"{comparison['onnx_int8'][metric]:.4f} (PyTorch fp32 "
            f"{comparison['pytorch_fp32'][metric]:.4f}), {paths.EXPORT_ONNX_INT8_REPORT}"
        )
        return
    print(f"{args.dest}: {args.to} export of {args.model}")
