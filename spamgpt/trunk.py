"""The frozen trunk: embeddings and the first K blocks, run once per message and cached.

With the first K blocks frozen (in eval mode, so no dropout) their output is a pure function
of the message. The trunk stage computes it once, in inference mode, keeping real tokens only
(packed); every epoch, validation and test then run just the trainable tail from it. This is
exact: the tail sees the same hidden states the full forward pass would compute.
"""

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from spamgpt import atomic, paths, runtime, tokenized
from spamgpt.batching import ModelInputs, PackedSequences, inference_tokens, sorted_order
from spamgpt.errors import SpamGPTError
from spamgpt.model import GPT2


@torch.inference_mode()
def compute(
    gpt: GPT2,
    tokens: PackedSequences,
    frozen_blocks: int,
    device: torch.device,
    precision: str,
    max_tokens: int | None = None,
    desc: str = "trunk",
) -> PackedSequences:
    """Hidden states after the first `frozen_blocks` blocks, real tokens only, float32, on
    the CPU. Batches hold up to `max_tokens` padded tokens (None: what suits the device)."""
    gpt.eval()
    max_tokens = max_tokens or inference_tokens(device)
    rows = torch.empty(len(tokens.rows), gpt.config.n_embd)
    for indices in tqdm(sorted_order(tokens.lengths, max_tokens), desc=desc, disable=None):
        ids, lengths = tokens.batch(indices, pad_value=0)
        with runtime.autocast(device, precision):
            hidden = gpt.blocks(gpt.embed(ids.to(device)), 0, frozen_blocks)
        real = torch.arange(ids.shape[1]) < lengths[:, None]  # (B, T)
        target = tokens.starts[indices][:, None] + torch.arange(ids.shape[1])  # rows they go to
        rows[target[real]] = hidden.float().cpu()[real]
    return PackedSequences(rows, tokens.lengths.clone())


def save(path: str | os.PathLike, hidden: PackedSequences) -> None:
    with atomic.atomic_path(path) as tmp:
        save_file({"hidden": hidden.rows, "lengths": hidden.lengths}, str(tmp))


def load(path: str | os.PathLike) -> PackedSequences:
    try:
        t = load_file(str(Path(path)))
    except (OSError, SafetensorError) as e:
        raise SpamGPTError(
            f"{path}: cannot read the trunk cache ({e}); re-run the trunk stage"
        ) from None
    return PackedSequences(t["hidden"], t["lengths"])


def inputs(split: str, frozen_blocks: int | None) -> ModelInputs:
    """What finetune and evaluate feed the classifier for one split: the cached trunk output,
    or the token ids when nothing is frozen."""
    if frozen_blocks is None:
        return ModelInputs(tokenized.load(paths.tokens_file(split)).tokens, None)
    return ModelInputs(load(paths.trunk_file(split)), frozen_blocks)
