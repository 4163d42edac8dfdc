"""The frozen trunk: embeddings and the first K blocks, run once per message and cached.

With the first K blocks frozen (in eval mode, so no dropout) their output is a pure function
of the message. The trunk stage computes it once, in inference mode, keeping real tokens only
(packed); every epoch, validation and test then run just the trainable tail from it. This is
exact: the tail sees the same hidden states the full forward pass would compute.

The cache is a safetensors file per split (`hidden`: tokens x n_embd, `lengths`) written a
batch at a time as it is computed and read a batch at a time (spamgpt.data.tensorfile), so no stage
holds the whole of it: its memory is a batch, the model and the per-message lengths. Under
torchrun each process computes every world_size-th batch into the same file. It is stored in
bf16 when the trunk runs in bf16 (half the disk and the reads; tests/test_trunk.py bounds what
that rounding moves), else in float32, and read as float32 either way.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from spamgpt import atomic, distributed, paths, runtime
from spamgpt.data import tensorfile, tokenized
from spamgpt.data.batching import ModelInputs, PackedSequences, inference_tokens, sorted_order
from spamgpt.errors import SpamGPTError
from spamgpt.model.gpt2 import GPT2


@torch.inference_mode()
def hidden_batches(
    gpt: GPT2,
    tokens: PackedSequences,
    frozen_blocks: int,
    compute: runtime.Compute,
    desc: str = "trunk",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(message indices, hidden states (B, T, n_embd) float32 on the CPU, lengths) after the
    first `frozen_blocks` blocks, batch by batch: this process's share (every world_size-th
    batch) of batches holding up to compute.max_tokens padded tokens (None: what suits the
    device)."""
    gpt.eval()
    device = compute.device
    order = sorted_order(tokens.lengths, compute.max_tokens or inference_tokens(device))
    mine = distributed.shard(order)  # longest first, dealt in turn: even shares of work
    for indices in tqdm(mine, desc=desc, disable=None if distributed.is_main() else True):
        ids, lengths = tokens.batch(indices, pad_value=0)
        with runtime.autocast(compute):
            hidden = gpt.blocks(gpt.embed(runtime.to_device(ids, device)), 0, frozen_blocks)
        yield indices, hidden.float().cpu(), lengths


def compute(
    gpt: GPT2,
    tokens: PackedSequences,
    frozen_blocks: int,
    compute: runtime.Compute,
    desc: str = "trunk",
) -> PackedSequences:
    """The hidden states of every message in memory, real tokens only, float32 (for a
    dataset that fits; the trunk stage uses `write`)."""
    rows = torch.empty(len(tokens.rows), gpt.config.n_embd)
    batches = hidden_batches(gpt, tokens, frozen_blocks, compute, desc)
    for indices, hidden, lengths in batches:
        real = torch.arange(hidden.shape[1]) < lengths[:, None]  # (B, T)
        target = tokens.starts[indices][:, None] + torch.arange(hidden.shape[1])  # their rows
        rows[target[real]] = hidden[real]
    return PackedSequences(rows, tokens.lengths.clone())


def storage_dtype(precision: str) -> torch.dtype:
    """bf16 when the trunk computes in bf16 (its outputs carry bf16's error already), else
    float32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def write(
    path: str | os.PathLike,
    gpt: GPT2,
    tokens: PackedSequences,
    frozen_blocks: int,
    compute: runtime.Compute,
    desc: str = "trunk",
) -> None:
    """Compute the cache of `tokens` into `path`, each batch written as it is computed; under
    torchrun every process writes its share into one file, which appears once all have."""
    dtype = storage_dtype(compute.precision)
    layout = {
        "lengths": (torch.int64, (len(tokens),)),
        "hidden": (dtype, (len(tokens.rows), gpt.config.n_embd)),
    }
    if distributed.is_main():
        atomic.remove_leftovers(path)  # a killed run's temporary file: as large as the cache
    with distributed.shared_output(path) as tmp:
        if distributed.is_main():
            tensorfile.create(tmp, layout)
            with tensorfile.TensorFile(tmp, writable=True) as f:
                f.write("lengths", 0, tokens.lengths)
        distributed.barrier()  # the file exists at its full size before anyone writes to it
        with tensorfile.TensorFile(tmp, writable=True) as f:
            batches = hidden_batches(gpt, tokens, frozen_blocks, compute, desc)
            for indices, hidden, lengths in batches:
                starts, stored = tokens.starts[indices].tolist(), hidden.to(dtype)
                for start, row, n in zip(starts, stored, lengths.tolist(), strict=True):
                    f.write("hidden", start, row[:n])


def load(path: str | os.PathLike) -> PackedSequences:
    """The cache of one split, its hidden states left in the file and read as float32 a batch
    at a time."""
    try:
        f = tensorfile.TensorFile(path)
        return PackedSequences(f.rows("hidden", torch.float32), f.read("lengths"))
    except (OSError, tensorfile.FormatError, KeyError, ValueError) as e:
        raise SpamGPTError(
            f"{path}: cannot read the trunk cache ({e}); re-run the trunk stage"
        ) from None


def inputs(split: str, frozen_blocks: int | None) -> ModelInputs:
    """What finetune and evaluate feed the classifier for one split: the cached trunk output,
    or the token ids when nothing is frozen."""
    if frozen_blocks is None:
        return ModelInputs(tokenized.load(paths.tokens_file(split)).tokens, None)
    return ModelInputs(load(paths.trunk_file(split)), frozen_blocks)


@dataclass
class Split:
    """One split as the classifier reads it: its inputs and their labels."""

    inputs: ModelInputs
    labels: torch.Tensor  # (N,) class indices

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def read(cls, split: str, frozen_blocks: int | None) -> "Split":
        """A split as the loaders and trunk stages wrote it."""
        labels = tokenized.load(paths.tokens_file(split)).labels
        return cls(inputs(split, frozen_blocks), labels)
