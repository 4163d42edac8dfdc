"""The frozen trunk: embeddings and the first K blocks, run once per message and cached.

With the first K blocks frozen (in eval mode, so no dropout) their output is a pure function
of the message. The trunk stage computes it once, in inference mode, keeping real tokens only
(packed); every epoch, validation and test then run just the trainable tail from it. This is
exact: the tail sees the same hidden states the full forward pass would compute.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from spamgpt import atomic, loaders, paths, runtime
from spamgpt.batching import INFERENCE_TOKENS, PackedSequences, sorted_order
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.model import GPT2, GPT2Classifier


def frozen_blocks(
    n_layer: int, trainable_blocks: int | str, finetune: str = "blocks"
) -> int | None:
    """How many leading blocks stay frozen: n_layer - trainable_blocks. With 'all', LoRA
    still freezes the embeddings (0: cache them), a full fine-tune trains them too (None:
    nothing to cache)."""
    if trainable_blocks == "all":
        return 0 if finetune == "lora" else None
    if trainable_blocks > n_layer:
        raise ParamsError(
            f"model.trainable_blocks: must be <= the model's {n_layer} blocks or 'all', "
            f"got {trainable_blocks}"
        )
    return n_layer - trainable_blocks


@dataclass
class Features:
    """What the trainable tail reads: token ids (start_block None) or, for start_block K,
    the hidden states (rows: tokens x n_embd) entering block K."""

    packed: PackedSequences
    start_block: int | None

    def logits(
        self, model: GPT2Classifier, indices: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """(B, classes) logits of the chosen messages, right-padded to the batch's longest."""
        if self.start_block is None:
            ids, lengths = self.packed.batch(indices, pad_value=0)  # pad id never read (causal)
            return model(ids.to(device), lengths.to(device))
        hidden, lengths = self.packed.batch(indices, pad_value=0.0)
        return model(hidden.to(device), lengths.to(device), self.start_block)


@torch.inference_mode()
def compute(
    gpt: GPT2,
    tokens: PackedSequences,
    n_frozen: int,
    device: torch.device,
    precision: str,
    max_tokens: int = INFERENCE_TOKENS,
    desc: str = "trunk",
) -> PackedSequences:
    """Hidden states entering block `n_frozen`, real tokens only, float32, on the CPU."""
    gpt.eval()
    rows = torch.empty(len(tokens.rows), gpt.config.n_embd)
    for indices in tqdm(sorted_order(tokens.lengths, max_tokens), desc=desc, disable=None):
        ids, lengths = tokens.batch(indices, pad_value=0)
        with runtime.autocast(device, precision):
            hidden = gpt.blocks(gpt.embed(ids.to(device)), 0, n_frozen)
        real = torch.arange(ids.shape[1]) < lengths[:, None]  # (B, T)
        target = tokens.starts[indices][:, None] + torch.arange(ids.shape[1])  # rows they go to
        rows[target[real]] = hidden.float().cpu()[real]
    return PackedSequences(rows, tokens.lengths.clone())


def save(path: Path, features: PackedSequences) -> None:
    with atomic.atomic_path(path) as tmp:
        save_file({"hidden": features.rows, "lengths": features.lengths}, str(tmp))


def load(path: Path) -> PackedSequences:
    try:
        t = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise SpamGPTError(
            f"{path}: cannot read the trunk cache ({e}); re-run the trunk stage"
        ) from None
    return PackedSequences(t["hidden"], t["lengths"])


def features(split: str, n_frozen: int | None) -> Features:
    """What finetune and evaluate feed the tail for one split: cached trunk output, or token
    ids when nothing is frozen."""
    if n_frozen is None:
        return Features(loaders.load(paths.tokens_file(split)).tokens, None)
    return Features(load(paths.trunk_file(split)), n_frozen)


def read_frozen_blocks() -> int | None:
    """The trunk stage's choice (data/trunk/info.json)."""
    return json.loads(paths.TRUNK_INFO.read_text(encoding="utf-8"))["frozen_blocks"]
