"""The fine-tuned classifier as files: build it, freeze it, save what trained, load, predict.

A fine-tuned model folder (models/finetuned) holds classifier.json (what to rebuild), the
tokenizer files and model.safetensors. From a pretrained base only the trained tensors are
saved (a few MB for one block instead of the whole 500 MB model in every experiment's DVC
cache); the base is read back from models/pretrained/<repo_id>. A randomly initialised base,
or a self-contained copy (`full=True`, as the MLflow model needs), saves every tensor.
"""

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import tiktoken
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spamgpt import atomic, loaders, lora, paths, runtime
from spamgpt.batching import INFERENCE_TOKENS, sorted_order
from spamgpt.data import LABELS
from spamgpt.errors import SpamGPTError
from spamgpt.model import GPT2, GPT2Classifier, GPTConfig
from spamgpt.params import LoraParams, ModelParams
from spamgpt.trunk import Features

CLASSIFIER_JSON = "classifier.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def base_model(model: ModelParams, model_dir: Path) -> GPT2:
    """The pretrained GPT-2, or (model.pretrained false) the same shapes freshly initialised
    from model.init_seed, so the trunk stage and finetune build identical frozen weights."""
    if model.pretrained:
        return GPT2.from_pretrained(model_dir, dropout=model.dropout)
    config = GPTConfig.from_json(model_dir / "config.json")
    config.dropout = model.dropout
    with torch.random.fork_rng():
        torch.manual_seed(model.init_seed)
        return GPT2.init_random(config)


def make_trainable(model: GPT2Classifier, m: ModelParams, lora_params: LoraParams) -> list[str]:
    """Choose what trains (model.finetune, model.trainable_blocks); names of those parameters."""
    if m.finetune == "lora":
        n_layer = model.gpt.config.n_layer
        first = 0 if m.trainable_blocks == "all" else n_layer - m.trainable_blocks
        p = lora_params
        return lora.add_adapters(model, first, p.targets, p.rank, p.alpha)
    return freeze(model, m.trainable_blocks)


def freeze(model: GPT2Classifier, trainable_blocks: int | str) -> list[str]:
    """Freeze all but the last `trainable_blocks` blocks + ln_f + head (0: head only; 'all':
    nothing frozen). Returns the names of the parameters left trainable."""
    n_layer = model.gpt.config.n_layer
    if trainable_blocks == "all":
        trainable = ("",)
    elif trainable_blocks == 0:
        trainable = ("head.",)
    else:
        first = n_layer - trainable_blocks
        trainable = ("head.", "gpt.ln_f.", *(f"gpt.h.{i}." for i in range(first, n_layer)))
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trainable))
        if p.requires_grad:
            names.append(name)
    return names


def save(model: GPT2Classifier, dest: Path, meta: dict, tokenizer_dir: Path, full: bool) -> None:
    """Write the model folder: the trained tensors (meta['trained']) or, if `full`, all."""
    state = model.state_dict()
    names = list(state) if full else meta["trained"]
    save_tensors({n: state[n] for n in names}, dest / WEIGHTS)
    config = dataclasses.asdict(model.gpt.config)
    atomic.write_json(dest / CLASSIFIER_JSON, {**meta, "config": config, "full": full})
    for name in TOKENIZER_FILES:
        with atomic.atomic_path(dest / name) as tmp:
            shutil.copyfile(tokenizer_dir / name, tmp)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp))


def load(folder: Path, pretrained_root: Path = paths.PRETRAINED_DIR) -> tuple[GPT2Classifier, dict]:
    """Rebuild a saved classifier; (model in eval mode, classifier.json contents)."""
    try:
        meta = json.loads((folder / CLASSIFIER_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / WEIGHTS))
    except FileNotFoundError as e:
        raise SpamGPTError(f"no fine-tuned model at {folder}: {e.filename} is missing") from None
    except (json.JSONDecodeError, SafetensorError) as e:
        raise SpamGPTError(f"{folder}: corrupt model files ({e})") from None
    config = GPTConfig(**meta["config"])
    if meta["full"]:
        gpt = GPT2(config)
    else:
        gpt = GPT2.from_pretrained(pretrained_root / meta["repo_id"], dropout=config.dropout)
        if gpt.config != config:
            raise SpamGPTError(f"{pretrained_root / meta['repo_id']}: config differs from {folder}")
    model = GPT2Classifier(gpt, num_classes=len(meta["labels"]), pooling=meta["pooling"])
    expected = set(model.state_dict()) if meta["full"] else set(meta["trained"])
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors)) or sorted(set(tensors) - expected)
        raise SpamGPTError(f"{folder / WEIGHTS}: tensor {missing[0]} is missing or unexpected")
    model.load_state_dict(tensors, strict=False)
    return model.eval(), meta


def classifier_meta(model: ModelParams, trained: list[str], max_length: int, pad_id: int) -> dict:
    """What load() needs besides the tensors."""
    return {
        "repo_id": model.repo_id,
        "revision": model.revision,
        "pretrained": model.pretrained,
        "pooling": model.pooling,
        "labels": list(LABELS),
        "max_length": max_length,
        "pad_id": pad_id,
        "trained": trained,
    }


@torch.inference_mode()
def predict_logits(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    lengths: torch.Tensor,
    device: torch.device,
    precision: str,
    max_tokens: int = INFERENCE_TOKENS,
) -> torch.Tensor:
    """Float32 logits (N, classes) of N messages in their original order, where
    `logits_of(indices)` computes one batch. Batches are sorted by length: little padding."""
    out = None
    for indices in sorted_order(lengths, max_tokens):
        with runtime.autocast(device, precision):
            logits = logits_of(indices).float().cpu()
        if out is None:
            out = torch.empty(len(lengths), logits.shape[1])
        out[indices] = logits
    return out


def classify_texts(
    model: GPT2Classifier,
    enc: tiktoken.Encoding,
    texts: list[str],
    max_length: int,
    device: torch.device,
    precision: str,
    max_tokens: int = INFERENCE_TOKENS,
) -> tuple[torch.Tensor, list[bool]]:
    """P(spam) of raw texts with the whole model, and which texts were cut to max_length."""
    ids = loaders.encode(enc, texts)
    truncated = [len(row) > max_length for row in ids]
    tokens = Features(loaders.pack_ids(ids, max_length), start_block=None)
    logits = predict_logits(
        lambda idx: tokens.logits(model, idx, device),
        tokens.packed.lengths,
        device,
        precision,
        max_tokens,
    )
    return torch.softmax(logits, dim=-1)[:, 1], truncated
