"""The fine-tuned classifier: what trains, the model folder, and the one prediction path.

A fine-tuned model folder (models/finetuned) holds classifier.json (what to rebuild), the
tokenizer files and model.safetensors. From a pretrained base only the trained tensors are
saved (a few MB for one block instead of the whole 500 MB model in every experiment's DVC
cache); the base is read back from models/pretrained/<repo_id>. A randomly initialised base,
or a self-contained copy (`full=True`, as the MLflow model needs), saves every tensor.

Prediction: class_probabilities() runs the model over token ids or cached trunk output, and
its task (spamgpt.tasks.registry) turns the probabilities into labels (answers() per message,
prediction_frame() as a table). Validation, evaluate, `spamgpt classify`, `spamgpt predict`
and the MLflow model all go through these two.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import tiktoken
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spamgpt import atomic, paths, runtime
from spamgpt.contracts import Tokenization
from spamgpt.data import tokenized
from spamgpt.data.batching import ModelInputs, inference_tokens, sorted_order
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import lora
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.params import LoraParams, ModelParams
from spamgpt.tasks.registry import TASKS, task_for
from spamgpt.texts import HEAD, ONE_TEXT, TextFields, Truncation

CLASSIFIER_JSON = "classifier.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# classifier.json's key for a temperature load() folds into the head (a logged MLflow model's;
# models/finetuned has none: evaluate fits it afterwards, contracts.read_temperature)
TEMPERATURE = "temperature"
SHIFT = "shift"  # and the shift per class added after it (evaluate.calibration: platt)


def frozen_blocks(
    n_layer: int, trainable_blocks: int | str, finetune: str = "blocks"
) -> int | None:
    """How many leading blocks stay frozen: n_layer - trainable_blocks. With 'all', LoRA
    still freezes the embeddings (0: cache them), a full fine-tune trains them too (None:
    nothing frozen, nothing to cache)."""
    if trainable_blocks == "all":
        return 0 if finetune == "lora" else None
    if trainable_blocks > n_layer:
        raise ParamsError(
            f"model.trainable_blocks: must be <= the model's {n_layer} blocks or 'all', "
            f"got {trainable_blocks}"
        )
    return n_layer - trainable_blocks


def base_model(model: ModelParams, model_dir: str | os.PathLike) -> GPT2:
    """The pretrained GPT-2, or (model.pretrained false) the same shapes freshly initialised
    from model.init_seed, so the trunk stage and finetune build identical frozen weights."""
    if model.pretrained:
        return GPT2.from_pretrained(model_dir, dropout=model.dropout)
    config = GPTConfig.from_json(Path(model_dir) / "config.json")
    config.dropout = model.dropout
    with torch.random.fork_rng():
        torch.manual_seed(model.init_seed)
        return GPT2.init_random(config)


def for_training(
    m: ModelParams,
    lora_params: LoraParams,
    classes: Classes,
    device: torch.device,
    seed: int,
) -> tuple[GPT2Classifier, list[str]]:
    """The classifier of models/pretrained/<repo_id> on `device`, with what model.finetune
    and model.trainable_blocks say trains, and the names of the parameters that train.
    Seeds torch's global RNG with `seed` first: the head's and the adapters' initialisation,
    then dropout, follow it."""
    torch.manual_seed(seed)
    gpt = base_model(m, paths.pretrained_dir(m.repo_id))
    model = GPT2Classifier(gpt, len(classes), m.pooling, classes.label_format).to(device)
    if m.finetune == "lora":
        frozen = frozen_blocks(model.gpt.config.n_layer, m.trainable_blocks, m.finetune)
        p = lora_params
        return model, lora.add_adapters(model, frozen, p.targets, p.rank, p.alpha)
    return model, freeze(model, m.trainable_blocks)


def freeze(model: GPT2Classifier, trainable_blocks: int | str) -> list[str]:
    """Freeze all but the last `trainable_blocks` blocks + ln_f + head (0: the head alone;
    'all': nothing frozen). Returns the names of the parameters left trainable."""
    n_layer = model.gpt.config.n_layer
    frozen = frozen_blocks(n_layer, trainable_blocks)
    if frozen is None:
        trainable = ("",)
    elif frozen == n_layer:
        trainable = ("head.",)
    else:
        trainable = ("head.", "gpt.ln_f.", *(f"gpt.h.{i}." for i in range(frozen, n_layer)))
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trainable))
        if p.requires_grad:
            names.append(name)
    return names


def export(
    model: GPT2Classifier,
    weights: dict[str, torch.Tensor],
    trained_names: list[str],
    m: ModelParams,
    classes: Classes,
    tokenization: Tokenization,
    dest: str | os.PathLike,
    fields: TextFields = ONE_TEXT,
) -> None:
    """Write the model folder of `model` with these trained `weights` (the best epoch's);
    LoRA adapters are folded in first, so the folder holds plain GPT-2 weights. `fields`:
    the columns (and template) its text is made of."""
    model.load_state_dict(weights, strict=False)
    stored = trained_names
    if m.finetune == "lora":
        stored = [*lora.merge(model), *(n for n in trained_names if n.startswith("head."))]
    meta = classifier_meta(m, classes, stored, tokenization.max_length, tokenization.pad_id)
    meta.update(fields.to_dict())
    save(model, dest, meta, paths.pretrained_dir(m.repo_id), full=not m.pretrained)


def save(
    model: GPT2Classifier,
    dest: str | os.PathLike,
    meta: dict,
    tokenizer_dir: str | os.PathLike,
    full: bool,
) -> None:
    """Write the model folder: the tensors named in meta['trained'] or, if `full`, all."""
    dest, tokenizer_dir = Path(dest), Path(tokenizer_dir)
    state = model.state_dict()
    names = list(state) if full else meta["trained"]
    save_tensors({n: state[n] for n in names}, dest / WEIGHTS)
    config = dataclasses.asdict(model.gpt.config)
    atomic.write_json(dest / CLASSIFIER_JSON, {**meta, "config": config, "full": full})
    for name in TOKENIZER_FILES:
        with atomic.atomic_path(dest / name) as tmp:
            shutil.copyfile(tokenizer_dir / name, tmp)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    with atomic.atomic_path(path) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp))


def load(
    folder: str | os.PathLike,
    pretrained_root: str | os.PathLike = paths.PRETRAINED_DIR,
    temperature: float | dict[str, float] | None = None,
    shift: dict[str, float] | None = None,
) -> tuple[GPT2Classifier, dict]:
    """Rebuild a saved classifier; (model in eval mode, classifier.json contents). The
    temperature (and shift) its classifier.json names (a logged MLflow model's), else
    `temperature` and `shift` (evaluate's, contracts.read_temperature and read_shift, for
    models/finetuned), are folded into the head: its probabilities are the calibrated ones."""
    folder, pretrained_root = Path(folder), Path(pretrained_root)
    try:
        meta = json.loads((folder / CLASSIFIER_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / WEIGHTS))
    except FileNotFoundError as e:
        raise SpamGPTError(f"no fine-tuned model at {folder}: {e.filename} is missing") from None
    except (json.JSONDecodeError, SafetensorError) as e:
        raise SpamGPTError(f"{folder}: corrupt model files ({e})") from None
    config = GPTConfig(**meta["config"])
    # Every tensor comes from a file: what is not the base's is built on the meta device
    # (nothing allocated or drawn) and takes the file's tensor as its own.
    if meta["full"]:
        with torch.device("meta"):
            gpt = GPT2(config)
    else:
        base = pretrained_root / meta["repo_id"]
        gpt = GPT2.from_pretrained(base, dropout=config.dropout, draw_initial_weights=False)
        if gpt.config != config:
            raise SpamGPTError(f"{base}: config differs from {folder}")
    with torch.device("meta"):
        model = GPT2Classifier(
            gpt, len(meta["labels"]), meta["pooling"], classes_of(meta).label_format
        )
    expected = set(model.state_dict()) if meta["full"] else set(meta["trained"])
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors)) or sorted(set(tensors) - expected)
        raise SpamGPTError(f"{folder / WEIGHTS}: tensor {missing[0]} is missing or unexpected")
    model.load_state_dict(tensors, strict=False, assign=True)
    unloaded = [name for name, t in model.state_dict().items() if t.is_meta]
    if unloaded:
        raise SpamGPTError(f"{folder / CLASSIFIER_JSON}: tensor {unloaded[0]} is not stored")
    if TEMPERATURE in meta:  # the logged model's own calibration, whole
        temperature, shift = meta[TEMPERATURE], meta.get(SHIFT)
    fold_temperature(model, temperature, classes_of(meta), shift)
    return model.eval(), meta


def fold_temperature(
    model: GPT2Classifier,
    temperature: float | dict[str, float] | None,
    classes: Classes,
    shift: dict[str, float] | None = None,
) -> None:
    """Divide the head's logits by `temperature` (multi-label: {label: T}, each label's own)
    and add `shift` ({class (label): c}, evaluate.calibration platt's; None: 0) by dividing its
    weight and bias and adding to the bias, in place: logits / T + c in the same forward pass,
    so every runtime the weights go to (transformers, ONNX) gives the calibrated
    probabilities. None: unchanged."""
    if temperature is None:
        return
    task = task_for(classes)
    t = torch.tensor(task.head_temperatures(temperature), dtype=torch.float64)
    each = task.head_shifts(shift) if shift else [0.0] * len(classes)
    c = torch.tensor(each, dtype=torch.float64)
    head = model.head
    with torch.no_grad():  # in float64 on the CPU (MPS has none), then back: rounded once
        head.weight.copy_(head.weight.cpu().double() / t[:, None])
        head.bias.copy_(head.bias.cpu().double() / t + c)


def classes_of(meta: dict) -> Classes:
    """The classes a saved model answers with (classifier.json)."""
    return Classes.from_dict(meta)


def classifier_meta(
    model: ModelParams, classes: Classes, trained: list[str], max_length: int, pad_id: int
) -> dict:
    """What load() needs besides the tensors."""
    return {
        "repo_id": model.repo_id,
        "revision": model.revision,
        "pretrained": model.pretrained,
        "pooling": model.pooling,
        **classes.to_dict(),
        "max_length": max_length,
        **model.truncation_rule().to_dict(),
        "pad_id": pad_id,
        "trained": trained,
    }


def answers(
    probabilities: torch.Tensor, classes: Classes, threshold: float | dict[str, float] | None
) -> list[dict]:
    """Each message's answer at `threshold` (Task.answers): its label, that label's
    probability, every class's probability, and the positive class's as
    `<positive>_probability` where there is one (`spam_probability` for SMS); multi-label,
    its `labels` and every label's probability."""
    return task_for(classes).answers(probabilities.numpy(), threshold)


def prediction_frame(
    probabilities: torch.Tensor | np.ndarray,
    classes: Classes,
    threshold: float | dict[str, float] | None,
) -> pd.DataFrame:
    """The answers as a table, one row per message (Task.prediction_frame): `label`,
    `probability` (the label's) and `p_<class>` for every class; multi-label, `labels` (a
    JSON list) and `p_<label>`."""
    return task_for(classes).prediction_frame(np.asarray(probabilities), threshold)


def logits(
    model: nn.Module, inputs: ModelInputs, indices: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """(B, classes) logits of the chosen messages; `model` is the classifier or its DDP
    wrapper (which must see the call)."""
    x, lengths = inputs.batch(indices)
    return model(
        runtime.to_device(x, device), runtime.to_device(lengths, device), inputs.frozen_blocks
    )


def class_probabilities(
    model: GPT2Classifier,
    inputs: ModelInputs,
    compute: runtime.Compute,
    full_last: bool = False,
) -> torch.Tensor:
    """Float32 class probabilities (N, classes) of N messages, in their order (multi-label:
    each label's own, a sigmoid of its logit; else a softmax over the classes): of
    class_logits."""
    out = class_logits(model, inputs, compute, full_last)
    return TASKS[model.label_format].probabilities(out)


@torch.no_grad()  # not inference_mode: autocast keeps no cast weights in inference mode
def class_logits(
    model: GPT2Classifier,
    inputs: ModelInputs,
    compute: runtime.Compute,
    full_last: bool = False,
) -> torch.Tensor:
    """Float32 logits (N, classes) of N messages, in their order, on compute.device in its
    precision. Batches are sorted by length and hold up to compute.max_tokens padded tokens
    (None: what suits the device), in a few widths (batching.padded_width): little padding,
    few shapes (`full_last`: no odd-sized last batch either, batching.sorted_order)."""
    out = torch.empty(len(inputs), model.head.out_features)
    max_tokens = compute.max_tokens or inference_tokens(compute.device)
    # One autocast region for every batch: it keeps the weights it casts to bf16 or fp16
    # until it ends, so they are cast once, not once per batch.
    with runtime.autocast(compute):
        for indices in sorted_order(inputs.sequences.lengths, max_tokens, full_last):
            out[indices] = logits(model, inputs, indices, compute.device).float().cpu()
    return out


def classify_texts(
    model: GPT2Classifier,
    enc: tiktoken.Encoding,
    texts: list[str],
    max_length: int,
    compute: runtime.Compute,
    truncation: Truncation = HEAD,
    full_last: bool = False,
) -> tuple[torch.Tensor, list[bool]]:
    """Class probabilities (N, classes) of raw texts with the whole model, and which texts
    were cut to max_length (the tokens kept: `truncation`, as the model was trained)."""
    ids = tokenized.encode(enc, texts)
    truncated = [len(row) > max_length for row in ids]
    inputs = ModelInputs(tokenized.pack_ids(ids, max_length, truncation), frozen_blocks=None)
    probs = class_probabilities(model, inputs, compute, full_last)
    return probs, truncated
