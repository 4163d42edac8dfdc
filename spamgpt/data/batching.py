"""Batching for training, evaluation and classification: one place for padding and order.

Sequences are stored packed: one flat tensor of all their rows (token ids, or hidden states of
a frozen trunk) plus each sequence's length. A batch gathers a few sequences and right-pads
them to the batch's own longest one (not the dataset's), so a batch of short SMS costs little,
rounded up to one of a few widths (padded_width) so that batches come in a few shapes: bf16
autocast on a CPU caches a oneDNN kernel per input shape, so one shape per distinct message
length would make that cache grow with the data.
Right padding is safe with causal attention: a real token only attends to tokens on its left,
all real, so the padding value never reaches a real position; the lengths let the classifier
find the last real token.
"""

from dataclasses import dataclass

import torch

from spamgpt.data.tensorfile import FileRows


@dataclass
class PackedSequences:
    """Variable-length sequences stored end to end. rows: (sum(lengths), *feature_shape), in
    memory or in a file (spamgpt.data.tensorfile.FileRows, read a batch at a time)."""

    rows: torch.Tensor | FileRows
    lengths: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if int(self.lengths.sum()) != len(self.rows):
            raise ValueError(
                f"lengths sum to {int(self.lengths.sum())}, rows hold {len(self.rows)}"
            )
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.longest = int(self.lengths.max()) if len(self.lengths) else 0

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(
        self, indices: torch.Tensor, pad_value: float | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T, *feature_shape) batch of the chosen sequences, and lengths (B,);
        T is padded_width of their longest length."""
        lengths = self.lengths[indices]
        width = padded_width(int(lengths.max()), self.longest)
        if isinstance(self.rows, FileRows):
            return self.rows.padded(self.starts[indices], lengths, width, pad_value), lengths
        positions = torch.arange(width)
        real = positions < lengths[:, None]  # (B, T): True on real tokens
        # Row of each (sequence, position) in `rows`; padding positions point at row 0, then
        # get overwritten, so gathering stays one vectorised index.
        source = torch.where(real, self.starts[indices][:, None] + positions, 0)
        out = self.rows[source]
        out[~real] = pad_value
        return out, lengths


@dataclass
class ModelInputs:
    """What the classifier reads for a set of messages: their token ids (frozen_blocks None),
    or the cached hidden states after the first `frozen_blocks` blocks (rows: tokens x n_embd)."""

    sequences: PackedSequences
    frozen_blocks: int | None

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen messages right-padded (the pad value is never read: causal attention)."""
        return self.sequences.batch(indices, pad_value=0)


def padded_width(longest: int, cap: int) -> int:
    """The width a batch whose longest message has `longest` tokens is padded to:
    the next multiple of 8 up to 64, then of an eighth of the next power of two (80, 96, 112,
    128, 160, ...: four widths per doubling, at most 25% padding), never past `cap` (the
    longest message of the set: no wider than the model's context). A set of messages up to
    L tokens long is batched in at most L/8 widths up to 64, 4 per doubling above."""
    step = max(8, 1 << max(0, (longest - 1).bit_length() - 3))
    return min(cap, -(-longest // step) * step)


def bucketed_order(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, bucket_batches: int = 32
) -> list[torch.Tensor]:
    """Training order: shuffle, sort by length inside buckets of `bucket_batches` batches, cut
    into batches, shuffle the batches. Batches hold similar lengths (little padding) while
    every epoch still sees a different, seeded order."""
    shuffled = torch.randperm(len(lengths), generator=generator)
    bucket = batch_size * bucket_batches
    batches = []
    for start in range(0, len(shuffled), bucket):
        members = shuffled[start : start + bucket]
        members = members[torch.argsort(lengths[members], stable=True)]
        batches.extend(members.split(batch_size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


CPU_INFERENCE_TOKENS = 1024  # padded tokens per inference batch: activations stay in cache
# A GPU wants large batches to fill its cores; 32k tokens of GPT-2 124M activations in bf16 are
# about 50 MB per block, and the largest GPT-2 (xl) stays within a few GB.
GPU_INFERENCE_TOKENS = 32768


def inference_tokens(device: torch.device) -> int:
    """Padded tokens per inference batch on this device, when not given."""
    return CPU_INFERENCE_TOKENS if device.type == "cpu" else GPU_INFERENCE_TOKENS


def sorted_order(
    lengths: torch.Tensor, max_tokens: int, full_last: bool = False, one_width: bool = False
) -> list[torch.Tensor]:
    """Inference order: longest first, each batch as many messages as fit in `max_tokens`
    padded tokens (at its padded_width). Equal-sized matrix products whatever the lengths:
    short messages come in large batches instead of wasting a fixed batch size on a few
    tokens each; and every batch of one padded width has the same shape, but the very last.
    `full_last`: that one too, filled up with its last message again (for many calls, as
    spamgpt predict's chunks make: each would add a shape, and bf16 on a CPU caches a kernel
    per shape). `one_width`: a batch also ends where the next message's own padded_width is
    narrower than the batch's, so no message is padded past its own width (for onnxruntime,
    where padding a few messages to their longest cost more than the calls it saved:
    docs/serving.md, "Batching int8 and fp32 graphs")."""
    order = torch.argsort(lengths, descending=True, stable=True)
    cap = int(lengths.max()) if len(lengths) else 0
    batches, start = [], 0
    while start < len(order):
        width = padded_width(int(lengths[order[start]]), cap)  # sorted: the first is longest
        count = max(1, max_tokens // width)
        if one_width:
            widths = [padded_width(int(n), cap) for n in lengths[order[start : start + count]]]
            count = widths.count(width)  # sorted: the batch's width first, then narrower
        batches.append(order[start : start + count])
        start += count
    if full_last and batches and len(batches[-1]) < count:
        last = batches[-1]
        batches[-1] = torch.cat([last, last[-1:].expand(count - len(last))])
    return batches
