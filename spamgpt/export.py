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

Mean pooling has no counterpart there and is refused, naming model.pooling. Everything else
(LoRA adapters are merged when finetune writes the folder; a partly trained model is
completed from its base weights) is plain GPT-2 weights.

`spamgpt export --to onnx FILE` writes the classifier (any pooling) as an ONNX graph from
token ids (batch, sequence) int64 and lengths (batch,) int64 to class probabilities (batch,
classes) float32, both axes dynamic; it needs the onnx and onnxscript packages (pip install
onnx onnxscript).
"""

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from spamgpt import atomic, classifier, contracts, paths
from spamgpt.errors import SpamGPTError
from spamgpt.model import TRANSPOSED, GPT2Classifier
from spamgpt.tokenizer import EOT

if TYPE_CHECKING:
    from spamgpt import tracking

FORMATS = ("transformers", "onnx")
ONNX_INPUTS, ONNX_OUTPUT = ("input_ids", "lengths"), "probabilities"
# A bias whose fold leaves more than this between W d and b (in float64) is refused.
FOLD_TOLERANCE = 1e-6
# Weights above this go to <file>.data beside the graph, as torch's exporter puts them
# itself (an ONNX file, a protobuf, stops at 2 GB).
ONNX_FILE_LIMIT = 1536 * 2**20


@contextmanager
def loaded(
    source: str | os.PathLike, pretrained_root: str | os.PathLike = paths.PRETRAINED_DIR
) -> Iterator[tuple[GPT2Classifier, dict, Path]]:
    """(model, classifier.json, the folder with its tokenizer files) of a fine-tuned model
    folder, or of an MLflow model URI (runs:/<run_id>/model, models:/<name>/<version>),
    downloaded for the block's duration from the tracking store MLFLOW_TRACKING_URI or
    mlflow.db names."""
    source = str(source)
    if "://" not in source and not source.startswith(("runs:/", "models:/")):
        # models/finetuned's head with evaluate's temperature folded in, as classify gives it
        temperature = contracts.read_temperature()
        yield (*classifier.load(source, pretrained_root, temperature), Path(source))
        return
    from spamgpt import serving

    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = serving.download_logged(source, tmp)
        yield (*serving.load_artifact(folder), folder)


# model.truncation (classifier.json's "truncation", "head" where absent) as a transformers
# tokenizer's truncation_side; head_tail keeps both ends, which no tokenizer setting does.
TRUNCATION_SIDES = {"head": "right", "tail": "left"}


def check_representable(meta: dict) -> None:
    """Refuse, in one line, a classifier GPT2ForSequenceClassification cannot compute."""
    if meta["pooling"] != "last":
        raise SpamGPTError(
            f"model.pooling is {meta['pooling']!r}: transformers' GPT2ForSequenceClassification "
            "reads the last real token only; train with model.pooling: last, or export --to onnx"
        )
    truncation = meta.get("truncation", "head")
    if truncation not in TRUNCATION_SIDES:
        raise SpamGPTError(
            f"model.truncation is {truncation!r}: a transformers tokenizer cuts a long message "
            f"on one side only (head or tail); export --to onnx and cut the ids as spamgpt does"
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
        "problem_type": (
            "multi_label_classification"
            if meta.get("label_format") == "multi"
            else "single_label_classification"
        ),
        "dtype": "float32",
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


class ProbabilityGraph(nn.Module):
    """What the ONNX graph computes: class probabilities of right-padded token ids (a
    multi-label model's: each label's sigmoid, as classifier.class_probabilities)."""

    def __init__(self, model: GPT2Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids, lengths).float()
        return torch.sigmoid(logits) if self.model.multi_label else torch.softmax(logits, dim=-1)


def to_onnx(model: GPT2Classifier, dest: str | os.PathLike) -> None:
    """Write the ONNX graph of `model` to `dest` (weights inside it up to 1.5 GB, else in
    <dest>.data beside it: gpt2-large and xl)."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it and onnx)
    except ImportError:
        raise SpamGPTError(
            "export --to onnx needs the onnx and onnxscript packages: pip install onnx onnxscript"
        ) from None
    dest = Path(dest)
    graph = ProbabilityGraph(model.float().cpu()).eval()
    n_ctx = model.gpt.config.n_ctx
    example = (torch.zeros(2, min(8, n_ctx), dtype=torch.int64), torch.tensor([3, 1]))
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=n_ctx)
    program = torch.onnx.export(
        graph,
        example,
        input_names=list(ONNX_INPUTS),
        output_names=[ONNX_OUTPUT],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "lengths": {0: batch}},
        dynamo=True,
        verbose=False,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    if sum(p.numel() * 4 for p in model.parameters()) > ONNX_FILE_LIMIT:
        program.save(str(dest), external_data=True)  # it names the data file after dest
        return
    with atomic.atomic_path(dest) as tmp:
        program.save(str(tmp), external_data=False)


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
            to_onnx(model, Path(tmp) / "model.onnx")
            run.log_artifact(Path(tmp) / "model.onnx", "onnx")


def command(args: argparse.Namespace) -> None:
    with loaded(args.model, args.pretrained) as (model, meta, folder):
        if args.to == "transformers":
            to_transformers(model, meta, folder, args.dest)
        else:
            to_onnx(model, args.dest)
    print(f"{args.dest}: {args.to} export of {args.model}")
